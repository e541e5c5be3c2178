"""The few-shot study's results: the long table, the summary with confidence intervals, and the figure.

Pure functions on rows (dicts with :data:`LONG_COLUMNS`), so they are tested without nnU-Net. :data:`METHOD` says
how the summary is computed.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Collection, Iterable, Mapping, Sequence

import numpy as np

from nnunet_suprem.evaluate.report import write_csv
from nnunet_suprem.evaluate.stats import CONFIDENCE, TEST_CASES_ONLY, summarize_draws
from nnunet_suprem.fileio import atomic_path, check_name, check_text, read_json
from nnunet_suprem.taxonomy import match_classes

ARMS = ("pretrained", "scratch")
DIFFERENCE = "pretrained-scratch"
METRICS = ("Dice", "NSD")
SEEN, NOVEL, UNKNOWN, ALL = "seen", "novel", "unknown", "all"
LONG_COLUMNS = ("arm", "N", "draw", "case", "class", "group", "Dice", "NSD")
SUMMARY_COLUMNS = ("metric", "N", "group", "class", "arm", "draw", "draws", "cases", "n", "mean", "ci_low", "ci_high",
                   "interval")
NAN = float("nan")
LEARNED_DICE = 0.5
"""Mean test Dice from which the overview counts a class as learned by an arm."""
METHOD = (f"A (draw, test case, class) result counts in both arms only where both scored it, so that each arm's "
          f"means and their difference cover the same classes and cases. A test case's value for a class group is "
          f"the mean over the group's classes scored in it; a draw's value, the mean over its test cases; the "
          f"study's, the mean over its draws. {CONFIDENCE:.0%} CI: with 2 or more draws a Student t-interval over "
          f"the draw means (training-set and test-case variability, on this test set, which every draw shares); "
          f"with one draw, and for a single draw's value, a bootstrap over its test cases: {TEST_CASES_ONLY}. "
          f"The paired difference pre-trained - scratch is taken per draw and test case (same training cases, "
          f"same test image).")


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


def read_evaluation(path: Path) -> dict:
    """An ``nnunet-suprem evaluate`` summary.json, checked as far as the study reads it: every case of
    ``metric_per_case`` a file name, every class a name, every score a number in [0, 1] or NaN (not scored);
    ValueError naming the file otherwise."""
    summary = read_json(path)
    cases = summary.get("metric_per_case") if isinstance(summary, dict) else None
    if not isinstance(cases, list):
        raise ValueError(f"{path}: not an evaluation summary (no metric_per_case list)")
    for case in cases:
        if not (isinstance(case, dict) and isinstance(case.get("metrics"), dict)):
            raise ValueError(f"{path}: a metric_per_case entry is not a case with metrics: {str(case)[:80]}")
        check_name(case.get("case"), "case", path)
        for name, scores in case["metrics"].items():
            check_text(name, "class", path)
            if not isinstance(scores, dict) or "Dice" not in scores:
                raise ValueError(f"{path}: case {case['case']}, class {name}: no Dice")
            for metric in METRICS:
                value = scores.get(metric, NAN)
                if not _is_score(value):
                    raise ValueError(f"{path}: case {case['case']}, class {name}: {metric} {value!r} is not a "
                                     f"number in [0, 1]")
    return summary


def _is_score(value: object) -> bool:
    """A Dice or NSD as a summary records it: a number in [0, 1], or NaN (not scored)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (math.isnan(value) or 0 <= value <= 1)


def write_long_table(path: str | Path, rows: Sequence[Mapping]) -> None:
    """``fewshot.csv``: one row per arm, N, draw, test case and class."""
    write_csv(path, LONG_COLUMNS, [[row[c] for c in LONG_COLUMNS] for row in rows])


def paired_scores(values: Mapping[tuple, float], n: int, classes: Sequence[str], draws: Sequence[int],
                  cases: Sequence[str]) -> dict[str, np.ndarray]:
    """Per arm, the draws x cases x classes scores at ``n``; NaN in both arms where either did not score."""
    cubes = {arm: np.array([[[values.get((arm, n, d, c, name), NAN) for name in classes] for c in cases]
                            for d in draws], dtype=float).reshape(len(draws), len(cases), len(classes))
             for arm in ARMS}
    paired = np.logical_and.reduce([np.isfinite(cube) for cube in cubes.values()])
    return {arm: np.where(paired, cube, NAN) for arm, cube in cubes.items()}


