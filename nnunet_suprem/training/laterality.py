"""Keeping left and right apart under nnU-Net's mirroring.

nnU-Net mirrors patches along every axis during training and at test time. Along the
patient's left-right axis that turns a left kidney into a right one without changing its
label, teaching the network that left and right are the same. Here:

- the left-right axis of nnU-Net's arrays, and which way it points, is derived per case from
  the image geometry nnU-Net stores in the preprocessed properties (``sitk_stuff.direction``,
  LPS, for SimpleITKIO, 2D images included; ``nibabel_stuff.reoriented_affine``, RAS, for
  NibabelIOWithReorient, ``nibabel_stuff.original_affine`` for NibabelIO) and mapped through the
  plans' ``transpose_forward``. Readers that store no geometry (NaturalImage2DIO, Tiff3DIO) leave
  it unknown: any axis may be left-right, so there is no mirroring at all;
- when all cases agree on both, training mirrors along that axis with
  :class:`LateralMirrorTransform`, which swaps the label values of every left/right pair
  whenever it flips that axis (the network then learns laterality from position, as in every
  unmirrored case). When cases disagree (e.g. LPS and RAS arrays mixed, as SimpleITKIO reads
  them), a mirrored case would look like a real case of the other orientation with the
  opposite labels, so there is no mirroring along left-right at all; the network learns
  laterality from anatomical context. ``NibabelIOWithReorient`` makes every case RAS;
- test-time mirroring along that axis is switched off (``inference_allowed_mirroring_axes``);
- rotations in a plane that contains the left-right axis stay within nnU-Net's isotropic ±30°:
  a rotation by 90° or more carries left organs to the right, and 180° is a flip of both in-plane
  axes that no label swap follows.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

from nnunet_suprem.taxonomy import laterality_partner, resolve_classes

MAX_LATERAL_ROTATION = float(np.deg2rad(30))  # nnU-Net's rotation range for isotropic 3D patches


def lateral_label_pairs(labels: Mapping[str, int | Sequence[int]]) -> tuple[list[tuple[int, int]], list[str]]:
    """``([(left value, right value), ...], lateral labels that cannot be swapped)`` of a dataset.json ``labels``.

    A label is lateral when its canonical name (:func:`~nnunet_suprem.taxonomy.canonical_name`: ``"left kidney"``,
    ``LAG``, ``lkid``, ``Kidney_Left`` ...) is; it pairs with the label whose canonical name is its partner's,
    whatever either is spelled like. A lateral label without a partner, or a region (nnU-Net's region-based
    ``labels``) of more than one value, cannot be swapped by value and is returned in the second list; so is every
    lateral region when swapping the pairs' values would turn some region into one that is not its partner
    (a region holding one side's value but not the other's).
    """
    by_canonical = resolve_classes(labels, "dataset.json labels")
    pairs, unswappable, partner_of = set(), [], {}
    for canonical, name in by_canonical.items():
        partner = laterality_partner(canonical)
        if partner is None:
            continue
        partner_of[name] = by_canonical.get(partner)
        values = (_single_value(labels[name]), _single_value(labels.get(partner_of[name])))
        if None in values:
            unswappable.append(name)
        else:
            pairs.add(tuple(sorted(values)))
    if pairs and not _regions_follow_swap(labels, pairs, partner_of, unswappable):
        return [], sorted(partner_of)
    return sorted(pairs), sorted(unswappable)


def _regions_follow_swap(labels: Mapping[str, int | Sequence[int]], pairs: set[tuple[int, int]],
                         partner_of: Mapping[str, str | None], unswappable: Sequence[str]) -> bool:
    """Whether swapping the pairs' values turns every region (but the ``unswappable`` ones) into its partner's (a
    lateral one) or itself."""
    swap = {a: b for pair in pairs for a, b in (pair, pair[::-1])}
    values = {name: set(value) if isinstance(value, (list, tuple)) else {value} for name, value in labels.items()}
    return all({swap.get(v, v) for v in region} == values[partner_of.get(name) or name]
               for name, region in values.items() if name not in unswappable)


def _single_value(value: int | Sequence[int] | None) -> int | None:
    """The label value of a label or of a one-value region; None for a missing label or a multi-value region."""
    if isinstance(value, (list, tuple)):
        return int(value[0]) if len(value) == 1 else None
    return None if value is None else int(value)


def lateral_set_pairs(sets: Mapping[int, tuple[str, frozenset[str]]], labels: Mapping[str, int],
                      pairs: Iterable[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[str]]:
    """``([(set value, set value), ...], names of sets that cannot be swapped)`` of the label sets
    (:func:`~nnunet_suprem.manifest.label_sets`) under the swap of the label value ``pairs``.

    A set the swap maps onto itself (kidney_left + kidney_right) keeps its value; a set that becomes another set
    (kidney_left + adrenal_gland_left into kidney_right + adrenal_gland_right) pairs with it; one that becomes no
    set cannot be swapped by value.
    """
    swap = {a: b for pair in pairs for a, b in (pair, pair[::-1])}
    value_of = {frozenset(labels[c] for c in classes): value for value, (_, classes) in sets.items()}
    set_pairs, unswappable = set(), []
    for value, (name, classes) in sets.items():
        partner = value_of.get(frozenset(swap.get(labels[c], labels[c]) for c in classes))
        if partner is None:
            unswappable.append(name)
        elif partner != value:
            set_pairs.add(tuple(sorted((value, partner))))
    return sorted(set_pairs), sorted(unswappable)


def describe_pairs(labels: Mapping[str, int | Sequence[int]], pairs: Iterable[tuple[int, int]]) -> str:
    """``'left kidney' (1) / 'right kidney' (2), ...``: the label names of value pairs, for the training log."""
    name_of = {_single_value(value): name for name, value in labels.items()}
    return ", ".join(f"{name_of[a]!r} ({a}) / {name_of[b]!r} ({b})" for a, b in pairs)


def left_right_axis(properties: Mapping) -> tuple[int, int] | None:
    """``(array axis, sign)`` of the patient's left-right in nnU-Net's reader order (before ``transpose_forward``).

    ``sign`` is +1 when the index grows towards the patient's left, -1 towards the right. Two
    cases with different signs show the anatomy mirrored relative to each other. None when the
    reader stored no geometry (NaturalImage2DIO, Tiff3DIO).
    """
    if "sitk_stuff" in properties:
        direction = np.asarray(properties["sitk_stuff"]["direction"], dtype=float)
        size = round(np.sqrt(direction.size))  # 2D images have a 2x2 direction, 4D ones 4x4
        axes = direction.reshape(size, size)[:3, :3]  # columns: index axes in LPS (+x = left)
        towards_left = 1
    elif "nibabel_stuff" in properties:
        stuff = properties["nibabel_stuff"]
        affine = stuff.get("reoriented_affine", stuff["original_affine"])  # NibabelIOWithReorient / NibabelIO
        axes = np.asarray(affine)[:3, :3]  # columns: index axes in RAS (+x = right)
        towards_left = -1
    else:
        return None
    index_axis = int(np.argmax(np.abs(axes[0])))
    sign = towards_left * int(np.sign(axes[0, index_axis]))
    return 2 - index_axis, sign  # every reader returns arrays as [z, y, x] of the image index ([1, y, x] in 2D)


def patch_axis(array_axis: int, transpose_forward: Sequence[int], patch_dim: int) -> int | None:
    """Spatial axis of a training patch that corresponds to ``array_axis`` (None: 2D slicing axis)."""
    axis = list(transpose_forward).index(array_axis) - (3 - patch_dim)
    return axis if axis >= 0 else None


def lateral_directions(orientations: Iterable[tuple[int, int] | None], transpose_forward: Sequence[int],
                       patch_dim: int) -> set[tuple[int | None, int]] | None:
    """The (patch axis, sign) of left-right over all cases; None when some case's geometry is unknown.

    Cases whose left-right axis is the slicing axis of 2D patches contribute ``(None, sign)``: no patch axis of
    theirs is left-right, so flipping any of them must not swap their labels.
    """
    directions = set()
    for orientation in orientations:
        if orientation is None:
            return None
        directions.add((patch_axis(orientation[0], transpose_forward, patch_dim), orientation[1]))
    return directions


def lateral_mirroring_blocker(directions: set[tuple[int | None, int]] | None, unpaired: list[str],
                              symmetric: bool) -> str | None:
    """Why mirroring along left-right cannot swap labels consistently, or None when it can.

    ``directions``: the (patch axis, sign) of left-right over all cases (:func:`lateral_directions`), None when some
    case's geometry is unknown; ``unpaired``: lateral labels that cannot be swapped (:func:`lateral_label_pairs`);
    ``symmetric``: every case annotates both or neither side of each pair.
    """
    if directions is None:
        return ("the image geometry of some cases is unknown (their reader, e.g. NaturalImage2DIO or Tiff3DIO, "
                "stores no direction or affine), so any axis may be left-right")
    axes = {axis for axis, _ in directions}
    if None in axes and len(axes) > 1:
        return ("the 2D slices of some cases are cut along the left-right axis and those of others are not, so a "
                "flip that is left-right in one case is not in another (no label swap fits both)")
    if len(axes) > 1:
        return f"the left-right axis differs between cases ({sorted(directions)})"
    if len(directions) > 1:
        return ("cases differ in which way the left-right axis points (mixed orientations such as LPS and RAS; "
                "'overwrite_image_reader_writer': 'NibabelIOWithReorient' in dataset.json makes them all RAS)")
    if unpaired:
        return (f"the lateral labels {unpaired} cannot be swapped by value (a partner is missing, or a region holds "
                f"several values or one side's value only)")
    if not symmetric:
        return "some cases annotate only one side of a left/right pair"
    return None


def rotation_planes(patch_dim: int, dummy_2d: bool) -> tuple[tuple[int, int], ...]:
    """The planes (pairs of patch axes) in which nnU-Net's SpatialTransform rotates training patches."""
    if patch_dim == 2:
        return ((0, 1),)
    if dummy_2d:
        return ((1, 2),)  # each slice along axis 0 is rotated in-plane
    return ((1, 2), (0, 2), (0, 1))


def lateral_rotation(rotation: tuple[float, float], left_right_axes: Iterable[int],
                     planes: Iterable[tuple[int, int]]) -> tuple[float, float]:
    """nnU-Net's rotation range (radians), limited to ±30° when a rotated plane contains a left-right axis."""
    left_right_axes = set(left_right_axes)
    if not any(left_right_axes & set(plane) for plane in planes):
        return rotation
    low, high = rotation
    return max(low, -MAX_LATERAL_ROTATION), min(high, MAX_LATERAL_ROTATION)


def swap_labels(segmentation: torch.Tensor, pairs: Iterable[tuple[int, int]]) -> torch.Tensor:
    """Exchange the two label values of every pair: one table look-up per voxel, dtype kept. The table spans the
    values present (label sets above the labels, nnU-Net's -1 included); values of no pair stay as they are."""
    low, high = (int(v) for v in torch.aminmax(segmentation))
    table = torch.arange(low, high + 1)
    for a, b in pairs:
        if low <= a <= high:
            table[a - low] = b
        if low <= b <= high:
            table[b - low] = a
    return table.to(segmentation.dtype)[segmentation.long() - low]


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
