"""The partial-label manifest: which classes each case really annotates.

It lives inside an nnU-Net ``dataset.json`` (so nnU-Net copies it to the preprocessed and
results folders) under the key ``partial_labels``, grouped by annotation set rather than
by case::

    "partial_labels": {
      "format": "nnunet-suprem/1",
      "groups": {
        "btcv":  {"annotated": ["aorta", "liver", ...], "cases": ["btcv_0001", ...]},
        "kits":  {"annotated": ["kidney_left", "kidney_right"], "cases": [...]}
      }
    }

Class names refer to the dataset's ``labels``. A case that no group lists annotates every
label of the dataset. A dataset.json without the key is fully annotated.

A label value may stand for a **set** of classes ("one of these": KiTS23's kidney without side).
Such values lie above every value of ``labels`` (and above its ``ignore`` label), so nnU-Net gives
them no output channel and no prediction ever holds one; the manifest names them (format 2)::

    "format": "nnunet-suprem/2",
    "sets": {"kidney": {"value": 27, "classes": ["kidney_left", "kidney_right"]}}

A group whose cases hold a set's value lists the set's classes among the classes it annotates.
"""
from __future__ import annotations

from typing import Iterable, Mapping

MANIFEST_KEY = "partial_labels"
MANIFEST_FORMAT = "nnunet-suprem/1"
MANIFEST_FORMAT_WITH_SETS = "nnunet-suprem/2"
KNOWN_FORMATS = (MANIFEST_FORMAT, MANIFEST_FORMAT_WITH_SETS)


def build_manifest(groups: Mapping[str, tuple[Iterable[str], Iterable[str]]],
                   sets: Mapping[str, tuple[int, Iterable[str]]] | None = None) -> dict:
    """Manifest from ``{group: (annotated class names, case identifiers)}`` and, if any,
    ``{set name: (label value, class names)}``."""
    manifest = {
        "format": MANIFEST_FORMAT_WITH_SETS if sets else MANIFEST_FORMAT,
        "groups": {
            name: {"annotated": list(annotated), "cases": sorted(cases)}
            for name, (annotated, cases) in groups.items()
        },
    }
    if sets:
        manifest["sets"] = {name: {"value": value, "classes": list(classes)}
                            for name, (value, classes) in sets.items()}
    return manifest


def foreground_labels(dataset_json: Mapping) -> dict[str, int]:
    """``labels`` of a dataset.json without background and without the ignore label."""
    return {name: value for name, value in dataset_json["labels"].items()
            if name not in ("background", "ignore")}


def group_of_case(dataset_json: Mapping) -> dict[str, str]:
    """``{case: manifest group}`` for every case a group lists (empty without a manifest)."""
    groups = dataset_json.get(MANIFEST_KEY, {}).get("groups", {})
    return {case: group for group, entry in groups.items() for case in entry["cases"]}


def annotated_classes_by_case(dataset_json: Mapping) -> dict[str, frozenset[str]] | None:
    """``{case: annotated class names}`` for every case a group lists, or None without a manifest.

    Raises ValueError when the manifest names an unknown class, lists a case twice or has
    an unknown format.
    """
    manifest = _checked_manifest(dataset_json)
    if manifest is None:
        return None
    known = set(foreground_labels(dataset_json))
    by_case: dict[str, frozenset[str]] = {}
    groups = manifest.get("groups")
    if not isinstance(groups, dict):
        raise ValueError(f"dataset.json '{MANIFEST_KEY}': 'groups' must be an object of groups")
    for group, entry in groups.items():
        if not (isinstance(entry, dict) and _strings(entry.get("annotated")) and _strings(entry.get("cases"))):
            raise ValueError(f"dataset.json '{MANIFEST_KEY}' group {group!r}: expected "
                             "{\"annotated\": [class names], \"cases\": [case identifiers]}")
        annotated = frozenset(entry["annotated"])
        unknown = sorted(annotated - known)
        if unknown:
            raise ValueError(f"dataset.json '{MANIFEST_KEY}' group {group!r} names classes that are not "
                             f"in 'labels': {unknown}")
        for case in entry["cases"]:
            if case in by_case:
                raise ValueError(f"dataset.json '{MANIFEST_KEY}': case {case!r} is listed in more than one group")
            by_case[case] = annotated
    return by_case


def label_sets(dataset_json: Mapping) -> dict[int, tuple[str, frozenset[str]]]:
    """``{label value: (set name, class names)}`` of the manifest's sets (empty without any).

    Raises ValueError unless every set has a distinct integer value above all values of ``labels``
    (the ignore label included) and at least two classes, all of them foreground labels.
    """
    manifest = _checked_manifest(dataset_json)
    sets = (manifest or {}).get("sets", {})
    if not isinstance(sets, dict):
        raise ValueError(f"dataset.json '{MANIFEST_KEY}': 'sets' must be an object of sets")
    known = foreground_labels(dataset_json)
    highest = max((v for v in dataset_json["labels"].values() if isinstance(v, int)), default=0)
    by_value: dict[int, tuple[str, frozenset[str]]] = {}
    for name, entry in sets.items():
        where = f"dataset.json '{MANIFEST_KEY}' set {name!r}"
        if not (isinstance(entry, dict) and _strings(entry.get("classes")) and isinstance(entry.get("value"), int)
                and not isinstance(entry.get("value"), bool)):
            raise ValueError(f"{where}: expected {{\"value\": label value, \"classes\": [class names]}}")
        value, classes = entry["value"], frozenset(entry["classes"])
        if value <= highest or value in by_value:
            raise ValueError(f"{where}: value {value} must be above every label value ({highest}) and not shared "
                             "with another set")
        if len(classes) < 2 or not classes <= set(known):
            raise ValueError(f"{where}: needs two or more classes of 'labels', got {sorted(classes)}")
        by_value[value] = (name, classes)
    return by_value


def _checked_manifest(dataset_json: Mapping) -> dict | None:
    """The manifest of a dataset.json (None without one); ValueError for an unknown format."""
    manifest = dataset_json.get(MANIFEST_KEY)
    if manifest is None:
        return None
    if not isinstance(manifest, dict) or manifest.get("format") not in KNOWN_FORMATS:
        raise ValueError(f"dataset.json '{MANIFEST_KEY}': unknown format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}, "
                         f"expected one of {list(KNOWN_FORMATS)}")
    if "sets" in manifest and manifest["format"] != MANIFEST_FORMAT_WITH_SETS:
        raise ValueError(f"dataset.json '{MANIFEST_KEY}': 'sets' needs format {MANIFEST_FORMAT_WITH_SETS!r}")
    return manifest


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
