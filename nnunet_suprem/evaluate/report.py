"""Turn per-case results into the outputs: statistics, ``summary.json``, CSV tables, a box plot and a printed table."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_suprem.evaluate.labels import ClassMatching
from nnunet_suprem.evaluate.stats import CONFIDENCE, PairedTest, Summary, paired_test, summarize
from nnunet_suprem.fileio import atomic_path

Statistics = dict[str, dict[str, Summary]]  # class -> metric -> summary
Tests = dict[str, dict[str, PairedTest]]  # class -> metric -> paired test


def metric_names(results: Sequence[dict]) -> list[str]:
    """The metrics computed (``Dice``, and ``NSD`` unless it was skipped)."""
    first = next(iter(results[0]["metrics"].values()))
    return list(first)


def values(results: Sequence[dict], name: str, metric: str) -> list[float]:
    """One class's metric over the cases, in case order (NaN where not scored)."""
    return [case["metrics"][name][metric] for case in results]


def class_statistics(results: Sequence[dict], classes: Sequence[str]) -> Statistics:
    """:class:`Summary` of every metric of every class over the cases."""
    return {name: {m: summarize(values(results, name, m)) for m in metric_names(results)} for name in classes}


def paired_tests(results_a: Sequence[dict], results_b: Sequence[dict], classes: Sequence[str]) -> Tests:
    """Per class and metric, a paired test of B against A over the cases both evaluated."""
    b_by_case = {case["case"]: case for case in results_b}
    common = [case for case in results_a if case["case"] in b_by_case]
    paired_b = [b_by_case[case["case"]] for case in common]
    metrics = [m for m in metric_names(results_a) if m in metric_names(results_b)]
    return {name: {m: paired_test(values(common, name, m), values(paired_b, name, m)) for m in metrics}
            for name in classes}


def _nanmean(numbers) -> float:
    numbers = np.asarray(list(numbers), dtype=float)
    return float(np.nanmean(numbers)) if np.isfinite(numbers).any() else float("nan")


def build_summary(results: Sequence[dict], statistics: Statistics, matching: ClassMatching, *,
                  prediction_folder: str, reference_folder: str, tolerance: float | None,
                  unreferenced: Sequence[str], comparison: dict | None = None) -> dict:
    """``summary.json`` in nnU-Net's layout (``metric_per_case``, ``mean``, ``foreground_mean``) keyed by class name,
    plus s.d./CI per class, the class pairing, what was skipped and the optional comparison."""
    metrics = metric_names(results)
    mean = {name: {m: s.mean for m, s in by_metric.items()} for name, by_metric in statistics.items()}
    return {
        "metric_per_case": [{k: v for k, v in case.items() if k != "status"} for case in results],
        "mean": mean,
        "foreground_mean": {m: _nanmean(mean[name][m] for name in mean) for m in metrics},
        "statistics": {name: {m: s.to_json() for m, s in by_metric.items()} for name, by_metric in statistics.items()},
        "confidence": CONFIDENCE,
        "classes": {reference: prediction for reference, prediction in matching.pairs},
        "skipped": {"prediction_only": list(matching.prediction_only),
                    "reference_only": list(matching.reference_only),
                    "predictions_without_ground_truth": list(unreferenced)},
        "nsd_tolerance_mm": tolerance,
        "prediction_folder": prediction_folder,
        "reference_folder": reference_folder,
        **({"comparison": comparison} if comparison is not None else {}),
    }


