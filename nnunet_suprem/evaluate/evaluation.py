"""Evaluate a prediction folder against a ground-truth folder, case by case (in parallel with ``-np``).

Each case is read once (a label map: one file; mask folders: one file per class); every class
is then scored inside the bounding box of its prediction and reference (``find_objects``), not
on the whole volume. Per (case, class) the result is Dice and NSD, or NaN with a status:
``not_annotated`` (the ground truth does not annotate the class in that case) or ``both_empty``
(absent from prediction and reference: nnU-Net's NaN convention; NSD likewise).

A ground-truth label set (``labels.with_label_sets``) is scored in the cases that hold its value, as the union of
its voxels and its classes' voxels against the union of the predictions of its classes; there its classes are not
scored one by one (status ``scored_as_set``: the case does not say which side a set voxel is). In the other cases
the set has status ``no_set_voxels`` and its classes are scored as usual.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

from nnunet_suprem.evaluate.folders import CaseSource, Segmentation, SegmentationFolder, UnionRegion
from nnunet_suprem.evaluate.labels import ClassMatching, LabelSetPair
from nnunet_suprem.evaluate.metrics import dice, surface_dice, union_box
from nnunet_suprem.fileio import check_same_grid
from nnunet_suprem.jobs import map_with_progress

DICE, NSD = "Dice", "NSD"
NAN = float("nan")


def no_score(tolerance: float | None) -> dict[str, float]:
    """NaN for every metric computed (NSD only with a tolerance)."""
    return {DICE: NAN, NSD: NAN} if tolerance is not None else {DICE: NAN}


@dataclass(frozen=True)
class CaseJob:
    """One case to score: its two sources, the (reference class, prediction class) pairs, what is annotated and the
    label sets among the pairs."""
    case: str
    prediction: CaseSource
    reference: CaseSource
    pairs: tuple[tuple[str, str], ...]
    annotated: frozenset[str]
    sets: tuple[LabelSetPair, ...] = ()


def score_class(prediction: Segmentation, reference: Segmentation, prediction_class: str, reference_class: str,
                tolerance: float | None) -> dict[str, float]:
    """Dice (and NSD at ``tolerance`` mm unless None) of one class, on the box holding both masks."""
    pred, ref = prediction.regions[prediction_class], reference.regions[reference_class]
    box = union_box(pred.box, ref.box)
    if box is None:
        return no_score(tolerance)
    pred_mask, ref_mask = pred.mask(box), ref.mask(box)
    if reference.ignore is not None:  # as nnU-Net: ignored voxels count for nothing
        pred_mask &= ~reference.ignore.mask(box)
    scores = {DICE: dice(pred_mask, ref_mask)}
    if tolerance is not None:
        scores[NSD] = surface_dice(pred_mask, ref_mask, reference.spacing, tolerance)
    return scores


def evaluate_case(job: CaseJob, tolerance: float | None) -> dict:
    """nnU-Net ``metric_per_case`` entry of one case, plus ``case``, ``status`` and ``not_annotated``."""
    annotated = job.annotated | {s.name for s in job.sets if job.annotated.issuperset(s.reference_classes)}
    sets = {s.name: s for s in job.sets}
    reference_classes = list(dict.fromkeys(c for r, _ in job.pairs if r in annotated
                                           for c in ((r, *sets[r].reference_classes) if r in sets else (r,))))
    reference = job.reference.read(reference_classes) if reference_classes else None
    prediction_classes = list(dict.fromkeys(c for r, p in job.pairs
                                            for c in (sets[r].prediction_classes if r in sets else (p,))))
    prediction = job.prediction.read(prediction_classes)
    missing = [p for p in prediction_classes if p not in prediction.regions]
    if missing:
        raise ValueError(f"{job.prediction.path}: no prediction of {missing}")
    if reference is not None:
        check_same_grid(prediction.grid, prediction.grid_file, reference.grid, reference.grid_file)
    held = _add_set_regions(prediction, reference, [s for s in job.sets if s.name in annotated])
    metrics, status = {}, {}
    for reference_class, prediction_class in job.pairs:
        status[reference_class] = ("not_annotated" if reference_class not in annotated else
                                   "no_set_voxels" if reference_class in sets and reference_class not in held else
                                   "scored_as_set" if any(reference_class in sets[h].reference_classes for h in held)
                                   else None)
        if status[reference_class] is not None:
            metrics[reference_class] = no_score(tolerance)
            continue
        metrics[reference_class] = score_class(prediction, reference, prediction_class, reference_class, tolerance)
        status[reference_class] = "both_empty" if math.isnan(metrics[reference_class][DICE]) else "ok"
    return {"case": job.case, "prediction_file": str(job.prediction.path), "reference_file": str(job.reference.path),
            "metrics": metrics, "status": status,
            "not_annotated": [c for c, s in status.items() if s == "not_annotated"]}


def _add_set_regions(prediction: Segmentation, reference: Segmentation | None, sets: list[LabelSetPair]) -> set[str]:
    """Add each set's union regions to both segmentations (under its pair's names); the sets the reference holds."""
    held = set()
    for s in sets:
        prediction.regions[s.prediction_name] = UnionRegion(tuple(prediction.regions[p] for p in s.prediction_classes))
        if reference.regions[s.name].box is not None:
            held.add(s.name)
        reference.regions[s.name] = UnionRegion(tuple(reference.regions[c] for c in (s.name, *s.reference_classes)))
    return held


def case_jobs(prediction: SegmentationFolder, reference: SegmentationFolder, matching: ClassMatching,
              chill: bool = False) -> tuple[list[CaseJob], list[str]]:
    """Jobs for the cases both folders hold, and the predicted cases without ground truth.

    A ground-truth case without prediction is an error unless ``chill`` (then it is left out).
    """
    unpredicted = sorted(set(reference.cases) - set(prediction.cases))
    if unpredicted and not chill:
        raise ValueError(f"{prediction.path} has no prediction for {len(unpredicted)} ground-truth case(s) of "
                         f"{reference.path}: {unpredicted[:10]}; pass --chill to evaluate only the predicted ones")
    common = sorted(set(reference.cases) & set(prediction.cases))
    if not common:
        raise ValueError(f"{prediction.path} and {reference.path} have no case in common "
                         f"(e.g. {sorted(prediction.cases)[:3]} vs {sorted(reference.cases)[:3]})")
    jobs = [CaseJob(case, prediction.cases[case], reference.cases[case], matching.pairs,
                    reference.annotated_classes(case), matching.sets) for case in common]
    return jobs, sorted(set(prediction.cases) - set(reference.cases))


def evaluate_folders(prediction: SegmentationFolder, reference: SegmentationFolder, matching: ClassMatching,
                     tolerance: float | None, num_processes: int = 1, chill: bool = False) -> tuple[list[dict], list[str]]:
    """Per-case results (see :func:`evaluate_case`) in case order, and the predicted cases without ground truth."""
    jobs, unreferenced = case_jobs(prediction, reference, matching, chill)
    results = map_with_progress(functools.partial(evaluate_case, tolerance=tolerance), jobs, num_processes,
                                desc=f"evaluate {Path(prediction.path).name}")
    return results, unreferenced
