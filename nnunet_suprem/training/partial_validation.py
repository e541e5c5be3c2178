"""Validation that only judges a class on the cases that annotate it.

A class a case does not annotate is background in its label map, so nnU-Net would count
every correct prediction of it as a false positive. Here such (case, class) pairs are left
out: the online pseudo-Dice counts tp/fp/fn per case and keeps only annotated classes, and
the final ``summary.json`` reports those pairs as not annotated (all metrics NaN, listed
under ``not_annotated``) and averages each class over the cases that annotate it.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch
from nnunetv2.evaluation.evaluate_predictions import load_summary_json, save_summary_json
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn


def hard_counts_per_case(logits: torch.Tensor, target: torch.Tensor, ignore_label: int | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tp, fp, fn [B, C-1] of the argmax prediction per case and foreground class (nnU-Net's pseudo-Dice counts)."""
    prediction = torch.zeros(logits.shape, device=logits.device, dtype=torch.float16)
    prediction.scatter_(1, logits.argmax(1, keepdim=True), 1)
    mask = None
    if ignore_label is not None:
        mask = (target != ignore_label).float()
        target = torch.where(target == ignore_label, 0, target)
    tp, fp, fn, _ = get_tp_fp_fn_tn(prediction, target, axes=list(range(2, logits.ndim)), mask=mask)
    return tp[:, 1:], fp[:, 1:], fn[:, 1:]


def restrict_summary_to_annotated(summary: dict, annotated_labels: Mapping[str, set[int]], file_ending: str) -> dict:
    """nnU-Net's summary with unannotated (case, label) pairs set to NaN and the means recomputed.

    ``annotated_labels`` maps case identifiers to the label values they annotate; cases not
    listed annotate every label. The format stays nnU-Net's, so its tools keep working.
    """
    for case in summary["metric_per_case"]:
        identifier = os.path.basename(case["reference_file"])[: -len(file_ending)]
        annotated = annotated_labels.get(identifier)
        if annotated is None:
            continue
        case["not_annotated"] = sorted(label for label in case["metrics"] if label not in annotated)
        for label in case["not_annotated"]:
            case["metrics"][label] = {metric: float("nan") for metric in case["metrics"][label]}
    labels = list(summary["mean"])
    metrics = list(summary["foreground_mean"])
    summary["mean"] = {label: {m: _nanmean([c["metrics"][label][m] for c in summary["metric_per_case"]])
                               for m in metrics} for label in labels}
    summary["foreground_mean"] = {m: _nanmean([summary["mean"][label][m] for label in labels if label != 0])
                                  for m in metrics}
    return summary


def restrict_summary_file(path: str, annotated_labels: Mapping[str, set[int]], file_ending: str) -> dict:
    """Rewrite an nnU-Net ``summary.json`` in place with :func:`restrict_summary_to_annotated`."""
    summary = restrict_summary_to_annotated(load_summary_json(path), annotated_labels, file_ending)
    save_summary_json(summary, path)
    return summary


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
