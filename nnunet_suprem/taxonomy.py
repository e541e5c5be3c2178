"""Class taxonomies: the one place that knows class names, their order, laterality and synonyms.

Class names are snake_case mask file names (``segmentations/<class>.nii.gz``). Label value =
position in the list + 1 (0 is background). The canonical name of a structure is its
AbdomenAtlas 1.1 name where AbdomenAtlas has the class, otherwise its TotalSegmentator v2
name, otherwise its v1 or Universal Model name (see :func:`canonical_name`).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

# Sources (checked against the files, not copied):
# - AbdomenAtlas: MrGiovanni/SuPreM supervised_pretraining/dataset/dataloader_bdmap.py
#   (class_map_abdomenatlas_1_0 / _1_1).
# - Universal Model: MrGiovanni/SuPreM direct_inference/utils/utils.py (ORGAN_NAME_LOW).
# - TotalSegmentator: wasserth/TotalSegmentator totalsegmentator/map_to_binary.py, class_map["total_v1"]
#   (v1) and class_map["total"] (v2, = the five class_map_5_parts concatenated); the dataset's mask
#   files are these names (resources/convert_dataset_to_nnunet.py).
# - SuPreM groups: MrGiovanni/SuPreM target_applications/totalsegmentator/dataset/dataloader.py.

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

UNIVERSAL_MODEL_32: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gall_bladder", "esophagus", "liver", "stomach",
    "aorta", "postcava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left", "duodenum", "hepatic_vessel", "lung_right", "lung_left", "colon",
    "intestine", "rectum", "bladder", "prostate", "femur_left", "femur_right",
    "celiac_truck",  # [sic]: the Universal Model's own spelling of celiac_trunk
    "kidney_tumor", "liver_tumor", "pancreas_tumor", "hepatic_vessel_tumor", "lung_tumor",
    "colon_tumor", "kidney_cyst",
)
"""CLIP-Driven Universal Model: 25 organs then 7 tumours, in label-value order."""

_VERTEBRAE_L5_TO_C1: tuple[str, ...] = tuple(
    f"vertebrae_{region}{i}" for region, count in (("L", 5), ("T", 12), ("C", 7)) for i in range(count, 0, -1))
_RIBS: tuple[str, ...] = tuple(f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13))

TOTALSEGMENTATOR_V1: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
    "lung_middle_lobe_right", "lung_lower_lobe_right",
    *_VERTEBRAE_L5_TO_C1,
    "esophagus", "trachea", "heart_myocardium", "heart_atrium_left", "heart_ventricle_left",
    "heart_atrium_right", "heart_ventricle_right", "pulmonary_artery", "brain",
    "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
    "small_bowel", "duodenum", "colon",
    *_RIBS,
    "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left",
    "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "sacrum", "face",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right",
    "iliopsoas_left", "iliopsoas_right", "urinary_bladder",
)
"""TotalSegmentator v1: 104 classes in label-value order."""

TOTALSEGMENTATOR_V2: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus",
    "trachea", "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate",
    "kidney_cyst_left", "kidney_cyst_right",
    "sacrum", "vertebrae_S1", *_VERTEBRAE_L5_TO_C1,
    "heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
    "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left",
    "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein",
    "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
    "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left",
    "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right",
    "iliopsoas_left", "iliopsoas_right", "brain", "skull",
    *_RIBS, "sternum", "costal_cartilages",
)
"""TotalSegmentator v2: 117 classes in label-value order (the current map; an early 2.0.x map
listed ``rib_right_4``, ``rib_right_3`` before ``rib_left_1``: same names, other values)."""

TOTALSEGMENTATOR_V1_TO_V2: dict[str, str] = {}
"""v1 class names that v2 renamed: none. The 7 v1-only classes (heart chambers,
``pulmonary_artery``, ``face``) moved to other TotalSegmentator tasks and are not in the v2
dataset; every other v1 name is unchanged (wasserth/TotalSegmentator resources/improvements_in_v2.md)."""

SUPREM_GROUPS: dict[str, tuple[str, ...]] = {
    "organs": TOTALSEGMENTATOR_V1[:17],
    "muscles": (
        "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left",
        "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "sacrum",
        "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
        "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right",
        "iliopsoas_left", "iliopsoas_right",
    ),
    "cardiac": (
        "esophagus", "trachea", "heart_myocardium", "heart_atrium_left", "heart_ventricle_left",
        "heart_atrium_right", "heart_ventricle_right", "pulmonary_artery", "brain",
        "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
        "small_bowel", "duodenum", "colon", "urinary_bladder", "face",
    ),
    "vertebrae": _VERTEBRAE_L5_TO_C1,
    "ribs": _RIBS,
}
"""SuPreM's five fine-tuning tasks on TotalSegmentator v1 (v1 class names, task label order)."""

