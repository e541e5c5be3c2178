"""Patch sizes for a network whose topology is fixed (nnU-Net's planner derives the topology from the patch)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def downsampling_per_axis(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Total downsampling of the network along each axis: every patch axis must be a multiple of it."""
    return tuple(int(np.prod([stage[axis] for stage in strides])) for axis in range(len(strides[0])))


def valid_patch_size(patch: Sequence[int], divisors: Sequence[int]) -> tuple[int, ...]:
    """``patch`` as a tuple, or a ValueError unless every axis is a positive multiple of the network's downsampling."""
    if len(patch) != len(divisors) or any(p < d or p % d for p, d in zip(patch, divisors)):
        raise ValueError(f"patch size {list(patch)} does not suit the pre-trained network: every axis must be a "
                         f"multiple of its downsampling {tuple(int(d) for d in divisors)}")
    return tuple(int(p) for p in patch)


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float]) -> np.ndarray:
    """nnU-Net's starting patch: the spacing's aspect ratio at the volume of 256^3 (2048^2 in 2D), clipped to the
    median shape."""
    inverse = 1 / np.asarray(spacing, dtype=float)
    volume = 256 ** 3 if len(spacing) == 3 else 2048 ** 2
    patch = np.round(inverse * (volume / np.prod(inverse)) ** (1 / len(spacing)))
    return np.minimum(patch, np.asarray(median_shape, dtype=float))


def fit_patch_size(spacing: Sequence[float], median_shape: Sequence[float], divisors: Sequence[int],
                   fits: Callable[[tuple[int, ...]], bool]) -> tuple[int, ...]:
    """The patch nnU-Net's planner would choose if the network's downsampling ``divisors`` were given.

    Start from :func:`initial_patch_size` rounded up to multiples of ``divisors``; while ``fits(patch)`` (the memory
    estimate) says no, shrink the axis that is largest relative to the median shape by one multiple
    (nnU-Net's own loop, with the step fixed by the topology).
    Raises ValueError when the images are smaller than the downsampling or even the smallest patch does not fit.
    """
    median = np.asarray(median_shape, dtype=float)
    too_small = [f"axis {i}: {m:g} voxels at {s:g} mm, downsampled {d}x"
                 for i, (m, s, d) in enumerate(zip(median, spacing, divisors)) if m < d]
    if too_small:
        raise ValueError("the target images are smaller than the pre-trained network's downsampling (median image "
                         f"size after resampling; {'; '.join(too_small)}): every patch axis must be a multiple of "
                         f"{tuple(int(d) for d in divisors)}. Use a finer --spacing or a pre-trained configuration "
                         "with fewer stages.")
    patch = [int(np.ceil(p / d)) * d for p, d in zip(initial_patch_size(spacing, median), divisors)]
    while not fits(tuple(patch)):
        reducible = [i for i, d in enumerate(divisors) if patch[i] > d]
        if not reducible:
            raise ValueError(f"the pre-trained network does not fit the planner's GPU memory target even with the "
                             f"smallest valid patch {tuple(patch)}")
        axis = max(reducible, key=lambda i: (patch[i] / median[i], i))  # ties: the last axis, as nnU-Net's argsort
        patch[axis] -= divisors[axis]
    return tuple(patch)
