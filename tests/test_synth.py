import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import cli, run, subprocess_env
from nnunet_suprem.cli import main
from nnunet_suprem.manifest import annotated_classes_by_case
from nnunet_suprem.phantom import HOSPITALS, PHANTOM_CLASSES, case_rng, synthesize_case
from nnunet_suprem.synth import hospitals_from_args, write_abdomenatlas_dataset, write_nnunet_dataset
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_1

PARTIAL = ["hospA", "hospB"], ["hospB=liver,kidney_left"]


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_abdomenatlas_layout_has_masks_only_for_annotated_classes(tmp_path):
    hospitals = hospitals_from_args(*PARTIAL, shape=(24, 24, 20))
    cases = write_abdomenatlas_dataset(tmp_path / "atlas", hospitals, num_cases=2, seed=3)
    assert cases == ["hospA_0000", "hospA_0001", "hospB_0000", "hospB_0001"]
    assert sorted(p.name for p in (tmp_path / "atlas").iterdir()) == cases
    full = sorted(p.name for p in (tmp_path / "atlas/hospA_0000/segmentations").iterdir())
    assert full == sorted(f"{c}.nii.gz" for c in PHANTOM_CLASSES)
    partial = sorted(p.name for p in (tmp_path / "atlas/hospB_0000/segmentations").iterdir())
    assert partial == ["kidney_left.nii.gz", "liver.nii.gz"]
    ct = sitk.ReadImage(str(tmp_path / "atlas/hospB_0000/ct.nii.gz"))
    mask = sitk.ReadImage(str(tmp_path / "atlas/hospB_0000/segmentations/liver.nii.gz"))
    assert ct.GetSize() == mask.GetSize() == (24, 24, 20)
    assert ct.GetDirection() == mask.GetDirection() and ct.GetOrigin() == mask.GetOrigin()
    assert set(np.unique(sitk.GetArrayFromImage(mask))) == {0, 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_nnunet_dataset_with_partial_labels(nnunet_env, tmp_path):
    hospitals = hospitals_from_args(*PARTIAL, shape=(24, 24, 20))
    path = write_nnunet_dataset(7, "Partial", hospitals, num_cases=2, num_test_cases=1, seed=1)
    dataset = json.loads((path / "dataset.json").read_text())
    assert path.name == "Dataset007_Partial" and dataset["numTraining"] == 4
    assert list(dataset["labels"]) == ["background", *PHANTOM_CLASSES]
    assert dataset["channel_names"] == {"0": "CT"} and dataset["file_ending"] == ".nii.gz"
    assert dataset["overwrite_image_reader_writer"] == "NibabelIOWithReorient"  # RAS for every case
    assert annotated_classes_by_case(dataset) == {"hospB_0000": {"liver", "kidney_left"},
                                                  "hospB_0001": {"liver", "kidney_left"}}
    partial_values = set(np.unique(_array(path / "labelsTr/hospB_0000.nii.gz")))
    assert partial_values == {0, dataset["labels"]["liver"], dataset["labels"]["kidney_left"]}
    assert len(np.unique(_array(path / "labelsTr/hospA_0000.nii.gz"))) >= len(PHANTOM_CLASSES)
    assert len(np.unique(_array(path / "labelsTs/hospB_0002.nii.gz"))) >= len(PHANTOM_CLASSES)  # test = full
    assert sorted(p.name for p in (path / "imagesTs").iterdir()) == ["hospA_0002_0000.nii.gz", "hospB_0002_0000.nii.gz"]


def test_absent_classes_complete_the_taxonomy(nnunet_env):
    """AbdomenAtlas 1.1's 25 labels from phantoms that draw 16: the other 9 are annotated as absent in every case."""
    absent = [c for c in ABDOMENATLAS_1_1 if c not in PHANTOM_CLASSES]
    hospitals = hospitals_from_args(*PARTIAL, shape=(16, 16, 16))
    path = write_nnunet_dataset(8, "Atlas25", hospitals, num_cases=1, absent_classes=absent)
    dataset = json.loads((path / "dataset.json").read_text())
    assert list(dataset["labels"]) == ["background", *ABDOMENATLAS_1_1]
    assert annotated_classes_by_case(dataset) == {"hospB_0000": {"liver", "kidney_left", *absent}}  # hospA: all 25
    assert not set(np.unique(_array(path / "labelsTr/hospA_0000.nii.gz"))) & {dataset["labels"][c] for c in absent}
    with pytest.raises(ValueError, match=r"absent classes \['liver'\] are drawn"):
        write_nnunet_dataset(9, "Wrong", hospitals, num_cases=1, absent_classes=["liver"])


def test_same_seed_same_dataset(tmp_path):
    hospitals = [HOSPITALS["hospC"].with_shape((16, 16, 16))]
    for name in ("a", "b"):
        write_abdomenatlas_dataset(tmp_path / name, hospitals, num_cases=1, seed=5)
    assert np.array_equal(_array(tmp_path / "a/hospC_0000/ct.nii.gz"), _array(tmp_path / "b/hospC_0000/ct.nii.gz"))


def test_refuses_to_overwrite(nnunet_env):
    hospitals = [HOSPITALS["hospA"].with_shape((16, 16, 16))]
    path = write_nnunet_dataset(3, "X", hospitals, num_cases=1)
    marker = path / "imagesTr/hospA_0000_0000.nii.gz"
    before = marker.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_nnunet_dataset(3, "X", hospitals, num_cases=1, seed=9)
    with pytest.raises(FileExistsError, match="already used by.*Dataset003_X"):
        write_nnunet_dataset(3, "Other", hospitals, num_cases=1)
    assert marker.read_bytes() == before
    write_nnunet_dataset(3, "X", hospitals, num_cases=1, seed=9, overwrite=True)
    assert marker.read_bytes() != before


def test_failure_leaves_nothing_behind(nnunet_env, tmp_path):
    with pytest.raises(ValueError, match="three digits"):
        write_nnunet_dataset(1000, "X", [HOSPITALS["hospA"]], num_cases=1)
    with pytest.raises(ValueError, match="unknown hospitals"):
        hospitals_from_args(["hospZ"], [], None)
    with pytest.raises(ValueError, match="HOSPITAL=class1"):
        hospitals_from_args(["hospA"], ["hospA"], None)


@pytest.mark.e2e
def test_cli_writes_both_layouts_in_parallel(tmp_path, nnunet_env):
    env = subprocess_env(nnunet_env)
    run(cli("synth", "-o", str(tmp_path / "atlas"), "--cases", "2", "--shape", "20", "20", "20", "-np", "2",
            "--annotate", "hospC=spleen"), env)
    assert sorted(p.name for p in (tmp_path / "atlas/hospC_0001/segmentations").iterdir()) == ["spleen.nii.gz"]
    run(cli("synth", "-d", "12", "--name", "Cli", "--hospitals", "hospA", "--cases", "2", "--shape", "20", "20", "20",
            "--organ-scale", "1.4"), env)
    assert len(list((tmp_path / "nnunet/nnUNet_raw/Dataset012_Cli/labelsTr").iterdir())) == 2
    hospital = HOSPITALS["hospA"].with_shape((20, 20, 20))
    for scale, same in ((1.4, True), (1.0, False)):  # the flag reaches the worker processes
        expected = sitk.GetArrayFromImage(synthesize_case(hospital, case_rng(0, hospital, 1), scale).labels)
        assert np.array_equal(_array(tmp_path / "nnunet/nnUNet_raw/Dataset012_Cli/labelsTr/hospA_0001.nii.gz"),
                              expected) == same
    refused = subprocess.run(cli("synth", "-d", "13", "--cases", "1", "--organ-scale", "3"), env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "organ scale 3.0 is outside [0.5, 2.0]" in refused.stderr
    assert not (tmp_path / "nnunet/nnUNet_raw/Dataset013_SynthCT").exists()
    again = cli("synth", "-d", "12", "--name", "Cli", "--hospitals", "hospA", "--cases", "1")
    result = subprocess.run(again, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "already exists; pass --overwrite" in result.stderr


@pytest.mark.parametrize("option", [["--cases", "-1"], ["--cases", "0"], ["--test-cases", "-1"]])
def test_cli_refuses_case_counts_that_publish_no_dataset(nnunet_env, capsys, option):
    """Measured: ``synth --cases -1`` published an empty dataset and exited 0."""
    assert main(["synth", "-d", "3", *option, "-np", "1"]) == 2
    assert f"{option[0]} {option[1]}" in capsys.readouterr().err
    assert not list(Path(nnunet_env["nnUNet_raw"]).iterdir())
