"""One class-matching policy: two names of one class in one input are an error naming the input and both names,
at every entry point that matches class names (``taxonomy.resolve_classes``)."""
import json
from pathlib import Path

import pytest

from nnunet_suprem.convert.driver import Conversion
from nnunet_suprem.convert.mask_conversion import add_case_folder, select_classes
from nnunet_suprem.convert.merge import merge_datasets
from nnunet_suprem.evaluate import evaluate
from nnunet_suprem.evaluate.folders import open_folder
from nnunet_suprem.evaluate.labels import match_label_sets
from nnunet_suprem.fewshot.report import class_groups
from nnunet_suprem.mask_folders import MASKS, mask_files
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_1, label_dict, match_classes
from nnunet_suprem.transfer.head import match_head_rows

BOTH = ["postcava", "inferior_vena_cava"]  # AbdomenAtlas and TotalSegmentator names of one class


def _masks(case: Path) -> Path:
    (case / MASKS).mkdir(parents=True)
    for name in BOTH:
        (case / MASKS / f"{name}.nii.gz").touch()  # never read: the names alone are refused
    return case / MASKS


def _spelled_apart(root: Path) -> Path:
    """Two cases of one mask folder that spell the class differently."""
    for case, name in zip(("a", "b"), BOTH):
        (root / case / MASKS).mkdir(parents=True)
        (root / case / MASKS / f"{name}.nii.gz").touch()
    return root


LABELS = {"background": 0, **{name: i for i, name in enumerate(BOTH, start=1)}}


def _merge_source(root: Path, taxonomy: str) -> tuple:
    folder = Path(root) / "Dataset061_Both"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                     "numTraining": 0, "file_ending": ".nii.gz"}))
    return lambda: merge_datasets(["61"], 62, "Merged", taxonomy=taxonomy), f"{folder / 'dataset.json'} labels"


def _label_maps(root: Path) -> Path:
    root.mkdir()
    (root / "c1.nii.gz").touch()
    return root


ENTRY_POINTS = {  # name: (tmp_path, nnU-Net folders) -> (call, the input the error must name)
    "match_classes": lambda tmp, env: (lambda: match_classes(BOTH, ABDOMENATLAS_1_1), "names"),
    "convert --classes": lambda tmp, env: (
        lambda: select_classes(BOTH, ABDOMENATLAS_1_1, "AbdomenAtlas 1.1"), "--classes"),
    "convert mask files": lambda tmp, env: (
        lambda: mask_files(tmp / "case" / MASKS, ABDOMENATLAS_1_1), str(_masks(tmp / "case"))),
    "merge, AbdomenAtlas target": lambda tmp, env: _merge_source(env["nnUNet_raw"], "abdomenatlas1.1"),
    "merge, union": lambda tmp, env: _merge_source(env["nnUNet_raw"], "union"),
    "evaluate label set": lambda tmp, env: (
        lambda: match_label_sets(BOTH, ["postcava"], sources=("pred.json", "gt.json")), "pred.json"),
    "evaluate --classes": lambda tmp, env: (
        lambda: match_label_sets(["postcava"], ["postcava"], classes=BOTH), "--classes"),
    "evaluate label-map folder": lambda tmp, env: (
        lambda: evaluate(_label_maps(tmp / "pred"), _label_maps(tmp / "gt"), tmp / "out", prediction_labels=BOTH,
                         reference_labels=["postcava"]), f"{tmp / 'pred'} classes"),
    "evaluate mask folder, one case": lambda tmp, env: (
        lambda: open_folder(_masks(tmp / "gt" / "c1").parents[1]), str(tmp / "gt")),
    "evaluate mask folder, two cases": lambda tmp, env: (
        lambda: open_folder(_spelled_apart(tmp / "gt")), str(tmp / "gt")),
    "fewshot seen/novel": lambda tmp, env: (lambda: class_groups(["liver"], BOTH), "checkpoint classes"),
    "transfer head rows": lambda tmp, env: (
        lambda: match_head_rows(LABELS, {"background": 0, "liver": 1}), "checkpoint labels"),
}


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_one_collision_is_one_error_everywhere(entry_point, tmp_path, nnunet_env):
    call, source = ENTRY_POINTS[entry_point](tmp_path, nnunet_env)
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert message.startswith(f"{source}: "), message
    assert all(name in message for name in BOTH) and "are the same class 'postcava'" in message, message



def test_a_case_with_both_masks_is_skipped_and_reported(tmp_path):
    conversion = Conversion([], label_dict(ABDOMENATLAS_1_1))
    masks = _masks(tmp_path / "case")
    (tmp_path / "case" / "ct.nii.gz").touch()
    add_case_folder(conversion, tmp_path / "case", list(ABDOMENATLAS_1_1))
    [problem] = [p for case in conversion.skipped for p in case.problems]
    assert not conversion.jobs and problem.fatal and problem.file == str(masks)
    assert problem.problem == "'inferior_vena_cava.nii.gz' and 'postcava.nii.gz' are the same class 'postcava'"
