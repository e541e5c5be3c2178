"""``nnunet-suprem evaluate``: per-class Dice and NSD of a prediction folder against external ground truth."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_suprem.evaluate.evaluation import evaluate_folders
from nnunet_suprem.evaluate.folders import SegmentationFolder, open_folder
from nnunet_suprem.evaluate.labels import ClassMatching, load_mapping, mapping_for, match_label_sets, with_label_sets
from nnunet_suprem.evaluate.report import (build_summary, class_statistics, comparison_json, format_table,
                                           paired_tests, write_boxplot, write_per_case_csv, write_per_class_csv)
from nnunet_suprem.fileio import write_json
from nnunet_suprem.jobs import default_num_processes
from nnunet_suprem.taxonomy import TAXONOMIES

DEFAULT_TOLERANCE_MM = 1.0  # SuPreM's direct-inference evaluation uses NSD at 1 mm
OUTPUTS = ("per_case.csv", "per_class.csv", "summary.json", "dice_boxplot.png")
log = logging.getLogger(__name__)


def evaluate(prediction_folder: str | Path, reference_folder: str | Path, out_dir: str | Path, *,
             prediction_labels: Sequence[str] | None = None, reference_labels: Sequence[str] | None = None,
             mapping_file: str | Path | None = None, classes: Sequence[str] | None = None,
             tolerance: float | None = DEFAULT_TOLERANCE_MM, compare_folder: str | Path | None = None,
             compare_labels: Sequence[str] | None = None, num_processes: int = 1, chill: bool = False) -> dict:
    """Evaluate, write :data:`OUTPUTS` into ``out_dir``, log the per-class table; returns the summary.

    ``tolerance`` None computes Dice only. With ``compare_folder`` (B) each class also gets B's
    statistics and a paired Wilcoxon test of B against the predictions (A). ``--map`` entries
    apply to both prediction folders; each must name a class of A.
    """
    if tolerance is not None and not tolerance >= 0:
        raise ValueError(f"--tolerance must be >= 0 mm, got {tolerance}")
    prediction = open_folder(prediction_folder, prediction_labels, "--pred-labels")
    reference = open_folder(reference_folder, reference_labels, "--gt-labels")
    mapping = load_mapping(mapping_file) if mapping_file else None
    matching = with_label_sets(match_label_sets(prediction.classes, reference.classes, mapping, classes,
                                                sources=(_labels_source(prediction), _labels_source(reference))),
                               reference.sets)
    for message in matching.messages():
        log.info(message)
    results, unreferenced = evaluate_folders(prediction, reference, matching, tolerance, num_processes, chill)
    if unreferenced:
        log.info(f"not evaluated, no ground truth: {len(unreferenced)} predicted case(s) {unreferenced[:10]}")
    names = [r for r, _ in matching.pairs]
    statistics = class_statistics(results, names)

    other = tests = comparison = None
    label_a = Path(prediction_folder).resolve().name
    plotted = {label_a: results}
    if compare_folder is not None:
        b_results = _evaluate_second_folder(compare_folder, compare_labels, reference, mapping, names, tolerance,
                                            num_processes, chill)
        other, tests = class_statistics(b_results, names), paired_tests(results, b_results, names)
        comparison = comparison_json(str(compare_folder), other, tests)
        plotted = {f"A: {label_a}": results, f"B: {Path(compare_folder).resolve().name}": b_results}

    summary = build_summary(results, statistics, matching, prediction_folder=str(prediction_folder),
                            reference_folder=str(reference_folder), tolerance=tolerance,
                            unreferenced=unreferenced, comparison=comparison)
    out_dir = Path(out_dir)
    write_per_case_csv(out_dir / "per_case.csv", results, matching)
    write_per_class_csv(out_dir / "per_class.csv", statistics, matching, other, tests)
    write_json(summary, out_dir / "summary.json")
    write_boxplot(out_dir / "dice_boxplot.png", plotted, names)
    log.info(format_table(statistics, matching, summary["foreground_mean"], other, tests))
    log.info(f"{len(results)} cases; wrote {', '.join(OUTPUTS)} to {out_dir}")
    return summary


def _evaluate_second_folder(folder: str | Path, labels: Sequence[str] | None, reference: SegmentationFolder,
                            mapping: Mapping[str, str | None] | None, names: Sequence[str], tolerance: float | None,
                            num_processes: int, chill: bool) -> list[dict]:
    """Per-case results of a second prediction folder on the same ground-truth classes ``names``."""
    second = open_folder(folder, labels, "--compare-labels")
    sources = _labels_source(second), _labels_source(reference)
    paired = with_label_sets(match_label_sets(second.classes, reference.classes,
                                              mapping and mapping_for(mapping, second.classes, sources[0]),
                                              sources=sources), reference.sets)
    pairs = dict(paired.pairs)
    missing = [name for name in names if name not in pairs]
    if missing:
        raise ValueError(f"{folder} has no prediction of the ground-truth classes {missing}")
    matching = ClassMatching(tuple((name, pairs[name]) for name in names), (), (),
                             tuple(s for s in paired.sets if s.name in names))
    return evaluate_folders(second, reference, matching, tolerance, num_processes, chill)[0]


def _labels_source(folder: SegmentationFolder) -> str:
    return f"{folder.path} classes"


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="per-class Dice and NSD of predictions against (external) ground truth",
        description="Evaluate a prediction folder (e.g. nnUNetv2_predict output) against a ground-truth folder whose "
                    "label names and values may differ: classes are paired by taxonomy name and synonyms "
                    "(postcava = inferior_vena_cava, Right Kidney = kidney_right), only classes of both sets are "
                    "scored, and partially annotated ground truth only where annotated. Both folders may hold "
                    "label maps (<case>.nii.gz) or per-organ mask folders (<case>/segmentations/<class>.nii.gz, "
                    "AbdomenAtlas/TotalSegmentator layout; a missing mask = not annotated). Writes per_case.csv, "
                    "per_class.csv, summary.json (nnU-Net style) and dice_boxplot.png, and prints mean ± s.d. with a "
                    "95% bootstrap CI per class. A class absent from both prediction and ground truth of a case has "
                    "no score (NaN, as in nnU-Net).")
    p.add_argument("pred_folder", help="predictions: label maps or per-organ mask folders")
    p.add_argument("gt_folder", help="ground truth: label maps or per-organ mask folders")
    labels_help = ("classes of {} label maps: a dataset.json, a taxonomy ({}), class names in label-value order or "
                   "NAME=VALUE pairs, plus label sets NAME=VALUE=CLASS+CLASS (default: dataset.json in the folder or "
                   "beside it)")
    taxonomies = ", ".join(TAXONOMIES)
    p.add_argument("--pred-labels", nargs="+", metavar="LABELS", help=labels_help.format("the predicted", taxonomies))
    p.add_argument("--gt-labels", nargs="+", metavar="LABELS", help=labels_help.format("the ground-truth", taxonomies))
    p.add_argument("--map", dest="mapping", metavar="FILE",
                   help='JSON {"prediction class": "ground-truth class" or null}: explicit pairs before name matching')
    p.add_argument("--classes", nargs="+", help="evaluate only these classes (names or synonyms)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM,
                   help=f"NSD tolerance in mm (default: {DEFAULT_TOLERANCE_MM})")
    p.add_argument("--no-nsd", action="store_true", help="compute Dice only (faster)")
    p.add_argument("--compare", metavar="PRED_FOLDER_B",
                   help="a second prediction folder: adds its statistics and a paired Wilcoxon test per class")
    p.add_argument("--compare-labels", nargs="+", metavar="LABELS", help="classes of PRED_FOLDER_B, as --pred-labels")
    p.add_argument("--chill", action="store_true", help="evaluate only the ground-truth cases that have a prediction")
    p.add_argument("-np", dest="num_processes", type=int, default=default_num_processes(),
                   help="processes (default: nnUNet_def_n_proc or 8)")
    p.add_argument("-o", dest="out_dir", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    evaluate(args.pred_folder, args.gt_folder, args.out_dir, prediction_labels=args.pred_labels,
             reference_labels=args.gt_labels, mapping_file=args.mapping, classes=args.classes,
             tolerance=None if args.no_nsd else args.tolerance, compare_folder=args.compare,
             compare_labels=args.compare_labels, num_processes=args.num_processes, chill=args.chill)
