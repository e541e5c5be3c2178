"""Left/right handling: label pairs, the left-right array axis from nnU-Net's own readers, the mirror transform,
the rotation limit."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO, SimpleITKIOWithReorient
from nnunetv2.imageio.tif_reader_writer import Tiff3DIO

from nnunet_suprem.phantom import PHANTOM_CLASSES, Hospital, case_rng, synthesize_case
from nnunet_suprem.taxonomy import TOTALSEGMENTATOR_V1, TOTALSEGMENTATOR_V2, canonical_name, label_dict
from nnunet_suprem.training.laterality import (MAX_LATERAL_ROTATION, LateralMirrorTransform, lateral_directions,
                                               lateral_label_pairs, lateral_rotation, lateral_set_pairs,
                                               left_right_axis, patch_axis, rotation_planes, swap_labels)

LABELS = label_dict(PHANTOM_CLASSES)


def test_label_pairs():
    pairs, unpaired = lateral_label_pairs(LABELS)
    named = {(PHANTOM_CLASSES[a - 1], PHANTOM_CLASSES[b - 1]) for a, b in pairs}
    assert named == {("kidney_left", "kidney_right"), ("adrenal_gland_left", "adrenal_gland_right"),
                     ("femur_left", "femur_right"), ("lung_left", "lung_right")}
    assert unpaired == []
    assert lateral_label_pairs({"background": 0, "kidney_left": 1, "liver": 2}) == ([], ["kidney_left"])


def _labels(values_to_names: dict[str, str]) -> dict[str, int]:
    """nnU-Net's ``labels`` from a public dataset's ``{"value": "name"}`` (as nnU-Net's converters invert it)."""
    return {name: int(value) for value, name in values_to_names.items()}


# The label names of public datasets' own dataset.json files (value -> name), as published.
AMOS22 = _labels({"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gall bladder",
                  "5": "esophagus", "6": "liver", "7": "stomach", "8": "arota", "9": "postcava", "10": "pancreas",
                  "11": "right adrenal gland", "12": "left adrenal gland", "13": "duodenum", "14": "bladder",
                  "15": "prostate/uterus"})
BTCV = _labels({"0": "background", "1": "spleen", "2": "rkid", "3": "lkid", "4": "gall", "5": "eso", "6": "liver",
                "7": "sto", "8": "aorta", "9": "IVC", "10": "veins", "11": "pancreas", "12": "rad", "13": "lad"})
FLARE22 = _labels({"0": "background", "1": "liver", "2": "right kidney", "3": "spleen", "4": "pancreas",
                   "5": "aorta", "6": "IVC", "7": "RAG", "8": "LAG", "9": "gallbladder", "10": "esophagus",
                   "11": "stomach", "12": "duodenum", "13": "left kidney"})
WORD = _labels({"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left", "4": "kidney_right",
                "5": "stomach", "6": "gallbladder", "7": "esophagus", "8": "pancreas", "9": "duodenum", "10": "colon",
                "11": "intestine", "12": "adrenal", "13": "rectum", "14": "bladder", "15": "Head_of_femur_L",
                "16": "Head_of_femur_R"})


@pytest.mark.parametrize("labels, expected", [
    (AMOS22, {("left kidney", "right kidney"), ("left adrenal gland", "right adrenal gland")}),
    (BTCV, {("lkid", "rkid"), ("lad", "rad")}),
    (FLARE22, {("left kidney", "right kidney"), ("LAG", "RAG")}),
    (WORD, {("kidney_left", "kidney_right"), ("Head_of_femur_L", "Head_of_femur_R")}),
    ({"background": 0, "Kidney_Left": 1, "Right Kidney": 2, "kidney (left) cyst": 3, "right kidney cyst": 4}, {
        ("Kidney_Left", "Right Kidney"), ("kidney (left) cyst", "right kidney cyst")}),
], ids=["AMOS22", "BTCV", "FLARE22", "WORD", "mixed spellings"])
def test_label_pairs_of_public_datasets_whatever_the_spelling(labels, expected):
    """Sides pair through their canonical names: the spellings of AMOS22, BTCV, FLARE22 and WORD pair."""
    pairs, unpaired = lateral_label_pairs({k: v for k, v in labels.items() if k != "background"})
    name_of = {value: name for name, value in labels.items()}
    named = {tuple(sorted((name_of[a], name_of[b]), key=lambda n: canonical_name(n))) for a, b in pairs}
    assert named == expected and unpaired == []


@pytest.mark.parametrize("classes", [TOTALSEGMENTATOR_V1, TOTALSEGMENTATOR_V2], ids=["v1", "v2"])
def test_label_pairs_of_totalsegmentator(classes):
    """Every TotalSegmentator class with a partner pairs with it (ribs, lobes, cysts); the others cannot swap."""
    labels = label_dict(classes)
    pairs, unpaired = lateral_label_pairs({k: v for k, v in labels.items() if k != "background"})
    lateral = [c for c in classes if c.endswith("_left") or "_left_" in c or c.endswith("_right") or "_right_" in c]
    assert 2 * len(pairs) + len(unpaired) == len(lateral)
    assert (labels["rib_left_7"], labels["rib_right_7"]) in pairs
    assert (labels["lung_upper_lobe_left"], labels["lung_upper_lobe_right"]) in pairs
    assert "lung_middle_lobe_right" in unpaired


def test_label_pairs_of_region_based_labels():
    """Regions of one value pair like labels; a region of several values cannot be swapped by value."""
    regions = {"kidney left": [1], "kidney right": (2,), "kidneys": (1, 2), "left lung": [3, 4], "right lung": [5, 6]}
    assert lateral_label_pairs(regions) == ([(1, 2)], ["left lung", "right lung"])
    tumour = {"kidney left": [1], "kidney right": [2], "tumour": [1, 3]}  # a swap would move the tumour's kidney
    assert lateral_label_pairs(tumour) == ([], ["kidney left", "kidney right"])


def test_two_spellings_of_one_class_are_refused():
    with pytest.raises(ValueError, match="'left kidney' and 'kidney_left' are the same class 'kidney_left'"):
        lateral_label_pairs({"left kidney": 1, "kidney_left": 2})


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "SLP", "ASR", "RPI"])
@pytest.mark.parametrize("reader", [SimpleITKIO, SimpleITKIOWithReorient, NibabelIO, NibabelIOWithReorient])
def test_left_right_axis_from_nnunet_readers(tmp_path, orientation, reader):
    """The axis found from nnU-Net's properties is the one along which the two kidneys lie apart."""
    hospital = Hospital("h", (36, 30, 26), (9.0, 10.0, 12.0), orientation)
    phantom = synthesize_case(hospital, case_rng(1, hospital, 0))
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(phantom.labels, str(path))
    seg, properties = reader().read_seg(str(path))
    _assert_kidneys_apart_along(seg, left_right_axis(properties))


