"""Case sampling that keeps large sources from drowning small ones.

nnU-Net draws training cases uniformly. With a partial-label manifest, cases belong to
sources (manifest groups; cases no group lists form one more source). A case is drawn with
probability proportional to ``size_of_its_source ** -alpha``: alpha = 0 is nnU-Net's uniform
sampling, alpha = 1 gives every source the same share, and the default 0.5 is in between
(a source 100 times larger is drawn 10 times as often, not 100 times). nnU-Net's data loader
draws uniformly from its identifier list, so the weights are realised by repeating
identifiers (rounded to whole repeats).

Label sets: nnU-Net's foreground oversampling draws patch centres from the ``class_locations`` its
preprocessing records for real labels only; :class:`SetLocationsMixin` adds those of the label sets.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

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


SET_LOCATION_SAMPLES = 1000  # per set and case: 16 KB of int32 coordinates, cached per data-loading process


def set_locations(seg: np.ndarray, set_values: Sequence[int], samples: int = SET_LOCATION_SAMPLES,
                  seed: int = 1234) -> dict[int, np.ndarray]:
    """``{set value: int32 [N, 4] voxel coordinates}`` of the sets a case's label map ``seg`` [1, ...] holds, at most
    ``samples`` each, in the layout of nnU-Net's ``class_locations``.

    Set values lie above every label, so a map whose maximum is below them holds none (one fast pass). nnU-Net's own
    sampler (``DefaultPreprocessor._sample_foreground_locations``: sorts every foreground voxel) takes ~7 times as
    long on a CT-sized map, once per data-loading process and case here rather than once in preprocessing.
    """
    seg = np.asarray(seg)
    if not len(set_values) or seg.max() < min(set_values):
        return {}
    rng = np.random.default_rng(seed)
    found = {}
    for value in set_values:
        voxels = np.flatnonzero(seg == value)
        if len(voxels):
            chosen = rng.choice(voxels, min(samples, len(voxels)), replace=False)
            found[value] = np.stack(np.unravel_index(chosen, seg.shape), 1).astype(np.int32)
    return found


class SetLocationsMixin:
    """An nnU-Net dataset whose cases' ``class_locations`` also hold its label sets (``set_values``), so foreground
    oversampling also draws patches around a case's set-labelled voxels (nnU-Net's preprocessing records real labels
    only). A case's set locations are computed when the case is first loaded (one pass over its label map) and kept,
    :data:`SET_LOCATION_SAMPLES` per set at most, for the process's later draws."""

    set_values: list[int] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_locations: dict[str, dict[int, np.ndarray]] = {}

    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        if identifier not in self.set_locations:
            self.set_locations[identifier] = set_locations(seg[:], self.set_values)
        properties["class_locations"].update(self.set_locations[identifier])
        return data, seg, seg_prev, properties


class nnUNetDatasetNumpyWithSets(SetLocationsMixin, nnUNetDatasetNumpy):
    """nnU-Net's numpy dataset with set locations (:class:`SetLocationsMixin`)."""


class nnUNetDatasetBlosc2WithSets(SetLocationsMixin, nnUNetDatasetBlosc2):
    """nnU-Net's blosc2 dataset with set locations (:class:`SetLocationsMixin`)."""


WITH_SET_LOCATIONS = {nnUNetDatasetNumpy: nnUNetDatasetNumpyWithSets, nnUNetDatasetBlosc2: nnUNetDatasetBlosc2WithSets}


def with_set_locations(dataset: nnUNetDatasetNumpy | nnUNetDatasetBlosc2, set_values: Iterable[int]
                       ) -> SetLocationsMixin:
    """nnU-Net's ``dataset`` (same cases) with the locations of the label sets ``set_values``
    (:class:`SetLocationsMixin`)."""
    located = WITH_SET_LOCATIONS[type(dataset)](dataset.source_folder, list(dataset.identifiers),
                                                dataset.folder_with_segs_from_previous_stage)
    located.set_values = sorted(set_values)
    return located
