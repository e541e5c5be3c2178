"""The few-shot study's results: the long table, the summary with confidence intervals, and the figure.

Pure functions on rows (dicts with :data:`LONG_COLUMNS`), so they are tested without nnU-Net.

The unit is one test case scored by one model: a (draw, test case) pair at a given N and arm. A class group's
value for a unit is the mean over the group's classes scored in that case (NaN classes, absent from prediction
and ground truth, are left out). Per group, N and arm the summary gives the mean over the units and a 95 %
percentile bootstrap CI that resamples draws and test cases independently (crossed: both vary); the paired
difference pre-trained - scratch is taken per unit (same training cases, same test case), then summarised alike.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Collection, Iterable, Mapping, Sequence

import numpy as np

from nnunet_suprem.evaluate.report import write_csv
from nnunet_suprem.evaluate.stats import CONFIDENCE, crossed_bootstrap_ci
from nnunet_suprem.fileio import atomic_path
from nnunet_suprem.taxonomy import match_classes

ARMS = ("pretrained", "scratch")
DIFFERENCE = "pretrained-scratch"
METRICS = ("Dice", "NSD")
SEEN, NOVEL, UNKNOWN, ALL = "seen", "novel", "unknown", "all"
LONG_COLUMNS = ("arm", "N", "draw", "case", "class", "group", "Dice", "NSD")
SUMMARY_COLUMNS = ("metric", "N", "group", "class", "arm", "draws", "cases", "n", "mean", "ci_low", "ci_high")
NAN = float("nan")


def class_groups(classes: Iterable[str], known: Collection[str] | None) -> dict[str, str]:
    """``seen`` for each class whose canonical name (synonyms included) is one of the checkpoint's ``known``
    classes, else ``novel``; ``unknown`` for every class when the checkpoint records no class names (None).
    Either list naming one class twice is a ValueError (:func:`nnunet_suprem.taxonomy.resolve_classes`)."""
    if known is None:
        return {name: UNKNOWN for name in classes}
    matches = match_classes(classes, sorted(known), names_source="scored classes", targets_source="checkpoint classes")
    return {name: NOVEL if match is None else SEEN for name, match in matches.items()}


def evaluation_rows(summary: Mapping, arm: str, n: int, draw: int, groups: Mapping[str, str]) -> list[dict]:
    """Rows of the long table from one ``nnunet-suprem evaluate`` summary.json (its ``metric_per_case``);
    ``groups``: the group of every class scored."""
    rows = []
    for case in summary["metric_per_case"]:
        for name, scores in case["metrics"].items():
            rows.append({"arm": arm, "N": n, "draw": draw, "case": case["case"], "class": name,
                         "group": groups[name], "Dice": scores["Dice"], "NSD": scores.get("NSD", NAN)})
    return rows


def write_long_table(path: str | Path, rows: Sequence[Mapping]) -> None:
    """``fewshot.csv``: one row per arm, N, draw, test case and class."""
    write_csv(path, LONG_COLUMNS, [[row[c] for c in LONG_COLUMNS] for row in rows])


def unit_table(values: Mapping[tuple, float], arm: str, n: int, classes: Sequence[str], draws: Sequence[int],
               cases: Sequence[str]) -> np.ndarray:
    """draws x cases table of the mean over ``classes`` per unit (NaN where no class is scored)."""
    cube = np.array([[[values.get((arm, n, d, c, name), NAN) for name in classes] for c in cases] for d in draws],
                    dtype=float).reshape(len(draws), len(cases), len(classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a unit with no scored class is NaN
        return np.nanmean(cube, axis=2)


def summarize_study(rows: Sequence[Mapping]) -> list[dict]:
    """Summary rows (:data:`SUMMARY_COLUMNS`): per metric, N, class (``class`` set) and group mean (``class``
    empty; groups seen/novel/unknown as present, and all), each arm and their paired difference."""
    sizes = sorted({row["N"] for row in rows})
    draws = sorted({row["draw"] for row in rows})
    cases = sorted({row["case"] for row in rows})
    groups = {row["class"]: row["group"] for row in rows}
    classes = list(groups)
    selections = [(groups[name], name, [name]) for name in classes]
    selections += [(g, "", [c for c in classes if groups[c] == g]) for g in (SEEN, NOVEL, UNKNOWN)
                   if g in groups.values()]
    selections.append((ALL, "", classes))
    summary = []
    for metric in METRICS:
        values = {(r["arm"], r["N"], r["draw"], r["case"], r["class"]): float(r[metric]) for r in rows}
        if not np.isfinite(list(values.values())).any():
            continue  # not computed (evaluate --no-nsd)
        for n in sizes:
            for group, name, members in selections:
                tables = {arm: unit_table(values, arm, n, members, draws, cases) for arm in ARMS}
                tables[DIFFERENCE] = tables["pretrained"] - tables["scratch"]
                for arm, table in tables.items():
                    scored = np.isfinite(table)
                    low, high = crossed_bootstrap_ci(table)
                    summary.append({"metric": metric, "N": n, "group": group, "class": name, "arm": arm,
                                    "draws": int(scored.any(axis=1).sum()), "cases": int(scored.any(axis=0).sum()),
                                    "n": int(scored.sum()),
                                    "mean": float(table[scored].mean()) if scored.any() else NAN,
                                    "ci_low": low, "ci_high": high})
    return summary


def write_summary_csv(path: str | Path, summary: Sequence[Mapping]) -> None:
    write_csv(path, SUMMARY_COLUMNS, [[row[c] for c in SUMMARY_COLUMNS] for row in summary])


def _cell(row: Mapping) -> str:
    if not np.isfinite(row["mean"]):
        return "n/a"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def summary_markdown(summary: Sequence[Mapping], title: str) -> str:
    """``summary.md``: per metric a table of N x class (then the group means) with both arms and the difference."""
    by_key = {(r["metric"], r["N"], r["group"], r["class"], r["arm"]): r for r in summary}
    lines = [title, ""]
    for metric in dict.fromkeys(r["metric"] for r in summary):
        lines += [f"{metric}, mean [{CONFIDENCE:.0%} CI]:", "",
                  "| N | class | in pre-training | pre-trained | scratch | pre-trained - scratch |",
                  "| ---: | --- | --- | ---: | ---: | ---: |"]
        for (m, n, group, name, arm), row in by_key.items():
            if m != metric or arm != ARMS[0]:
                continue
            label, flag = (name, group) if name else (f"mean, {group}", "")
            cells = [_cell(by_key[(m, n, group, name, a)]) for a in (*ARMS, DIFFERENCE)]
            lines.append(f"| {n} | {label} | {flag} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_study(summary: Sequence[Mapping], path: str | Path, title: str) -> None:
    """Dice against N per class group (one panel each), both arms, the bands their 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary if r["metric"] == "Dice" and not r["class"] and r["arm"] in ARMS]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    with plt.style.context("default"):  # nnU-Net's progress plots change seaborn's global style
        fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.6), squeeze=False, sharey=True)
        for ax, group in zip(axes[0], groups):
            for arm in ARMS:
                points = sorted((r["N"], r["mean"], r["ci_low"], r["ci_high"]) for r in rows
                                if r["group"] == group and r["arm"] == arm)
                n, mean, low, high = (np.array(v, dtype=float) for v in zip(*points))
                ax.errorbar(n, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=arm)
                ax.fill_between(n, low, high, alpha=0.2)
            ax.set(title=f"{group} classes", xlabel="training cases N", xticks=n, ylim=(0, 1))
        save_group_figure(fig, axes, f"test Dice (mean, {CONFIDENCE:.0%} CI)", title, path)


def save_group_figure(fig, axes, ylabel: str, title: str, path: str | Path) -> None:
    """Label, title and write (atomically, PNG) a figure of one panel per class group, then close it."""
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend()
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