def _assert_kidneys_apart_along(seg: np.ndarray, left_right: tuple[int, int]) -> None:
    axis, sign = left_right
    left = np.argwhere(seg[0] == PHANTOM_CLASSES.index("kidney_left") + 1).mean(0)
    right = np.argwhere(seg[0] == PHANTOM_CLASSES.index("kidney_right") + 1).mean(0)
    separation = left - right
    assert int(np.argmax(np.abs(separation))) == axis, (separation, axis)
    assert np.sign(separation[axis]) == sign  # the index grows towards the left kidney when sign is +1


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LAS"])
@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_left_right_axis_of_2d_simpleitk_images(tmp_path, orientation, ending):
    """2D images: SimpleITKIO stores a 2x2 direction; its x is the patient's left-right as in 3D."""
    hospital = Hospital("h", (36, 30, 26), (9.0, 10.0, 12.0), orientation)
    labels = synthesize_case(hospital, case_rng(1, hospital, 0)).labels
    kidneys = sitk.GetArrayViewFromImage(labels) == PHANTOM_CLASSES.index("kidney_left") + 1
    path = tmp_path / f"slice{ending}"
    sitk.WriteImage(labels[:, :, int(np.argmax(kidneys.sum((1, 2))))], str(path))  # the axial slice with most kidney
    seg, properties = SimpleITKIO().read_seg(str(path))
    assert np.shape(properties["sitk_stuff"]["direction"]) == (4,) and seg.shape[1] == 1
    _assert_kidneys_apart_along(seg, left_right_axis(properties))


