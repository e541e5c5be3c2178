"""convert-abdomenatlas on phantoms in the real layout, hand-built bad cases, and the real CT."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import nnunet_suprem.convert.mask_conversion as mask_conversion
from conftest import WORKERS, cli, command, run, subprocess_env, tree_digest
from nnunet_suprem.convert.abdomenatlas import convert_abdomenatlas
from nnunet_suprem.convert.driver import ConversionError
from nnunet_suprem.manifest import annotated_classes_by_case
from nnunet_suprem.phantom import HOSPITALS
from nnunet_suprem.synth import hospitals_from_args, write_abdomenatlas_dataset
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_0, ABDOMENATLAS_1_1

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct" / "lung1"
SHAPE = (24, 24, 20)


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _write_like(array, reference_path, path, spacing=None):
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(sitk.ReadImage(str(reference_path)))
    if spacing is not None:
        image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


@pytest.fixture
def atlas_with_bad_cases(tmp_path) -> Path:
    """hospA (full), hospB (2 classes) and five hand-made tricky cases."""
    src = tmp_path / "atlas"
    write_abdomenatlas_dataset(src, hospitals_from_args(["hospA", "hospB"], ["hospB=liver,spleen"], SHAPE), 2)
    good = src / "hospA_0000"

    def clone(name):
        shutil.copytree(good, src / name)
        return src / name

    no_ct = clone("no_ct")
    (no_ct / "ct.nii.gz").unlink()
    wrong_spacing = clone("wrong_spacing")
    _write_like(_array(good / "segmentations/liver.nii.gz"), good / "ct.nii.gz",
                wrong_spacing / "segmentations/liver.nii.gz", spacing=(1.0, 1.0, 1.0))
    not_binary = clone("not_binary")
    _write_like(_array(good / "segmentations/spleen.nii.gz") * 2 + _array(good / "segmentations/liver.nii.gz"),
                good / "ct.nii.gz", not_binary / "segmentations/spleen.nii.gz")
    rescaled = clone("mask_0_255")
    _write_like((_array(good / "segmentations/liver.nii.gz") * 255).astype(np.uint8), good / "ct.nii.gz",
                rescaled / "segmentations/liver.nii.gz")
    overlap = clone("overlap")  # a small 'stomach' blob inside the liver
    liver = _array(good / "segmentations/liver.nii.gz")
    blob = np.zeros_like(liver)
    z, y, x = np.argwhere(liver)[len(np.argwhere(liver)) // 2]
    blob[z, y - 1:y + 1, x - 1:x + 1] = 1
    blob &= liver
    _write_like(blob, good / "ct.nii.gz", overlap / "segmentations/stomach.nii.gz")
    empty = clone("empty_mask")
    _write_like(np.zeros_like(liver), good / "ct.nii.gz", empty / "segmentations/kidney_left.nii.gz")
    return src


@pytest.mark.e2e
def test_good_and_bad_cases(nnunet_env, atlas_with_bad_cases):
    src = atlas_with_bad_cases
    before = tree_digest(src)
    out = convert_abdomenatlas(src, 5, "Atlas", num_processes=2)
    assert tree_digest(src) == before  # the source is never modified

    dataset = json.loads((out / "dataset.json").read_text())
    assert list(dataset["labels"]) == ["background", *ABDOMENATLAS_1_1]
    assert dataset["channel_names"] == {"0": "CT"}
    converted = sorted(p.name.removesuffix(".nii.gz") for p in (out / "labelsTr").iterdir())
    assert converted == ["empty_mask", "hospA_0000", "hospA_0001", "hospB_0000", "hospB_0001", "mask_0_255", "overlap"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in converted]

    report = json.loads((out / "conversion_report.json").read_text())
    assert report["skipped_cases"] == ["no_ct", "not_binary", "wrong_spacing"]
    problems = {(p["case"], Path(p["file"]).name): p for p in report["problems"]}
    assert "no ct.nii.gz" in problems["no_ct", "no_ct"]["problem"]
    assert "spacing" in problems["wrong_spacing", "liver.nii.gz"]["problem"]
    assert "not a binary mask" in problems["not_binary", "spleen.nii.gz"]["problem"]
    overlap = problems["overlap", "stomach.nii.gz"]
    assert not overlap["fatal"] and "overlaps liver in 4 voxels; assigned to stomach" in overlap["problem"]

    # partial labels: every phantom class annotated in hospA, only liver+spleen in hospB; the 9 AbdomenAtlas
    # classes the phantom lacks (colon, ...) have no mask anywhere, so every case is partial
    manifest = annotated_classes_by_case(dataset)
    assert manifest["hospB_0000"] == {"liver", "spleen"}
    assert "celiac_trunk" not in manifest["hospA_0000"] and "liver" in manifest["hospA_0000"]
    assert "kidney_left" in manifest["empty_mask"]  # an empty mask is an annotation: the organ is absent
    assert report["partially_annotated_cases"] == 7

    # label maps: CT geometry exactly, smallest dtype, values as the masks say
    for case in converted:
        ct, labels = sitk.ReadImage(str(out / f"imagesTr/{case}_0000.nii.gz")), sitk.ReadImage(str(out / f"labelsTr/{case}.nii.gz"))
        assert labels.GetPixelID() == sitk.sitkUInt8
        for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(labels, what)() == getattr(ct, what)()
    liver_value = dataset["labels"]["liver"]
    assert np.array_equal(_array(out / "labelsTr/mask_0_255.nii.gz") == liver_value,
                          _array(src / "hospA_0000/segmentations/liver.nii.gz") == 1)
    overlap_labels = _array(out / "labelsTr/overlap.nii.gz")
    assert (overlap_labels == dataset["labels"]["stomach"]).sum() == 4  # smaller structure wins
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging or temp files left
    run(command("nnUNetv2_extract_fingerprint", "-d", "5", "--verify_dataset_integrity", "-np", WORKERS),
        subprocess_env(nnunet_env))


def test_strict_refuses_and_publishes_nothing(nnunet_env, atlas_with_bad_cases):
    with pytest.raises(ConversionError, match="--strict"):
        convert_abdomenatlas(atlas_with_bad_cases, 6, "Strict", strict=True, num_processes=1)
    raw = Path(nnunet_env["nnUNet_raw"])
    assert not (raw / "Dataset006_Strict").exists()


def test_interrupted_conversion_resumes_to_the_same_result(nnunet_env, tmp_path, monkeypatch):
    src = tmp_path / "atlas"
    write_abdomenatlas_dataset(src, [HOSPITALS["hospC"].with_shape(SHAPE)], 4)
    reference = convert_abdomenatlas(src, 8, "Reference", version="1.0")

    calls = []
    original = mask_conversion.convert_mask_case

    def dies_on_third_case(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(mask_conversion, "convert_mask_case", dies_on_third_case)
    with pytest.raises(KeyboardInterrupt):
        convert_abdomenatlas(src, 9, "Resumed", version="1.0")
    raw = Path(nnunet_env["nnUNet_raw"])
    assert not (raw / "Dataset009_Resumed").exists() and (raw / ".Dataset009_Resumed.partial").is_dir()
    with pytest.raises(FileExistsError, match="different options"):
        convert_abdomenatlas(src, 9, "Resumed", version="1.1")

    calls.clear()
    resumed = convert_abdomenatlas(src, 9, "Resumed", version="1.0")
    assert calls == ["hospC_0002", "hospC_0003"]  # only what was not finished
    for folder in ("imagesTr", "labelsTr"):
        for path in (reference / folder).iterdir():
            assert np.array_equal(_array(path), _array(resumed / folder / path.name))
    strip = lambda d: {k: v for k, v in d.items() if k != "name"}  # noqa: E731
    assert strip(json.loads((resumed / "dataset.json").read_text())) == \
        strip(json.loads((reference / "dataset.json").read_text()))
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_abdomenatlas(src, 9, "Resumed", version="1.0")


def test_combined_labels_and_class_subset(nnunet_env, tmp_path):
    src = tmp_path / "atlas"
    write_abdomenatlas_dataset(src, [HOSPITALS["hospA"].with_shape(SHAPE)], 1)
    case = src / "hospA_0000"
    combined = np.zeros_like(_array(case / "ct.nii.gz"), dtype=np.uint8)
    for value, name in enumerate(ABDOMENATLAS_1_0, start=1):
        combined[_array(case / f"segmentations/{name}.nii.gz") == 1] = value
    _write_like(combined, case / "ct.nii.gz", case / "combined_labels.nii.gz")

    out = convert_abdomenatlas(src, 10, "Combined", version="1.0", combined_labels=True,
                               classes=["Spleen", "inferior vena cava"], keep_orientation=True)
    dataset = json.loads((out / "dataset.json").read_text())
    assert "overwrite_image_reader_writer" not in dataset
    assert dataset["labels"] == {"background": 0, "postcava": 1, "spleen": 2}
    labels = _array(out / "labelsTr/hospA_0000.nii.gz")
    assert np.array_equal(labels == 1, combined == ABDOMENATLAS_1_0.index("postcava") + 1)
    assert np.array_equal(labels == 2, combined == ABDOMENATLAS_1_0.index("spleen") + 1)
    with pytest.raises(ValueError, match="9 AbdomenAtlas 1.0 classes"):
        convert_abdomenatlas(src, 11, "Bad", combined_labels=True)
    with pytest.raises(ValueError, match="not AbdomenAtlas 1.0 classes"):
        convert_abdomenatlas(src, 11, "Bad", version="1.0", classes=["femur_left"])


def test_cli_errors_are_clear(nnunet_env, tmp_path):
    env = subprocess_env(nnunet_env)
    result = subprocess.run(cli("convert-abdomenatlas", str(tmp_path / "missing"), "-d", "3"), env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "missing is not a folder" in result.stderr


@pytest.mark.e2e
@pytest.mark.skipif(not REAL_CT.is_dir(), reason="shared real CT not available")
def test_real_ct_converts_and_plans_anisotropic(nnunet_env, tmp_path):
    """The real 512x512x48 chest CT at 0.57x0.57x5 mm: lungs from a threshold, the tumour mask unused."""
    src = tmp_path / "real"
    case = src / "lung1"
    (case / "segmentations").mkdir(parents=True)
    shutil.copy(REAL_CT / "ct.nii.gz", case / "ct.nii.gz")
    shutil.copy(REAL_CT / "segmentations/lung_tumor.nii.gz", case / "segmentations/lung_tumor.nii.gz")
    ct = sitk.ReadImage(str(case / "ct.nii.gz"))
    air = sitk.GetArrayFromImage(ct) < -400
    body = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.BinaryThreshold(ct, -400, 4000)))
    lungs = air & (body > 0)
    half = lungs.shape[2] // 2  # array x = patient right -> left (LPS identity direction)
    for name, side in (("lung_right", slice(0, half)), ("lung_left", slice(half, None))):
        mask = np.zeros_like(lungs, dtype=np.uint8)
        mask[:, :, side] = lungs[:, :, side]
        _write_like(mask, case / "ct.nii.gz", case / f"segmentations/{name}.nii.gz")
    for copy in ("lung1_b",):
        shutil.copytree(case, src / copy)

    out = convert_abdomenatlas(src, 20, "RealCT", classes=["lung_left", "lung_right"], num_processes=1)
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["converted_cases"] == 2 and "lung_tumor.nii.gz" in report["notes"][0]
    labels = sitk.ReadImage(str(out / "labelsTr/lung1.nii.gz"))
    assert labels.GetSize() == (512, 512, 48) and labels.GetSpacing() == ct.GetSpacing()
    assert (out / "imagesTr/lung1_0000.nii.gz").read_bytes() == (REAL_CT / "ct.nii.gz").read_bytes()

    env = subprocess_env(nnunet_env)
    run(command("nnUNetv2_extract_fingerprint", "-d", "20", "--verify_dataset_integrity", "-np", WORKERS), env)
    run(command("nnUNetv2_plan_experiment", "-d", "20"), env)
    plans = json.loads((Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset020_RealCT/nnUNetPlans.json").read_text())
    fullres = plans["configurations"]["3d_fullres"]
    assert fullres["spacing"][0] == pytest.approx(5.0) and fullres["spacing"][1] == pytest.approx(0.5703, abs=1e-3)
