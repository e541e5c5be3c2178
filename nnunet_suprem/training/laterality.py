"""Keeping left and right apart under nnU-Net's mirroring.

nnU-Net mirrors patches along every axis during training and at test time. Along the
patient's left-right axis that turns a left kidney into a right one without changing its
label, teaching the network that left and right are the same. Here:

- the left-right axis of nnU-Net's arrays, and which way it points, is derived per case from
  the image geometry nnU-Net stores in the preprocessed properties (``sitk_stuff.direction``,
  LPS, for SimpleITKIO; ``nibabel_stuff.reoriented_affine``, RAS, for NibabelIO and
  NibabelIOWithReorient) and mapped through the plans' ``transpose_forward``;
- when all cases agree on both, training mirrors along that axis with
  :class:`LateralMirrorTransform`, which swaps the label values of every left/right pair
  whenever it flips that axis (the network then learns laterality from position, as in every
  unmirrored case). When cases disagree (e.g. LPS and RAS arrays mixed, as SimpleITKIO reads
  them), a mirrored case would look like a real case of the other orientation with the
  opposite labels, so there is no mirroring along left-right at all; the network learns
  laterality from anatomical context. ``NibabelIOWithReorient`` makes every case RAS;
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


def left_right_axis(properties: Mapping) -> tuple[int, int]:
    """``(array axis, sign)`` of the patient's left-right in nnU-Net's reader order (before ``transpose_forward``).

    ``sign`` is +1 when the index grows towards the patient's left, -1 towards the right. Two
    cases with different signs show the anatomy mirrored relative to each other.
    """
    if "sitk_stuff" in properties:
        axes = np.reshape(properties["sitk_stuff"]["direction"], (3, 3))  # columns: index axes in LPS (+x = left)
        towards_left = 1
    elif "nibabel_stuff" in properties:
        axes = np.asarray(properties["nibabel_stuff"]["reoriented_affine"])[:3, :3]  # columns: axes in RAS (+x = right)
        towards_left = -1
    else:
        raise ValueError(f"cannot tell the left-right axis: the properties hold neither sitk_stuff nor nibabel_stuff "
                         f"(keys: {sorted(properties)})")
    index_axis = int(np.argmax(np.abs(axes[0])))
    sign = towards_left * int(np.sign(axes[0, index_axis]))
    return 2 - index_axis, sign  # both readers return arrays as [z, y, x] of the image index


def patch_axis(array_axis: int, transpose_forward: Sequence[int], patch_dim: int) -> int | None:
    """Spatial axis of a training patch that corresponds to ``array_axis`` (None: 2D slicing axis)."""
    axis = list(transpose_forward).index(array_axis) - (3 - patch_dim)
    return axis if axis >= 0 else None


def lateral_mirroring_blocker(directions: set[tuple[int, int]], unpaired: list[str], symmetric: bool) -> str | None:
    """Why mirroring along left-right cannot swap labels consistently, or None when it can.

    ``directions``: the (patch axis, sign) of left-right over all cases; ``unpaired``: lateral
    classes without a partner label; ``symmetric``: every case annotates both or neither side of
    each pair.
    """
    if len({axis for axis, _ in directions}) > 1:
        return f"the left-right axis differs between cases ({sorted(directions)})"
    if len(directions) > 1:
        return ("cases differ in which way the left-right axis points (mixed orientations such as LPS and RAS; "
                "'overwrite_image_reader_writer': 'NibabelIOWithReorient' in dataset.json makes them all RAS)")
    if unpaired:
        return f"{unpaired} have no partner label"
    if not symmetric:
        return "some cases annotate only one side of a left/right pair"
    return None


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