def test_readers_without_geometry_leave_left_right_unknown(tmp_path):
    import tifffile
    from skimage import io

    io.imsave(tmp_path / "slice.png", np.zeros((8, 6), dtype=np.uint8), check_contrast=False)
    tifffile.imwrite(tmp_path / "volume.tif", np.zeros((4, 8, 6), dtype=np.uint8), photometric="minisblack")
    for reader, name in ((NaturalImage2DIO, "slice.png"), (Tiff3DIO, "volume.tif")):
        _, properties = reader().read_seg(str(tmp_path / name))
        assert left_right_axis(properties) is None, reader.__name__


def test_patch_axis_follows_transpose_and_2d_slicing():
    assert patch_axis(2, (0, 1, 2), 3) == 2
    assert patch_axis(2, (2, 0, 1), 3) == 0
    assert patch_axis(2, (0, 1, 2), 2) == 1
    assert patch_axis(0, (0, 1, 2), 2) is None  # 2D slices are cut along the left-right axis


def test_lateral_mirror_swaps_pairs_only_when_flipping_that_axis():
    seg = torch.zeros((1, 4, 4, 6))
    seg[0, :, :, :2] = 3  # a "left" organ on one side
    seg[0, :, :, 4:] = 5  # unrelated organ
    image = torch.arange(96, dtype=torch.float32).reshape(1, 4, 4, 6)
    transform = LateralMirrorTransform((0, 1, 2), left_right_axis=2, label_pairs=[(3, 4)])
    flipped = transform.apply({"image": image.clone(), "segmentation": seg.clone()}, axes=[2])
    assert torch.equal(flipped["image"], torch.flip(image, [3]))
    assert (flipped["segmentation"][0, :, :, 4:] == 4).all()  # left organ mirrored and renamed right
    assert (flipped["segmentation"][0, :, :, :2] == 5).all()
    other = transform.apply({"image": image.clone(), "segmentation": seg.clone()}, axes=[0])
    assert torch.equal(other["segmentation"], torch.flip(seg, [1]))  # no swap for other axes
    assert torch.equal(swap_labels(torch.tensor([3, 4, 5, -1]), [(3, 4)]), torch.tensor([4, 3, 5, -1]))


def test_label_sets_under_the_left_right_swap():
    """kidney (both sides) stays itself; a one-sided set swaps with its mirror set; one without a mirror set cannot
    be swapped by value."""
    labels = {"kidney_left": 1, "kidney_right": 2, "adrenal_gland_left": 3, "adrenal_gland_right": 4, "liver": 5}
    pairs = [(1, 2), (3, 4)]
    sets = {7: ("kidney", frozenset({"kidney_left", "kidney_right"})),
            8: ("left_upper", frozenset({"kidney_left", "adrenal_gland_left"})),
            9: ("right_upper", frozenset({"kidney_right", "adrenal_gland_right"})),
            10: ("left_and_liver", frozenset({"kidney_left", "liver"}))}
    assert lateral_set_pairs(sets, labels, pairs) == ([(8, 9)], ["left_and_liver"])
    assert lateral_set_pairs({7: sets[7]}, labels, pairs) == ([], [])


