"""Case sampling that keeps large sources from drowning small ones.

nnU-Net draws training cases uniformly. With a partial-label manifest, cases belong to
sources (manifest groups; cases no group lists form one more source). A case is drawn with
probability proportional to ``size_of_its_source ** -alpha``: alpha = 0 is nnU-Net's uniform
sampling, alpha = 1 gives every source the same share, and the default 0.5 is in between
(a source 100 times larger is drawn 10 times as often, not 100 times). nnU-Net's data loader
draws uniformly from its identifier list, so the weights are realised by repeating
identifiers (rounded to whole repeats).
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

UNLISTED = "(not in any manifest group)"


def source_repeats(cases: Sequence[str], source_of: Mapping[str, str], alpha: float) -> dict[str, int]:
    """How often each case appears in the sampling list (the smallest weight gets 1)."""
    sources = {case: source_of.get(case, UNLISTED) for case in cases}
    sizes = Counter(sources.values())
    weights = {case: sizes[source] ** -alpha for case, source in sources.items()}
    smallest = min(weights.values())
    return {case: max(1, round(w / smallest)) for case, w in weights.items()}


def source_shares(repeats: Mapping[str, int], source_of: Mapping[str, str]) -> dict[str, float]:
    """The fraction of draws that goes to each source."""
    total = sum(repeats.values())
    shares: Counter = Counter()
    for case, n in repeats.items():
        shares[source_of.get(case, UNLISTED)] += n / total
    return dict(shares)
