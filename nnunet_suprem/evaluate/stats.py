"""Per-class statistics over cases: mean, s.d., bootstrap confidence interval and a paired test; the mean over
training draws of a study (:func:`summarize_draws`).

NaN values (a class absent from prediction and reference, or not annotated) are left out.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000
TEST_CASES_ONLY = "test-case variability only, training-set variability not estimated"


@dataclass(frozen=True)
class Summary:
    """Mean, sample s.d. and percentile-bootstrap CI of the mean over the ``n`` finite values."""
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float

    def to_json(self) -> dict:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "ci95": [self.ci_low, self.ci_high]}


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank test of B - A over the ``n`` cases where both are finite."""
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    p_value: float

    def to_json(self) -> dict:
        return asdict(self)


def finite(values: Sequence[float]) -> np.ndarray:
    """The finite values as a float array (NaN = not scored)."""
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def bootstrap_ci(values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of the finite ``values`` (deterministic per ``seed``)."""
    values = finite(values)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student t confidence interval of the mean of the finite ``values`` (NaN below 2 values)."""
    values = finite(values)
    if values.size < 2:
        return float("nan"), float("nan")
    half_width = stats.t.ppf((1 + confidence) / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half_width), float(values.mean() + half_width)


@dataclass(frozen=True)
class DrawsSummary:
    """A draws x test cases table summarised over its draws: the mean of the draw means (each over the draw's scored
    test cases), its confidence interval and what the interval covers."""
    mean: float
    ci_low: float
    ci_high: float
    interval: str


def summarize_draws(table: np.ndarray, confidence: float = CONFIDENCE) -> DrawsSummary:
    """:class:`DrawsSummary` of a training draws x test cases ``table`` (NaN = not scored; a draw without a scored
    case is left out): with 2 or more draws a Student t-interval over the draw means (the spread between training
    draws, which a bootstrap over 1-3 draws cannot estimate); with one, a percentile bootstrap over its test cases,
    labelled :data:`TEST_CASES_ONLY`."""
    table = np.asarray(table, dtype=float)
    if table.ndim != 2:
        raise ValueError(f"expected a draws x test cases table, got shape {table.shape}")
    table = table[np.isfinite(table).any(axis=1)]
    if len(table) == 0:
        return DrawsSummary(float("nan"), float("nan"), float("nan"), "")
    draw_means = [finite(row).mean() for row in table]
    if len(table) == 1:
        return DrawsSummary(float(draw_means[0]), *bootstrap_ci(table[0], confidence), TEST_CASES_ONLY)
    return DrawsSummary(float(np.mean(draw_means)), *t_interval(draw_means, confidence),
                        f"Student t over {len(table)} draw means")


def summarize(values: Sequence[float]) -> Summary:
    """:class:`Summary` of the finite ``values`` (s.d. NaN below 2 values, everything NaN without any)."""
    values = finite(values)
    n = int(values.size)
    mean = float(values.mean()) if n else float("nan")
    sd = float(values.std(ddof=1)) if n > 1 else float("nan")
    return Summary(n, mean, sd, *bootstrap_ci(values))


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test on the pairs (a_i, b_i) where both are finite.

    p is 1 when every pair is equal and NaN without pairs.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.size} and {b.size}")
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    n = int(a.size)
    if n == 0:
        return PairedTest(0, float("nan"), float("nan"), float("nan"), float("nan"))
    p = 1.0 if np.all(a == b) else float(stats.wilcoxon(b, a).pvalue)
    return PairedTest(n, float(a.mean()), float(b.mean()), float((b - a).mean()), p)
