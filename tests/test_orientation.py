"""Orientation at prediction: a model that learnt left and right from array position (SimpleITKIO, every training
case LPS) records that orientation in its checkpoints, and ``check-orientation`` refuses test images oriented
otherwise or writes reoriented copies that nnUNetv2_predict predicts like the original."""
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import cli, command, run, subprocess_env
from nnunet_suprem.cli import main
from nnunet_suprem.fileio import write_image, write_json
from nnunet_suprem.nnunet_env import trainers_dir
from nnunet_suprem.orientation import (ORIENTATION_KEY, image_orientation, needs_check, patch_orientation,
                                       reorient_code, training_orientation, write_reoriented)
from nnunet_suprem.transfer.checkpoint import load_weights_only


def test_training_orientation_only_when_every_case_agrees():
    assert training_orientation([(2, 1), (2, 1)], "SimpleITKIO", (0, 1, 2), 3) == {
        "reader": "SimpleITKIO", "left_right": [2, 1], "patch_left_right": [2, 1]}
    assert training_orientation([(2, 1), (2, -1)], "SimpleITKIO", (0, 1, 2), 3) is None  # mixed: from anatomy
    assert training_orientation([(2, 1), None], "SimpleITKIO", (0, 1, 2), 3) is None
    # the network's patches: after transpose_forward, and in 2D without the slicing axis
    assert training_orientation([(0, -1)], "NibabelIO", (2, 0, 1), 3)["patch_left_right"] == [1, -1]
    assert training_orientation([(2, -1)], "NibabelIO", (0, 1, 2), 2)["patch_left_right"] == [1, -1]
    assert training_orientation([(0, -1)], "NibabelIO", (0, 1, 2), 2)["patch_left_right"] == [None, -1]


@pytest.mark.parametrize("record, expected", [
    ({"patch_left_right": [2, -1]}, (2, -1)), ({"patch_left_right": [None, 1]}, (None, 1)),
    ({"reader": "SimpleITKIO", "left_right": [2, 1]}, None),  # written before the patch orientation was recorded
    (None, None), ("RAS", None), ({"patch_left_right": [3, 1]}, None), ({"patch_left_right": [2, 0]}, None),
    ({"patch_left_right": [True, 1]}, None), ({"patch_left_right": "2,1"}, None), ({"patch_left_right": [2]}, None)])
def test_patch_orientation_of_records_old_and_malformed(record, expected):
    assert patch_orientation(record) == expected
    assert needs_check({"reader": "NibabelIO", "left_right": [2, 1]})
    assert not needs_check({"reader": "NibabelIOWithReorient", "left_right": [2, -1]})
    assert not needs_check(None)


@pytest.mark.parametrize("current, orientation, target", [
    ("LPS", (2, 1), "LPS"), ("RAS", (2, 1), "LAS"), ("RPI", (2, -1), "RPI"), ("ASR", (2, 1), "LSA"),
    ("PLS", (2, 1), "LPS"), ("LPS", (0, -1), "SPR")])
