"""nnunet-suprem split: few-shot splits_final.json in nnU-Net's format."""
import json
from pathlib import Path

import pytest

from nnunet_suprem.cli import main

CASES = [f"case_{i:02d}" for i in range(12)]


@pytest.fixture
def preprocessed(nnunet_env) -> Path:
    """A dataset as nnU-Net's preprocessing leaves it: dataset.json and one label per case in gt_segmentations."""
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset005_Few"
    (folder / "gt_segmentations").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "numTraining": len(CASES)}))
    for case in CASES:
        (folder / "gt_segmentations" / f"{case}.nii.gz").touch()
    return folder


def split(*args: str) -> int:
    return main(["split", "-d", "5", *args])


def read_splits(folder: Path) -> list:
    return json.loads((folder / "splits_final.json").read_text())


def test_split_has_nnunet_format_and_is_seeded(preprocessed):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    assert split("--train-cases", "5", "--seed", "3") == 0
    splits = read_splits(preprocessed)
    reference = generate_crossval_split(CASES, seed=12345, n_splits=5)  # what nnU-Net itself writes
    assert len(splits) == 1 and splits[0].keys() == reference[0].keys()
    train, val = splits[0]["train"], splits[0]["val"]
    assert len(train) == 5 and len(val) == 7 and sorted(train + val) == CASES
    assert split("--train-cases", "5", "--seed", "3", "--overwrite") == 0
    assert read_splits(preprocessed) == splits
    assert split("--train-cases", "5", "--seed", "4", "--overwrite") == 0
    assert read_splits(preprocessed)[0]["train"] != train


def test_folds_are_independent_draws_and_fold_0_does_not_depend_on_their_number(preprocessed):
    assert split("--train-cases", "3", "--seed", "0") == 0
    single = read_splits(preprocessed)
    assert split("--train-cases", "3", "--seed", "0", "--folds", "4", "--overwrite") == 0
    folds = read_splits(preprocessed)
    assert len(folds) == 4 and folds[0] == single[0]
    assert len({tuple(f["train"]) for f in folds}) > 1
    assert all(len(f["train"]) == 3 and sorted(f["train"] + f["val"]) == CASES for f in folds)


def test_split_refuses_to_replace_an_existing_split(preprocessed, capsys):
    existing = preprocessed / "splits_final.json"
    existing.write_text("[]")
    assert split("--train-cases", "5") == 2
    assert f"{existing} already exists" in capsys.readouterr().err
    assert existing.read_text() == "[]"


@pytest.mark.parametrize("train_cases", ["0", "12", "13"])
def test_split_needs_at_least_one_training_and_one_validation_case(preprocessed, capsys, train_cases):
    assert split("--train-cases", train_cases) == 2
    assert "--train-cases must be between 1 and 11" in capsys.readouterr().err
    assert not (preprocessed / "splits_final.json").exists()


def test_split_needs_a_preprocessed_dataset(nnunet_env, capsys):
    planned_only = Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset006_Planned"
    planned_only.mkdir()
    (planned_only / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    assert main(["split", "-d", "6", "--train-cases", "2"]) == 2
    assert f"{planned_only / 'gt_segmentations'} not found: preprocess the dataset first" in capsys.readouterr().err
    assert main(["split", "-d", "7", "--train-cases", "2"]) == 2
    assert "dataset 7:" in capsys.readouterr().err


def test_split_names_a_damaged_dataset_json(preprocessed, capsys):
    (preprocessed / "dataset.json").write_text('{"file_ending": ".nii.gz",')
    assert split("--train-cases", "2") == 2
    assert f"{preprocessed / 'dataset.json'}: not valid JSON" in capsys.readouterr().err