def comparison_json(folder: str, statistics: Statistics, tests: Tests) -> dict:
    """``summary.json`` entry of a compared folder B: its means and the paired tests."""
    return {"prediction_folder": folder,
            "mean": {name: {m: s.mean for m, s in by_metric.items()} for name, by_metric in statistics.items()},
            "paired_tests": {name: {m: t.to_json() for m, t in by_metric.items()} for name, by_metric in tests.items()},
            "test": "two-sided Wilcoxon signed-rank, B - A, over cases where both are scored"}


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Write a CSV table atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def write_per_case_csv(path: str | Path, results: Sequence[dict], matching: ClassMatching) -> None:
    """One row per (case, class): the metrics and why a value is NaN (``status``)."""
    metrics = metric_names(results)
    rows = [[case["case"], reference, prediction, *(case["metrics"][reference][m] for m in metrics),
             case["status"][reference], case["prediction_file"], case["reference_file"]]
            for case in results for reference, prediction in matching.pairs]
    write_csv(path, ["case", "class", "prediction_class", *metrics, "status", "prediction_file", "reference_file"], rows)


def write_per_class_csv(path: str | Path, statistics: Statistics, matching: ClassMatching,
                        other: Statistics | None = None, tests: Tests | None = None) -> None:
    """One row per class: n, mean, s.d. and CI per metric; with a comparison B's mean and the paired test."""
    metrics = list(next(iter(statistics.values())))
    header = ["class", "prediction_class"]
    for m in metrics:
        header += [f"{m}_n", f"{m}_mean", f"{m}_sd", f"{m}_ci_low", f"{m}_ci_high"]
        if tests is not None:
            header += [f"{m}_mean_B", f"{m}_n_paired", f"{m}_difference_B_minus_A", f"{m}_p"]
    rows = []
    for reference, prediction in matching.pairs:
        row = [reference, prediction]
        for m in metrics:
            s = statistics[reference][m]
            row += [s.n, s.mean, s.sd, s.ci_low, s.ci_high]
            if tests is not None:
                t = tests[reference][m]
                row += [other[reference][m].mean, t.n, t.mean_difference, t.p_value]
        rows.append(row)
    write_csv(path, header, rows)


def write_boxplot(path: str | Path, results: Mapping[str, Sequence[dict]], classes: Sequence[str]) -> None:
    """Box plot of per-case Dice per class; one box per prediction folder (``{label: results}``) and class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(results.items())
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) * len(groups) + 2), 4.5))
    for i, (label, group) in enumerate(groups):
        data = [[v for v in values(group, name, "Dice") if np.isfinite(v)] for name in classes]
        positions = np.arange(len(classes)) + (i - (len(groups) - 1) / 2) * width
        boxes = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, showmeans=True)
        for box in boxes["boxes"]:
            box.set_facecolor(f"C{i}")
            box.set_alpha(0.6)
        boxes["boxes"][0].set_label(label)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    if len(groups) > 1:
        ax.legend()
    ax.set_title(f"Dice per class ({len(next(iter(results.values())))} cases)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _cell(s: Summary) -> str:
    if s.n == 0:
        return "-"
    return f"{s.mean:.3f} ± {s.sd:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]"


def format_table(statistics: Statistics, matching: ClassMatching, foreground_mean: Mapping[str, float],
                 other: Statistics | None = None, tests: Tests | None = None) -> str:
    """The per-class table printed to stdout (mean ± s.d. [95% CI]; with a comparison B's mean and p)."""
    metrics = list(next(iter(statistics.values())))
    header = ["class", "n", *(f"{m} mean ± sd [{CONFIDENCE:.0%} CI]" for m in metrics)]
    if tests is not None:
        header += [x for m in metrics for x in (f"{m} B", f"p {m}")]
    rows = []
    sets = {s.name for s in matching.sets}
    for reference, prediction in matching.pairs:
        name = (f"{reference} (set: {prediction})" if reference in sets else
                reference if reference == prediction else f"{reference} (pred. {prediction})")
        row = [name, str(max(statistics[reference][m].n for m in metrics)),
               *(_cell(statistics[reference][m]) for m in metrics)]
        if tests is not None:
            row += [x for m in metrics
                    for x in (f"{other[reference][m].mean:.3f}", f"{tests[reference][m].p_value:.3g}")]
        rows.append(row)
    rows.append(["mean of classes", "", *(f"{foreground_mean[m]:.3f}" for m in metrics)]
                + (["", ""] * len(metrics) if tests is not None else []))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])