def unit_tables(scores: Mapping[str, np.ndarray], members: Sequence[int]) -> dict[str, np.ndarray]:
    """Per arm and for the paired difference, draws x cases of the mean over the ``members`` classes (indices into
    the scores' last axis) scored in each (draw, case); NaN where none is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a unit with no scored class is NaN
        tables = {arm: np.nanmean(cube[:, :, members], axis=2) for arm, cube in scores.items()}
    return {**tables, DIFFERENCE: tables["pretrained"] - tables["scratch"]}


def summary_rows(table: np.ndarray, draws: Sequence[int], key: Mapping) -> list[dict]:
    """The summary rows of one draws x cases ``table``: over its draws (``draw`` empty), then one per draw."""
    rows = []
    for draw, part in (("", table), *((d, table[i:i + 1]) for i, d in enumerate(draws))):
        scored = np.isfinite(part)
        result = summarize_draws(part)
        rows.append({**key, "draw": draw, "draws": int(scored.any(axis=1).sum()),
                     "cases": int(scored.any(axis=0).sum()), "n": int(scored.sum()), "mean": result.mean,
                     "ci_low": result.ci_low, "ci_high": result.ci_high, "interval": result.interval})
    return rows


def summarize_study(rows: Sequence[Mapping]) -> list[dict]:
    """Summary rows (:data:`SUMMARY_COLUMNS`, computed as :data:`METHOD` says): per metric, N, class (``class``
    set) and group mean (``class`` empty; groups seen/novel/unknown as present, and all), each arm and their paired
    difference, over the draws (``draw`` empty) and per draw."""
    sizes = sorted({row["N"] for row in rows})
    draws = sorted({row["draw"] for row in rows})
    cases = sorted({row["case"] for row in rows})
    groups = {row["class"]: row["group"] for row in rows}
    classes = list(groups)
    selections = [(groups[name], name, [i]) for i, name in enumerate(classes)]
    selections += [(g, "", [i for i, c in enumerate(classes) if groups[c] == g]) for g in (SEEN, NOVEL, UNKNOWN)
                   if g in groups.values()]
    selections.append((ALL, "", list(range(len(classes)))))
    summary = []
    for metric in METRICS:
        values = {(r["arm"], r["N"], r["draw"], r["case"], r["class"]): float(r[metric]) for r in rows}
        if not np.isfinite(list(values.values())).any():
            continue  # not computed (evaluate --no-nsd)
        for n in sizes:
            scores = paired_scores(values, n, classes, draws, cases)
            for group, name, members in selections:
                for arm, table in unit_tables(scores, members).items():
                    summary += summary_rows(table, draws, {"metric": metric, "N": n, "group": group, "class": name,
                                                           "arm": arm})
    return summary


def unpaired_results(rows: Sequence[Mapping]) -> dict[tuple[str, int, str], Counter]:
    """(metric, N, class) -> per arm, how many of its (draw, test case) results the other arm did not score, which
    the summary leaves out of both arms (a class one arm's evaluation lacks, or absent from the ground truth and
    predicted by one arm only)."""
    scored = {(metric, r["N"], r["class"], r["draw"], r["case"], r["arm"]): np.isfinite(float(r[metric]))
              for r in rows for metric in METRICS}
    left_out: dict[tuple[str, int, str], Counter] = {}
    for (metric, n, name, draw, case, arm), finite in scored.items():
        other = ARMS[1 - ARMS.index(arm)]
        if finite and not scored.get((metric, n, name, draw, case, other), False):
            left_out.setdefault((metric, n, name), Counter())[arm] += 1
    return left_out


def unpaired_note(rows: Sequence[Mapping]) -> str:
    """One line per (metric, N, class) with results that one arm scored and the other did not (empty: none)."""
    return "\n".join(f"- {metric}, N = {n}, {name}: "
                     + ", ".join(f"{count} result{'s' * (count > 1)} scored by {arm} only"
                                 for arm, count in sorted(counts.items()))
                     for (metric, n, name), counts in sorted(unpaired_results(rows).items()))


def write_summary_csv(path: str | Path, summary: Sequence[Mapping]) -> None:
    write_csv(path, SUMMARY_COLUMNS, [[row[c] for c in SUMMARY_COLUMNS] for row in summary])


def _cell(row: Mapping) -> str:
    if not np.isfinite(row["mean"]):
        return "n/a"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def summary_markdown(summary: Sequence[Mapping], title: str) -> str:
    """``summary.md``: per metric a table of N x class (then the group means) with both arms, the difference, the
    difference in every draw, and what the CI covers."""
    by_key = {(r["metric"], r["N"], r["group"], r["class"], r["arm"], r["draw"]): r for r in summary}
    draws = sorted({r["draw"] for r in summary if r["draw"] != ""})
    lines = [title, ""]
    for metric in dict.fromkeys(r["metric"] for r in summary):
        lines += [f"{metric}, mean [{CONFIDENCE:.0%} CI]:", "",
                  "| N | class | in pre-training | pre-trained | scratch | pre-trained - scratch | difference per draw "
                  "| CI over |",
                  "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for (m, n, group, name, arm, draw), row in by_key.items():
            if m != metric or arm != DIFFERENCE or draw != "":
                continue
            label, flag = (name, group) if name else (f"mean, {group}", "")
            cells = [_cell(by_key[(m, n, group, name, a, "")]) for a in (*ARMS, DIFFERENCE)]
            per_draw = [by_key[(m, n, group, name, arm, d)]["mean"] for d in draws]
            per_draw_cell = ", ".join(f"{v:+.3f}" if np.isfinite(v) else "n/a" for v in per_draw)
            lines.append(f"| {n} | {label} | {flag} | {' | '.join(cells)} | {per_draw_cell} | "
                         f"{row['interval'] or 'n/a'} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _learned_cell(value: float, threshold: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.3f}" + (" (not learned)" if value < threshold else "")


def learned_overview(summary: Sequence[Mapping], threshold: float = LEARNED_DICE) -> str:
    """Per N, each class's mean test Dice in both arms (over the draws; ``not learned`` below ``threshold``) and their
    difference, seen classes first, then how many classes of each group each arm learned."""
    means = {(r["N"], r["class"], r["arm"]): r["mean"] for r in summary
             if r["metric"] == "Dice" and r["class"] and r["draw"] == ""}
    groups = {r["class"]: r["group"] for r in summary if r["class"]}
    order = (SEEN, NOVEL, UNKNOWN)
    classes = sorted(groups, key=lambda name: order.index(groups[name]))
    lines = [f"Test Dice per class, mean over the draws ('not learned': below {threshold}):", "",
             "| N | class | in pre-training | pre-trained | scratch | pre-trained - scratch |",
             "| ---: | --- | --- | ---: | ---: | ---: |"]
    counts = []
    for n in sorted({r["N"] for r in summary}):
        for name in classes:
            pretrained, scratch, difference = (means.get((n, name, arm), NAN) for arm in (*ARMS, DIFFERENCE))
            lines.append(f"| {n} | {name} | {groups[name]} | {_learned_cell(pretrained, threshold)} | "
                         f"{_learned_cell(scratch, threshold)} | "
                         f"{f'{difference:+.3f}' if np.isfinite(difference) else 'n/a'} |")
        for group in order:
            members = [name for name in classes if groups[name] == group]
            if members:
                learned = {arm: sum(means.get((n, name, arm), NAN) >= threshold for name in members) for arm in ARMS}
                counts.append(f"N = {n}, {group} classes learned: "
                              + ", ".join(f"{arm} {learned[arm]} of {len(members)}" for arm in ARMS))
    return "\n".join([*lines, "", *counts])


def interval_caption(summary: Sequence[Mapping]) -> str:
    """What the CIs of the summary's rows over their draws cover, as the figure says it."""
    kinds = dict.fromkeys(r["interval"] for r in summary if r["draw"] == "" and r["interval"])
    return f"{CONFIDENCE:.0%} CI: {'; '.join(kinds)}"


def plot_study(summary: Sequence[Mapping], path: str | Path, title: str) -> None:
    """Dice against N per class group (one panel each), both arms, the bands their 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary if r["metric"] == "Dice" and not r["class"] and r["arm"] in ARMS and r["draw"] == ""]
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
        save_group_figure(fig, axes, f"test Dice (mean, {CONFIDENCE:.0%} CI)", f"{title}\n{interval_caption(rows)}",
                          path)


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
