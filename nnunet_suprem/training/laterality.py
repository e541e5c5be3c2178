"""Keeping left and right apart under nnU-Net's mirroring.

nnU-Net mirrors patches along every axis during training and at test time. Along the
patient's left-right axis that turns a left kidney into a right one without changing its
label, teaching the network that left and right are the same. Here:

- the left-right axis of nnU-Net's arrays is derived per case from the image geometry
  nnU-Net stores in the preprocessed properties (``sitk_stuff.direction``, LPS, for
  SimpleITKIO; ``nibabel_stuff.reoriented_affine``, RAS, for NibabelIO/NibabelIOWithReorient)
  and mapped through the plans' ``transpose_forward``;
- training mirrors along that axis with :class:`LateralMirrorTransform`, which swaps the
  label values of every left/right pair whenever it flips that axis;
- test-time mirroring along that axis is switched off (``inference_allowed_mirroring_axes``).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

from nnunet_suprem.taxonomy import laterality_partner


def lateral_label_pairs(labels: Mapping[str, int]) -> tuple[list[tuple[int, int]], list[str]]:
    """``([(left value, right value), ...], lateral classes whose partner is not a label)``."""
    pairs, unpaired = set(), []
    for name, value in labels.items():
        partner = laterality_partner(name)
        if partner is None:
            continue
        if partner in labels:
            pairs.add(tuple(sorted((value, labels[partner]))))
        else:
            unpaired.append(name)
    return sorted(pairs), sorted(unpaired)


def left_right_axis(properties: Mapping) -> int:
    """The array axis (nnU-Net's reader order, before ``transpose_forward``) along the patient's left-right."""
    if "sitk_stuff" in properties:
        direction = np.reshape(properties["sitk_stuff"]["direction"], (3, 3))  # columns: index axes in LPS
        index_axis = int(np.argmax(np.abs(direction[0])))
    elif "nibabel_stuff" in properties:
        affine = np.asarray(properties["nibabel_stuff"]["reoriented_affine"])[:3, :3]  # columns: voxel axes in RAS
        index_axis = int(np.argmax(np.abs(affine[0])))
    else:
        raise ValueError(f"cannot tell the left-right axis: the properties hold neither sitk_stuff nor nibabel_stuff "
                         f"(keys: {sorted(properties)})")
    return 2 - index_axis  # both readers return arrays as [z, y, x] of the image index


def patch_axis(array_axis: int, transpose_forward: Sequence[int], patch_dim: int) -> int | None:
    """Spatial axis of a training patch that corresponds to ``array_axis`` (None: 2D slicing axis)."""
    axis = list(transpose_forward).index(array_axis) - (3 - patch_dim)
    return axis if axis >= 0 else None


def swap_labels(segmentation: torch.Tensor, pairs: Iterable[tuple[int, int]]) -> torch.Tensor:
    """Exchange the two label values of every pair."""
    swapped = segmentation.clone()
    for a, b in pairs:
        swapped[segmentation == a] = b
        swapped[segmentation == b] = a
    return swapped


class LateralMirrorTransform(MirrorTransform):
    """nnU-Net's MirrorTransform that also swaps left/right label pairs when it flips ``left_right_axis``."""

    def __init__(self, allowed_axes: tuple[int, ...], left_right_axis: int, label_pairs: list[tuple[int, int]]):
        super().__init__(allowed_axes)
        self.left_right_axis = left_right_axis
        self.label_pairs = label_pairs

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        segmentation = super()._apply_to_segmentation(segmentation, **params)
        if self.left_right_axis in params["axes"]:
            segmentation = swap_labels(segmentation, self.label_pairs)
        return segmentation