def test_reorient_code(current, orientation, target):
    assert reorient_code(current, orientation) == target


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIO"])
@pytest.mark.parametrize("code", ["RAS", "PLI", "SRA"])
def test_write_reoriented_keeps_the_physical_image(tmp_path, reader, code):
    rng = np.random.default_rng(0)
    original = sitk.GetImageFromArray(rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16))
    original.SetSpacing((0.7, 0.8, 5.0))
    original.SetOrigin((10.0, -20.0, 30.0))
    oriented = sitk.DICOMOrient(original, code)
    sitk.WriteImage(oriented, str(tmp_path / "in.nii.gz"))
    write_reoriented(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", (2, 1))

    result = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert image_orientation(reader, str(tmp_path / "out.nii.gz")) == (2, 1)
    back = sitk.Resample(result, original, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(original))


@pytest.fixture(scope="module")
def lps_model(anisotropic_dataset) -> dict:
    """SuPreMTrainer_smoke trained on Dataset901 (SimpleITKIO, every case LPS, kidneys left and right)."""
    env = {**subprocess_env(anisotropic_dataset), "nnUNet_extTrainer": str(trainers_dir()), "nnUNet_n_proc_DA": "0"}
    run(command("nnUNetv2_train", "901", "3d_fullres", "0", "-tr", "SuPreMTrainer_smoke", "-device", "cpu"), env)
    folder = Path(anisotropic_dataset["nnUNet_results"]) / "Dataset901_Aniso" / "SuPreMTrainer_smoke__nnUNetPlans__3d_fullres"
    return {"env": env, "folder": folder, "raw": Path(anisotropic_dataset["nnUNet_raw"]) / "Dataset901_Aniso"}


def test_checkpoint_records_the_orientation_and_log_says_what_to_do(lps_model):
    fold = lps_model["folder"] / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        assert load_weights_only(fold / name)[ORIENTATION_KEY] == {"reader": "SimpleITKIO", "left_right": [2, 1],
                                                                   "patch_left_right": [2, 1]}
    log, = (path.read_text() for path in fold.glob("training_log_*.txt"))  # this run's only
    assert "ties left and right to that index order" in log and "nnunet-suprem check-orientation" in log


def _predict(model: dict, images: Path, out: Path) -> None:
    run(command("nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", "901", "-c", "3d_fullres", "-f", "0",
                "-tr", "SuPreMTrainer_smoke", "-device", "cpu", "-npp", "1", "-nps", "1"), model["env"])


def test_check_orientation_refuses_then_reorients_for_stock_predict(lps_model, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = lps_model["raw"] / "imagesTr" / "aniso_000_0000.nii.gz"
    (images / "lps_0000.nii.gz").write_bytes(source.read_bytes())
    # the same physical image with the index order of x reversed (RPS): only left-right points the other way
    sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(source)), "RPS"), str(images / "rps_0000.nii.gz"))
    check = cli("check-orientation", str(lps_model["folder"]), "-i", str(images))

    refused = subprocess.run(check, env=lps_model["env"], capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert "1 case(s) would come out with left and right swapped: rps (array axis 2 (x) grows towards the " \
           "patient's right)" in refused.stderr and "--reorient OUT" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    run(check + ["--reorient", str(tmp_path / "reoriented")], lps_model["env"])
    assert sorted(p.name for p in (tmp_path / "reoriented").iterdir()) == ["lps_0000.nii.gz", "rps_0000.nii.gz"]
    assert (tmp_path / "reoriented" / "lps_0000.nii.gz").read_bytes() == source.read_bytes()
    run(check[:-2] + ["-i", str(tmp_path / "reoriented")], lps_model["env"])  # now every case passes

    _predict(lps_model, tmp_path / "reoriented", tmp_path / "predicted")
    lps = sitk.ReadImage(str(tmp_path / "predicted" / "lps.nii.gz"))
    rps = sitk.ReadImage(str(tmp_path / "predicted" / "rps.nii.gz"))
    on_lps_grid = sitk.Resample(rps, lps, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_lps_grid), sitk.GetArrayFromImage(lps))
    assert len(np.unique(sitk.GetArrayFromImage(lps))) > 1  # the comparison is not between two empty maps


@pytest.mark.e2e
def test_check_orientation_without_a_record(planned_phantom_dataset, tmp_path):
    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    import torch

    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, folder / "fold_0" / "checkpoint_final.pth")
    result = run(cli("check-orientation", str(folder), "-i", str(tmp_path)), planned_phantom_dataset["env"])
    assert "records no training orientation" in result.stdout


def _recorded_model(folder: Path) -> Path:
    """A model folder as check-orientation reads it: dataset.json and a checkpoint recording SimpleITKIO, LPS."""
    (folder / "fold_0").mkdir(parents=True)
    write_json({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"},
               folder / "dataset.json")
    torch.save({ORIENTATION_KEY: {"reader": "SimpleITKIO", "left_right": [2, 1]}},
               folder / "fold_0/checkpoint_final.pth")
    return folder


@pytest.mark.parametrize("damage", ["truncated", "NaN"])
def test_reorient_refuses_a_damaged_image_and_writes_no_folder(tmp_path, capsys, damage):
    """Measured: a truncated or NaN test image came out of --reorient as a clean-looking file."""
    images = tmp_path / "images"
    for case, code in (("lps", "LPS"), ("ras", "RAS")):
        array = np.random.default_rng(0).normal(0, 100, (5, 6, 7)).astype(np.float32)
        write_image(sitk.DICOMOrient(sitk.GetImageFromArray(array), code), images / f"{case}_0000.nii.gz")
    damaged = images / "ras_0000.nii.gz"
    if damage == "NaN":
        image = sitk.ReadImage(str(damaged))
        array = sitk.GetArrayFromImage(image)
        array[0, 0, 0] = np.nan
        nan_image = sitk.GetImageFromArray(array)
        nan_image.CopyInformation(image)
        write_image(nan_image, damaged)
    else:
        damaged.write_bytes(damaged.read_bytes()[:-40])
    out = tmp_path / "reoriented"
    assert main(["check-orientation", str(_recorded_model(tmp_path / "model")), "-i", str(images),
                 "--reorient", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(damaged) in error and damage in error, error
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["images", "model"]