TAXONOMIES: dict[str, tuple[str, ...]] = {
    "abdomenatlas1.0": ABDOMENATLAS_1_0,
    "abdomenatlas1.1": ABDOMENATLAS_1_1,
    "universal32": UNIVERSAL_MODEL_32,
    "totalsegmentator_v1": TOTALSEGMENTATOR_V1,
    "totalsegmentator_v2": TOTALSEGMENTATOR_V2,
}
"""Every class list by name."""

SYNONYMS: dict[str, str] = {
    # TotalSegmentator / common spellings of AbdomenAtlas classes
    "inferior_vena_cava": "postcava", "vena_cava_inferior": "postcava", "ivc": "postcava",
    "gallbladder": "gall_bladder",
    "urinary_bladder": "bladder",
    "small_bowel": "intestine", "small_intestine": "intestine",
    "portal_and_splenic_vein": "portal_vein_and_splenic_vein",
    "portal_splenic_vein": "portal_vein_and_splenic_vein",  # MONAI MAISI "Portal & splenic vein"
    "celiac_truck": "celiac_trunk",  # Universal Model
    "arota": "aorta",  # AMOS22 dataset.json and Universal Model display names
    "hepatic_vessels": "hepatic_vessel", "liver_vessels": "hepatic_vessel",
    "head_of_femur_left": "femur_left", "head_of_femur_right": "femur_right",  # WORD, Universal Model
    "femur_head_left": "femur_left", "femur_head_right": "femur_right",
    "femoral_head_left": "femur_left", "femoral_head_right": "femur_right",
    "adrenal_left": "adrenal_gland_left", "adrenal_right": "adrenal_gland_right",
    # BTCV (MONAI dataset_0.json abbreviations)
    "rkid": "kidney_right", "lkid": "kidney_left", "gall": "gall_bladder", "eso": "esophagus",
    "sto": "stomach", "veins": "portal_vein_and_splenic_vein",
    "rad": "adrenal_gland_right", "lad": "adrenal_gland_left",
    # FLARE22 abbreviations
    "rag": "adrenal_gland_right", "lag": "adrenal_gland_left",
    # Universal Model tumours under other names (MSD Task10, MONAI MAISI)
    "colon_cancer_primaries": "colon_tumor", "hepatic_tumor": "liver_tumor",
    "pancreatic_tumor": "pancreas_tumor", "lung_nodule": "lung_tumor", "lung_nodules": "lung_tumor",
}
"""Normalised alias -> canonical name. Side words may stand anywhere in an alias
(``canonical_name`` moves them last); ``tumour``/``oesophagus``/``coeliac`` are respelled first.
Deliberately absent: unsided ``kidney``/``adrenal``/``lung`` (a set of both sides: :func:`both_sides`),
generic ``tumor``/``cancer``/``cyst``, AMOS ``prostate/uterus``: they name no single class here (the tables of
:mod:`nnunet_suprem.public_datasets` say what they mean in each public dataset)."""

_SIDES = {"left": "right", "right": "left"}
_SIDE_LETTERS = {"l": "left", "r": "right"}
_SPELLINGS = {"tumour": "tumor", "tumours": "tumor", "tumors": "tumor",
              "oesophagus": "esophagus", "coeliac": "celiac"}


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