def test_lateral_mirror_keeps_a_symmetric_set_and_swaps_mirrored_sets():
    """Set values lie above every label (and nnU-Net's -1 padding below): the swap's table covers them."""
    seg = torch.tensor([[[[1, 2, 7, 8, 9, -1]]]], dtype=torch.int16)
    transform = LateralMirrorTransform((0, 1, 2), left_right_axis=2, label_pairs=[(1, 2), (8, 9)])
    flipped = transform.apply({"image": torch.zeros(1, 1, 1, 6), "segmentation": seg.clone()}, axes=[2])
    assert flipped["segmentation"].flatten().tolist() == [-1, 8, 9, 7, 1, 2]


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.float32])
def test_swap_labels_is_exact_for_35_pairs(dtype):
    """TotalSegmentator-sized: 35 pairs among 80 labels, nnU-Net's -1 padding; every voxel maps to its partner."""
    pairs = [(1 + 2 * i, 2 + 2 * i) for i in range(35)]
    partner = {a: b for pair in pairs for a, b in (pair, pair[::-1])}
    seg = torch.randint(-1, 80, (24, 20, 16)).to(dtype)
    expected = torch.tensor([partner.get(int(v), int(v)) for v in seg.flatten()]).reshape(seg.shape).to(dtype)
    swapped = swap_labels(seg, pairs)
    assert swapped.dtype == dtype and torch.equal(swapped, expected)
    assert torch.equal(swap_labels(swapped, pairs), seg)
    assert torch.equal(swap_labels(torch.full((3,), 77, dtype=dtype), pairs), torch.full((3,), 77, dtype=dtype))


def test_rotation_is_limited_in_planes_containing_left_right():
    full = (-np.pi, np.pi)
    assert rotation_planes(3, False) == ((1, 2), (0, 2), (0, 1))
    assert rotation_planes(3, True) == ((1, 2),) and rotation_planes(2, False) == ((0, 1),)
    limited = (-MAX_LATERAL_ROTATION, MAX_LATERAL_ROTATION)
    assert np.isclose(MAX_LATERAL_ROTATION, np.pi / 6)
    assert lateral_rotation(full, (2,), rotation_planes(3, True)) == limited  # axial slices of anisotropic CT
    assert lateral_rotation(full, (1,), rotation_planes(2, False)) == limited  # 2D configuration
    assert lateral_rotation(full, (0,), rotation_planes(3, True)) == full  # left-right across the slices
    assert lateral_rotation(full, (), rotation_planes(2, False)) == full  # no lateral classes / sagittal 2D slices
    small = (-0.2, 0.2)  # nnU-Net's ±15 degrees for elongated 2D patches stays
    assert lateral_rotation(small, (0, 1), rotation_planes(2, False)) == small


def test_lateral_directions_over_cases():
    assert lateral_directions([(2, -1), (2, -1), (2, 1)], (0, 1, 2), 3) == {(2, -1), (2, 1)}
    assert lateral_directions([(2, -1), (0, 1)], (0, 1, 2), 2) == {(1, -1), (None, 1)}  # 0: the 2D slicing axis
    assert lateral_directions([(2, -1), None], (0, 1, 2), 3) is None


def test_when_mirroring_may_swap_labels():
    from nnunet_suprem.training.laterality import lateral_mirroring_blocker

    assert lateral_mirroring_blocker({(2, -1)}, [], True) is None
    assert "geometry of some cases is unknown" in lateral_mirroring_blocker(None, [], True)
    assert "differ in which way" in lateral_mirroring_blocker({(2, -1), (2, 1)}, [], True)
    assert "axis differs" in lateral_mirroring_blocker({(2, 1), (0, 1)}, [], True)
    assert "cut along the left-right axis" in lateral_mirroring_blocker({(1, 1), (None, 1)}, [], True)
    assert "['kidney_left'] cannot be swapped by value" in lateral_mirroring_blocker({(2, 1)}, ["kidney_left"], True)
    assert "only one side" in lateral_mirroring_blocker({(2, 1)}, [], False)
