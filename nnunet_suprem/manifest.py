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
"""
from __future__ import annotations

from typing import Iterable, Mapping

MANIFEST_KEY = "partial_labels"
MANIFEST_FORMAT = "nnunet-suprem/1"


def build_manifest(groups: Mapping[str, tuple[Iterable[str], Iterable[str]]]) -> dict:
    """Manifest from ``{group: (annotated class names, case identifiers)}``."""
    return {
        "format": MANIFEST_FORMAT,
        "groups": {
            name: {"annotated": list(annotated), "cases": sorted(cases)}
            for name, (annotated, cases) in groups.items()
        },
    }


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
    manifest = dataset_json.get(MANIFEST_KEY)
    if manifest is None:
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"dataset.json '{MANIFEST_KEY}': unknown format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}, "
                         f"expected {MANIFEST_FORMAT!r}")
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


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
