"""Left/right handling: label pairs, the left-right array axis from nnU-Net's own readers, the mirror transform."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_suprem.phantom import PHANTOM_CLASSES, Hospital, case_rng, synthesize_case
from nnunet_suprem.taxonomy import label_dict
from nnunet_suprem.training.laterality import (LateralMirrorTransform, lateral_label_pairs, left_right_axis,
                                               patch_axis, swap_labels)

LABELS = label_dict(PHANTOM_CLASSES)


def test_label_pairs():
    pairs, unpaired = lateral_label_pairs(LABELS)
    named = {(PHANTOM_CLASSES[a - 1], PHANTOM_CLASSES[b - 1]) for a, b in pairs}
    assert named == {("kidney_left", "kidney_right"), ("adrenal_gland_left", "adrenal_gland_right"),
                     ("femur_left", "femur_right"), ("lung_left", "lung_right")}
    assert unpaired == []
    assert lateral_label_pairs({"background": 0, "kidney_left": 1, "liver": 2}) == ([], ["kidney_left"])


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "SLP", "ASR", "RPI"])
@pytest.mark.parametrize("reader", [SimpleITKIO, NibabelIOWithReorient])
def test_left_right_axis_from_nnunet_readers(tmp_path, orientation, reader):
    """The axis found from nnU-Net's properties is the one along which the two kidneys lie apart."""
    hospital = Hospital("h", (36, 30, 26), (9.0, 10.0, 12.0), orientation)
    phantom = synthesize_case(hospital, case_rng(1, hospital, 0))
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(phantom.labels, str(path))
    seg, properties = reader().read_seg(str(path))
    axis, sign = left_right_axis(properties)
    left = np.argwhere(seg[0] == PHANTOM_CLASSES.index("kidney_left") + 1).mean(0)
    right = np.argwhere(seg[0] == PHANTOM_CLASSES.index("kidney_right") + 1).mean(0)
    separation = left - right
    assert int(np.argmax(np.abs(separation))) == axis, (separation, axis)
    assert np.sign(separation[axis]) == sign  # the index grows towards the left kidney when sign is +1


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


def test_when_mirroring_may_swap_labels():
    from nnunet_suprem.training.laterality import lateral_mirroring_blocker

    assert lateral_mirroring_blocker({(2, -1)}, [], True) is None
    assert "differ in which way" in lateral_mirroring_blocker({(2, -1), (2, 1)}, [], True)
    assert "axis differs" in lateral_mirroring_blocker({(2, 1), (0, 1)}, [], True)
    assert "no partner" in lateral_mirroring_blocker({(2, 1)}, ["kidney_left"], True)
    assert "only one side" in lateral_mirroring_blocker({(2, 1)}, [], False)