def normalise(name: str) -> str:
    """Lowercase snake_case of a class or file name: ``" Right Kidney.nii.gz"`` -> ``right_kidney``.

    A trailing ``.nii.gz``/``.nii`` is dropped; every run of other characters than ``a-z0-9``
    (spaces, hyphens, dots, slashes, parentheses, ...) becomes one underscore, none at the ends.
    """
    name = re.sub(r"\.nii(\.gz)?$", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def _side_last(tokens: list[str]) -> list[str]:
    """Move the one side token (``left``/``right``, or ``l``/``r`` first or last) to the end, spelled out."""
    sides = [i for i, t in enumerate(tokens)
             if t in _SIDES or (t in _SIDE_LETTERS and i in (0, len(tokens) - 1))]
    if len(sides) != 1 or len(tokens) == 1:
        return tokens
    side = tokens[sides[0]]
    return [t for i, t in enumerate(tokens) if i != sides[0]] + [_SIDE_LETTERS.get(side, side)]


def _key(name: str) -> str:
    """Normalised, respelled, side word last: the form names are compared in."""
    return "_".join(_side_last([_SPELLINGS.get(t, t) for t in normalise(name).split("_")]))


_CANONICAL: dict[str, str] = {
    **{_key(name): name for classes in TAXONOMIES.values() for name in classes},
    **{_key(alias): name for alias, name in SYNONYMS.items()},
}

KNOWN_CLASSES = frozenset(_CANONICAL.values())
"""Every canonical class name of a taxonomy or synonym."""


def canonical_name(name: str) -> str:
    """The canonical class name of ``name`` (``"Right Kidney"``, ``kidney (right)`` -> ``kidney_right``).

    Unknown names come back normalised with their side word last (``left foo`` -> ``foo_left``).
    """
    key = _key(name)
    return _CANONICAL.get(key, key)


_PLURALS = {"femora": "femur", "heads_of_femur": "head_of_femur", "femoral_heads": "femoral_head"}


def both_sides(name: str) -> tuple[str, str] | None:
    """The left and right class a side-less name stands for (``kidneys``, ``Adrenal``, ``lung`` ->
    ``(kidney_left, kidney_right)``, ...), or None when ``name`` has a side or no sided classes.

    A name (or its plural) is coarse when adding ``left`` and ``right`` to it gives two known classes.
    """
    key = _key(name)
    if laterality_partner(key) is not None:
        return None
    for base in sorted({key, _PLURALS.get(key, key), key.removesuffix("s")}):
        left, right = canonical_name(f"{base}_left"), canonical_name(f"{base}_right")
        if left in KNOWN_CLASSES and right in KNOWN_CLASSES:
            return left, right
    return None


def set_name(classes: Iterable[str]) -> str:
    """The name of a set of classes: its classes joined by ``_or_``, each left/right pair as its side-less name
    (``kidney_left, kidney_right, kidney_tumor`` -> ``kidney_or_kidney_tumor``)."""
    classes = list(classes)
    parts = []
    for name in classes:
        partner = laterality_partner(name)
        if partner in classes:
            name = "_".join(t for t in name.split("_") if t not in _SIDES)
        if name not in parts:
            parts.append(name)
    return "_or_".join(parts)


def resolve_classes(names: Iterable[str], source: str) -> dict[str, str]:
    """``{canonical name: name}`` of ``names``, in their order: the one class-matching policy.

    Two different names of one class in one input (``postcava`` and ``inferior_vena_cava``) are a
    ValueError naming ``source`` and both names; a name repeated as is counts once.
    """
    resolved: dict[str, str] = {}
    for name in names:
        canonical = canonical_name(name)
        other = resolved.setdefault(canonical, name)
        if other != name:
            raise ValueError(f"{source}: {other!r} and {name!r} are the same class {canonical!r}")
    return resolved


def match_classes(names: Iterable[str], targets: Sequence[str], names_source: str = "names",
                  targets_source: str = "targets") -> dict[str, str | None]:
    """For each of ``names`` the target with the same canonical name, or None.

    Both lists are checked by :func:`resolve_classes` (errors name ``names_source``, ``targets_source``).
    """
    names = list(names)
    resolve_classes(names, names_source)
    by_canonical = resolve_classes(targets, targets_source)
    return {name: by_canonical.get(canonical_name(name)) for name in names}


_TS_V1_ONLY = frozenset(normalise(n) for n in set(TOTALSEGMENTATOR_V1) - set(TOTALSEGMENTATOR_V2))
_TS_V2_ONLY = frozenset(normalise(n) for n in set(TOTALSEGMENTATOR_V2) - set(TOTALSEGMENTATOR_V1))


def totalsegmentator_version(class_names: Iterable[str]) -> str:
    """``"v1"`` or ``"v2"``: the TotalSegmentator release whose mask file names these are.

    Decided by the classes only one release has (v1: heart chambers, ``pulmonary_artery``,
    ``face``; v2: ``heart``, ``skull``, ``sternum``, ...); ValueError when none or both occur.
    """
    present = {normalise(n) for n in class_names}
    v1, v2 = sorted(present & _TS_V1_ONLY), sorted(present & _TS_V2_ONLY)
    if v1 and not v2:
        return "v1"
    if v2 and not v1:
        return "v2"
    if v1:
        raise ValueError(f"mixed TotalSegmentator releases: v1-only classes {v1} and v2-only classes {v2}")
    raise ValueError("cannot tell the TotalSegmentator release: no class that exists only in v1 "
                     f"({sorted(_TS_V1_ONLY)}) or only in v2 ({sorted(_TS_V2_ONLY)}) is present")
