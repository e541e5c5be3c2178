"""Partial-label-aware validation counts and summary.json, against nnU-Net's own metric code."""
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

from nnunet_suprem.training.partial_validation import hard_counts_per_case, restrict_summary_file


def test_per_case_counts_sum_to_nnunets_batch_counts():
    """Counts equal nnU-Net's with its ignore label (4) masked; a label set's voxels (value 5) count for nothing
    alike (nnU-Net's own counts would fail on a value without output channel)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, 6, 6)
    target = torch.randint(0, 6, (3, 1, 6, 6, 6)).float()  # 4 = ignore label, 5 = a set of classes 1 and 2
    tp, fp, fn = hard_counts_per_case(logits, target)
    assert tp.shape == (3, 3)
    onehot = torch.zeros(logits.shape).scatter_(1, logits.argmax(1, keepdim=True), 1)
    mask = (target < 4).float()
    ref = get_tp_fp_fn_tn(onehot, torch.where(target < 4, target, 0), axes=[0, 2, 3, 4], mask=mask)
    for ours, theirs in zip((tp, fp, fn), ref):
        assert torch.equal(ours.sum(0), theirs[1:])


def _write(array, path):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


@pytest.mark.e2e
def test_summary_judges_classes_only_where_annotated(tmp_path):
    """Case a annotates label 1 only; it also shows organ 2, predicted correctly but labelled 0 (not annotated)."""
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    organ1 = np.zeros((4, 8, 8))
    organ1[1:3, 1:4, 1:4] = 1
    organ2 = np.zeros((4, 8, 8))
    organ2[1:3, 5:7, 5:7] = 2
    _write(organ1, tmp_path / "gt/a.nii.gz")
    _write(organ1 + organ2, tmp_path / "pred/a.nii.gz")
    _write(organ1 + organ2, tmp_path / "gt/b.nii.gz")
    pred_b = organ1 + organ2
    pred_b[1, 5, 5] = 0  # one organ-2 voxel missed in b
    _write(pred_b, tmp_path / "pred/b.nii.gz")
    summary_file = str(tmp_path / "summary.json")
    naive = compute_metrics_on_folder(str(tmp_path / "gt"), str(tmp_path / "pred"), summary_file, SimpleITKIO(),
                                      ".nii.gz", [1, 2], num_processes=1)
    assert naive["mean"][2]["FP"] == 4  # nnU-Net counts case a's correct organ 2 as false positives

    summary = restrict_summary_file(summary_file, {"a": {0, 1}}, ".nii.gz")
    per_case = {c["reference_file"].rsplit("/", 1)[1]: c for c in summary["metric_per_case"]}
    assert per_case["a.nii.gz"]["not_annotated"] == [2]
    assert math.isnan(per_case["a.nii.gz"]["metrics"][2]["Dice"])
    assert summary["mean"][2]["Dice"] == 2 * 7 / (2 * 7 + 1) and summary["mean"][2]["FP"] == 0
    assert summary["mean"][1]["Dice"] == 1.0
    assert summary["foreground_mean"]["Dice"] == (1.0 + 14 / 15) / 2
    reloaded = load_summary_json(summary_file)  # still nnU-Net's format
    assert reloaded["foreground_mean"]["Dice"] == summary["foreground_mean"]["Dice"]
    assert json.loads(open(summary_file).read())["mean"]["2"]["Dice"] == summary["mean"][2]["Dice"]


def test_summary_scores_a_set_as_a_union_and_its_classes_only_where_fine(tmp_path):
    """Case k labels the kidney as the set 4 = {1, 2} (KiTS: no side); case f has fine labels 1 and 2. The prediction
    splits k's kidney into sides: k scores the set 1.0 and leaves 1 and 2 out; f scores 1 and 2 (and no set)."""
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    fine = np.zeros((4, 8, 8))
    fine[1:3, 1:4, 1:4] = 1
    fine[1:3, 1:4, 5:7] = 2
    coarse = np.where(fine > 0, 4, 0)
    coarse[0, 0, 0] = 3  # an ignored voxel, predicted as 1: not counted
    prediction = fine.copy()
    prediction[0, 0, 0] = 1
    _write(coarse, tmp_path / "gt/k.nii.gz")
    _write(prediction, tmp_path / "pred/k.nii.gz")
    _write(fine, tmp_path / "gt/f.nii.gz")
    missed = fine.copy()
    missed[1, 1, 1] = 0
    _write(missed, tmp_path / "pred/f.nii.gz")
    summary_file = str(tmp_path / "summary.json")
    naive = compute_metrics_on_folder(str(tmp_path / "gt"), str(tmp_path / "pred"), summary_file, SimpleITKIO(),
                                      ".nii.gz", [1, 2], ignore_label=3, num_processes=1)
    assert naive["metric_per_case"][1]["metrics"][1]["Dice"] == 0  # nnU-Net: k's kidney is a false positive

    summary = restrict_summary_file(summary_file, {"k": {0, 1, 2, 4}}, ".nii.gz", {4: [1, 2]}, SimpleITKIO(), 3)
    per_case = {c["reference_file"].rsplit("/", 1)[1]: c for c in summary["metric_per_case"]}
    k, f = per_case["k.nii.gz"], per_case["f.nii.gz"]
    assert k["scored_as_set"] == [1, 2] and math.isnan(k["metrics"][1]["Dice"]) and math.isnan(k["metrics"][2]["Dice"])
    assert k["metrics"][4]["Dice"] == 1.0 and k["metrics"][4]["n_ref"] == 30
    assert f["scored_as_set"] == [] and math.isnan(f["metrics"][4]["Dice"])
    assert summary["mean"][1]["Dice"] == 2 * 17 / 35 and summary["mean"][2]["Dice"] == 1.0
    assert summary["mean"][4]["Dice"] == 1.0
    assert summary["foreground_mean"]["Dice"] == pytest.approx((34 / 35 + 1 + 1) / 3)
    assert load_summary_json(summary_file)["mean"][4]["Dice"] == 1.0  # nnU-Net's format, the set under its value
