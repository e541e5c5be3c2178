import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_suprem.phantom import (HOSPITALS, PHANTOM_CLASSES, Hospital, case_rng, direction_from_orientation,
                                   synthesize_case)
from nnunet_suprem.taxonomy import laterality_partner


def _case(hospital: Hospital, index: int = 0, seed: int = 0):
    return synthesize_case(hospital, case_rng(seed, hospital, index))


def test_deterministic_per_case():
    h = HOSPITALS["hospA"]
    a, b, c = _case(h), _case(h), _case(h, index=1)
    assert np.array_equal(sitk.GetArrayFromImage(a.ct), sitk.GetArrayFromImage(b.ct))
    assert np.array_equal(sitk.GetArrayFromImage(a.labels), sitk.GetArrayFromImage(b.labels))
    assert not np.array_equal(sitk.GetArrayFromImage(a.ct), sitk.GetArrayFromImage(c.ct))


@pytest.mark.parametrize("hospital", list(HOSPITALS.values()), ids=list(HOSPITALS))
def test_grid_follows_the_hospital(hospital):
    p = _case(hospital)
    for image in (p.ct, p.labels):
        assert image.GetSize() == hospital.shape
        assert np.allclose(image.GetSpacing(), hospital.spacing)
        assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), direction_from_orientation(hospital.orientation))
    assert p.ct.GetPixelID() == sitk.sitkInt16 and p.labels.GetPixelID() == sitk.sitkUInt8


def test_orientation_code_is_nibabels_axis_code(tmp_path):
    for hospital in HOSPITALS.values():
        path = tmp_path / f"{hospital.name}.nii.gz"
        sitk.WriteImage(_case(hospital).ct, str(path))
        assert "".join(nib.aff2axcodes(nib.load(path).affine)) == hospital.orientation


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "RPI", "ASL"])
def test_left_organs_are_on_the_patients_left(orientation):
    """Whatever the array orientation, *_left organs lie at positive LPS x, their partners at negative x."""
    hospital = Hospital("h", (40, 40, 40), (8.0, 8.0, 8.0), orientation)
    p = _case(hospital)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(p.labels)
    for name in PHANTOM_CLASSES:
        if name.endswith("_left"):
            left = stats.GetCentroid(PHANTOM_CLASSES.index(name) + 1)
            right = stats.GetCentroid(PHANTOM_CLASSES.index(laterality_partner(name)) + 1)
            assert left[0] > 20 and right[0] < -20, (name, left, right)


def test_ct_like_intensities_and_organs():
    p = _case(HOSPITALS["hospA"])
    ct, labels = sitk.GetArrayFromImage(p.ct), sitk.GetArrayFromImage(p.labels)
    assert np.median(ct[0, 0]) < -900  # air in the corner
    assert ct.min() >= -1024 and ct.max() <= 3071
    median = {}
    for name in ("liver", "kidney_left", "aorta", "lung_right", "femur_left"):
        inside = ct[labels == PHANTOM_CLASSES.index(name) + 1]
        assert inside.size > 20, name
        median[name] = np.median(inside)
    assert median["lung_right"] < -600 and median["femur_left"] > 300  # air-filled lung, bone
    assert 0 < median["liver"] < 120 < median["kidney_left"] and median["aorta"] > 120  # contrast-enhanced
    present = set(np.unique(labels)) - {0}
    assert len(present) >= len(PHANTOM_CLASSES) - 1  # only optional organs (gall bladder) may be missing


def test_masks_are_binary_and_disjoint():
    p = _case(HOSPITALS["hospB"])
    total = np.zeros(sitk.GetArrayViewFromImage(p.labels).shape, dtype=int)
    for name in PHANTOM_CLASSES:
        m = sitk.GetArrayFromImage(p.mask(name))
        assert set(np.unique(m)) <= {0, 1}
        total += m
    assert total.max() == 1


def test_label_map_restricts_and_renumbers():
    p = _case(HOSPITALS["hospA"])
    restricted = sitk.GetArrayFromImage(p.label_map({"liver": 1, "spleen": 7}))
    full = sitk.GetArrayFromImage(p.labels)
    assert set(np.unique(restricted)) == {0, 1, 7}
    assert np.array_equal(restricted == 1, full == PHANTOM_CLASSES.index("liver") + 1)
    assert p.label_map({}).GetSpacing() == p.labels.GetSpacing()


def test_with_shape_keeps_the_field_of_view():
    h = HOSPITALS["hospC"]
    small = h.with_shape((26, 26, 18))
    assert np.allclose(np.multiply(small.shape, small.spacing), np.multiply(h.shape, h.spacing))


@pytest.mark.parametrize("kwargs, message", [
    ({"orientation": "LPX"}, "3 letters"),
    ({"orientation": "LLS"}, "twice"),
    ({"annotated": ("liver", "brain")}, "unknown phantom classes.*brain"),
])
def test_bad_hospitals(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Hospital("bad", (8, 8, 8), (1.0, 1.0, 1.0), **kwargs)


def _voxels(phantom, name: str) -> int:
    return int((sitk.GetArrayViewFromImage(phantom.labels) == PHANTOM_CLASSES.index(name) + 1).sum())


def test_organ_scale_enlarges_small_organs_only_and_keeps_their_side():
    """The fast demo's anatomy: small organs grow by about scale^3 (vessels scale^2), liver and lungs stay, the
    random stream is the same (so each organ keeps its place), and left organs stay on the patient's left."""
    hospital = Hospital("h", (40, 40, 40), (8.0, 8.0, 8.0), "RAS")
    reference, enlarged = _case(hospital), synthesize_case(hospital, case_rng(0, hospital, 0), organ_scale=1.4)
    for name in ("spleen", "kidney_left", "kidney_right", "stomach", "femur_left"):
        assert 1.6 < _voxels(enlarged, name) / _voxels(reference, name) < 3.5, name
    assert 1.4 < _voxels(enlarged, "aorta") / _voxels(reference, "aorta") < 2.4  # thicker, not longer
    assert 0.8 < _voxels(enlarged, "lung_left") / _voxels(reference, "lung_left") <= 1.0  # only overwritten
    assert np.array_equal(sitk.GetArrayFromImage(_case(hospital).ct), sitk.GetArrayFromImage(reference.ct))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(enlarged.labels)
    for name in ("kidney_left", "femur_left", "adrenal_gland_left"):
        left = stats.GetCentroid(PHANTOM_CLASSES.index(name) + 1)
        right = stats.GetCentroid(PHANTOM_CLASSES.index(laterality_partner(name)) + 1)
        assert left[0] > 20 and right[0] < -20, (name, left, right)


@pytest.mark.parametrize("scale", [0.0, 0.49, 2.01, float("nan")])
def test_organ_scale_out_of_range_is_refused(scale):
    hospital = HOSPITALS["hospA"]
    with pytest.raises(ValueError, match="organ scale"):
        synthesize_case(hospital, case_rng(0, hospital, 0), organ_scale=scale)
