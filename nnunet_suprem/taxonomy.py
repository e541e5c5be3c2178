"""Class taxonomies: the one place that knows class names, their order and their laterality.

Class names are canonical snake_case, as in the AbdomenAtlas mask file names
(``segmentations/<class>.nii.gz``). Label value = position in the list + 1 (0 is background).
"""
from __future__ import annotations

ABDOMENATLAS_1_1: tuple[str, ...] = (
    "aorta", "gall_bladder", "kidney_left", "kidney_right", "liver", "pancreas",
    "postcava", "spleen", "stomach", "adrenal_gland_left", "adrenal_gland_right",
    "bladder", "celiac_trunk", "colon", "duodenum", "esophagus", "femur_left",
    "femur_right", "hepatic_vessel", "intestine", "lung_left", "lung_right",
    "portal_vein_and_splenic_vein", "prostate", "rectum",
)
"""AbdomenAtlas 1.1: 25 classes in label-value order."""

ABDOMENATLAS_1_0: tuple[str, ...] = ABDOMENATLAS_1_1[:9]
"""AbdomenAtlas 1.0: the first 9 classes of 1.1 (also the value map of ``combined_labels.nii.gz``)."""

_SIDES = {"left": "right", "right": "left"}


def laterality_partner(name: str) -> str | None:
    """The name of the other side's class (``kidney_left`` -> ``kidney_right``), or None.

    A class is lateral when one underscore-separated token of its name is ``left`` or
    ``right`` (``kidney_left``, ``rib_left_3``, ``iliac_artery_right``).
    """
    tokens = name.split("_")
    sides = [i for i, t in enumerate(tokens) if t in _SIDES]
    if len(sides) != 1:
        return None
    tokens[sides[0]] = _SIDES[tokens[sides[0]]]
    return "_".join(tokens)


def label_dict(classes: list[str] | tuple[str, ...]) -> dict[str, int]:
    """nnU-Net ``labels`` entry for ``classes`` in the given order: background 0, then 1..n."""
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names in {list(classes)}")
    return {"background": 0, **{name: i + 1 for i, name in enumerate(classes)}}


def in_taxonomy_order(classes, taxonomy: tuple[str, ...] = ABDOMENATLAS_1_1) -> list[str]:
    """Sort class names by their position in ``taxonomy``; names outside it follow, sorted."""
    position = {name: i for i, name in enumerate(taxonomy)}
    return sorted(set(classes), key=lambda c: (position.get(c, len(taxonomy)), c))
