"""Validation that only judges a class on the cases that annotate it.

A class a case does not annotate is background in its label map, so nnU-Net would count
every correct prediction of it as a false positive. Here such (case, class) pairs are left
out: the online pseudo-Dice counts tp/fp/fn per case and keeps only annotated classes, and
the final ``summary.json`` reports those pairs as not annotated (all metrics NaN, listed
under ``not_annotated``) and averages each class over the cases that annotate it.

A label set (``nnunet_suprem.manifest.label_sets``) has no output channel. The online pseudo-Dice leaves its voxels
out; in ``summary.json`` a case whose reference holds a set is scored on the set as a union (the set's voxels and
its classes' voxels against the prediction's voxels of the set's classes), under the set's value, and each class of
the set is scored in a case only where the case holds no voxel of a set containing it (elsewhere its labels are
fine ones); such pairs are NaN and listed under ``scored_as_set``.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np
import torch
from nnunetv2.evaluation.evaluate_predictions import compute_metrics, load_summary_json, save_summary_json
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.utilities.json_export import recursive_fix_for_json_export


def hard_counts_per_case(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tp, fp, fn [B, C-1] of the argmax prediction per case and foreground class (nnU-Net's pseudo-Dice counts).
    Voxels whose label has no output channel (nnU-Net's ignore label, label sets) count for nothing."""
    prediction = torch.zeros(logits.shape, device=logits.device, dtype=torch.float16)
    prediction.scatter_(1, logits.argmax(1, keepdim=True), 1)
    scored = target < logits.shape[1]
    mask = scored.float()
    target = torch.where(scored, target, 0)
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


def add_set_scores(summary: dict, sets: Mapping[int, Iterable[int]], reader: BaseReaderWriter,
                   ignore_label: int | None) -> dict:
    """nnU-Net's summary with every case also scored on each label set (``{set value: class values}``) it holds,
    as a union, and the set's classes left out (NaN, listed under ``scored_as_set``) in that case; NaN for a set the
    case does not hold. Reads the cases that may hold a set with nnU-Net's :func:`compute_metrics`."""
    regions = [region for value, classes in sets.items() for region in ((value,), (*sorted(classes), value))]
    for case in summary["metric_per_case"]:
        scores = compute_metrics(case["reference_file"], case["prediction_file"], reader, regions, ignore_label)
        recursive_fix_for_json_export(scores)  # plain numbers, as nnU-Net's summary holds
        scores = scores["metrics"]
        metric_names = list(next(iter(case["metrics"].values())))
        held = {value: classes for value, classes in sets.items() if scores[(value,)]["n_ref"] > 0}
        for value, classes in sets.items():
            case["metrics"][value] = scores[(*sorted(classes), value)] if value in held \
                else {metric: float("nan") for metric in metric_names}
        case["scored_as_set"] = sorted({c for classes in held.values() for c in classes if c in case["metrics"]})
        for label in case["scored_as_set"]:
            case["metrics"][label] = {metric: float("nan") for metric in case["metrics"][label]}
    summary["mean"].update({value: {} for value in sets})
    return summary


def restrict_summary_file(path: str, annotated_labels: Mapping[str, set[int]], file_ending: str,
                          sets: Mapping[int, Iterable[int]] | None = None, reader: BaseReaderWriter | None = None,
                          ignore_label: int | None = None) -> dict:
    """Rewrite an nnU-Net ``summary.json`` in place with :func:`add_set_scores` (when there are ``sets``, read with
    ``reader``), then :func:`restrict_summary_to_annotated` (``annotated_labels`` holds the sets' values too)."""
    summary = load_summary_json(path)
    if sets:
        summary = add_set_scores(summary, sets, reader, ignore_label)
    summary = restrict_summary_to_annotated(summary, annotated_labels, file_ending)
    save_summary_json(summary, path)
    return summary


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
