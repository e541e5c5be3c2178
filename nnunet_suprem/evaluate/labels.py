"""Label sets of predictions and ground truth, and which class of one is which class of the other.

Classes are paired by their taxonomy canonical name (``postcava`` = ``inferior_vena_cava``,
``Right Kidney`` = ``kidney_right``; sides never match across) through
:func:`nnunet_suprem.taxonomy.match_classes`, after the explicit pairs of a ``--map`` file. A label
set or ``--classes`` list with two names of one class is refused (``taxonomy.resolve_classes``).

A ground truth whose dataset.json manifest has label sets (``manifest.label_sets``: KiTS23's kidney
without side) pairs each set with the predicted classes of its classes (:func:`with_label_sets`):
the set is scored as their union.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_suprem.manifest import (MANIFEST_FORMAT_WITH_SETS, MANIFEST_KEY, annotated_classes_by_case,
                                    foreground_labels, label_sets)
from nnunet_suprem.taxonomy import TAXONOMIES, canonical_name, label_dict, match_classes, resolve_classes

DEFAULT_FILE_ENDING = ".nii.gz"


@dataclass(frozen=True)
class LabelSpec:
    """Classes of a label-map folder: ``{name: value}``, the ignore value, the file ending, annotations per case and
    label sets ``{set name: (value, class names)}``."""
    values: dict[str, int]
    ignore_value: int | None = None
    file_ending: str = DEFAULT_FILE_ENDING
    annotated: dict[str, frozenset[str]] = field(default_factory=dict)
    sets: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)


def read_dataset_json(path: str | Path) -> LabelSpec:
    """Label spec of an nnU-Net ``dataset.json``, with its partial-label manifest (cases it lists annotate only some classes)."""
    path = Path(path)
    try:
        dataset = json.loads(path.read_text())
        labels = foreground_labels(dataset)
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: not an nnU-Net dataset.json with 'labels' ({e})") from None
    bad = sorted(name for name, value in dataset["labels"].items() if not isinstance(value, int))
    if bad:
        raise ValueError(f"{path}: region-based labels {bad} are not supported (need one integer value per class)")
    try:
        annotated = annotated_classes_by_case(dataset) or {}
        sets = {name: (value, classes) for value, (name, classes) in label_sets(dataset).items()}
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return LabelSpec(labels, dataset["labels"].get("ignore"), dataset.get("file_ending", DEFAULT_FILE_ENDING),
                     annotated, sets)


def parse_label_spec(items: Sequence[str]) -> LabelSpec:
    """``--*-labels`` argument: a dataset.json, a taxonomy name (``abdomenatlas1.1``, ...), class names in
    label-value order (1, 2, ...) or ``NAME=VALUE`` pairs, among which ``NAME=VALUE=CLASS+CLASS...`` are label sets
    (``kidney=4=kidney_left+kidney_right``)."""
    if len(items) == 1 and items[0].endswith(".json"):
        return read_dataset_json(items[0])
    if len(items) == 1 and items[0] in TAXONOMIES:
        return LabelSpec(foreground_labels({"labels": label_dict(TAXONOMIES[items[0]])}))
    sets = [item for item in items if item.count("=") == 2]
    if sets:
        spec = parse_label_spec([item for item in items if item not in sets])
        return replace(spec, sets=_label_set_spec(spec.values, sets))
    pairs = [item.partition("=") for item in items]
    if all(sep for _, sep, _ in pairs):
        try:
            values = {name: int(value) for name, _, value in pairs}
        except ValueError:
            raise ValueError(f"label values must be integers: {list(items)}") from None
    elif not any(sep for _, sep, _ in pairs):
        values = foreground_labels({"labels": label_dict(list(items))})
    else:
        raise ValueError(f"give either class names in label-value order or NAME=VALUE pairs, not both: {list(items)}")
    if len(values) != len(items) or len(set(values.values())) != len(values) or min(values.values()) <= 0:
        raise ValueError(f"class names and label values must be distinct, values positive: {list(items)}")
    return LabelSpec(values)


def _label_set_spec(values: Mapping[str, int], items: Sequence[str]) -> dict[str, tuple[int, frozenset[str]]]:
    """Label sets ``{name: (value, classes)}`` of ``NAME=VALUE=CLASS+CLASS...`` items, checked as the manifest's."""
    try:
        entries = {name: {"value": int(value), "classes": classes.split("+")}
                   for name, value, classes in (item.split("=") for item in items)}
    except ValueError:
        raise ValueError(f"label values must be integers: {list(items)}") from None
    dataset = {"labels": dict(values), MANIFEST_KEY: {"format": MANIFEST_FORMAT_WITH_SETS, "groups": {},
                                                       "sets": entries}}
    return {name: (value, classes) for value, (name, classes) in label_sets(dataset).items()}


def load_mapping(path: str | Path) -> dict[str, str | None]:
    """A ``--map`` file: JSON ``{prediction class: ground-truth class or null}``."""
    path = Path(path)
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, (str, type(None))) for v in mapping.values()):
        raise ValueError(f"{path}: expected a JSON object {{prediction class: ground-truth class or null}}")
    return mapping


@dataclass(frozen=True)
class LabelSetPair:
    """A ground-truth label set, its ground-truth classes and the prediction classes they pair with."""
    name: str
    reference_classes: tuple[str, ...]
    prediction_classes: tuple[str, ...]

    @property
    def prediction_name(self) -> str:
        """The union's name in ``pairs`` and the outputs: ``kidney_left + kidney_right``."""
        return " + ".join(self.prediction_classes)


@dataclass(frozen=True)
class ClassMatching:
    """Evaluated ``pairs`` (ground-truth class or set, prediction class or union) in ground-truth order, the classes
    left out, and the label sets among the pairs (scored as unions) or left out (a class of theirs is not paired)."""
    pairs: tuple[tuple[str, str], ...]
    prediction_only: tuple[str, ...]
    reference_only: tuple[str, ...]
    sets: tuple[LabelSetPair, ...] = ()
    unpaired_sets: tuple[str, ...] = ()

    def messages(self) -> list[str]:
        out = []
        if self.unpaired_sets:
            out.append(f"skipped, a class of the set is not evaluated: {', '.join(self.unpaired_sets)}")
        if self.prediction_only:
            out.append(f"skipped, not in the ground truth: {', '.join(self.prediction_only)}")
        if self.reference_only:
            out.append(f"skipped, not predicted: {', '.join(self.reference_only)}")
        return out


def _lookup(name: str, classes: Mapping[str, str], what: str) -> str:
    """The class of ``classes`` (``{canonical name: class}``) that ``name`` names; ValueError naming ``what``."""
    found = classes.get(canonical_name(name))
    if found is None:
        raise ValueError(f"{what} {name!r} is not among {list(classes.values())}")
    return found


def mapping_for(mapping: Mapping[str, str | None], classes: Sequence[str], source: str) -> dict[str, str | None]:
    """The entries of a ``--map`` whose prediction class is one of ``classes`` (from ``source``)."""
    known = resolve_classes(classes, source)
    return {prediction: target for prediction, target in mapping.items() if canonical_name(prediction) in known}


def match_label_sets(prediction: Sequence[str], reference: Sequence[str],
                     mapping: Mapping[str, str | None] | None = None, classes: Sequence[str] | None = None,
                     sources: tuple[str, str] = ("prediction classes", "ground-truth classes")) -> ClassMatching:
    """Pair prediction and ground-truth classes: ``mapping`` first, then by canonical name.

    ``classes`` (names or synonyms of either side) restricts the pairs; the classes it leaves
    out are not reported as skipped. ValueError when a label set (named by ``sources``) or
    ``classes`` holds two names of one class, when a mapping or ``classes`` entry names an
    unknown class, or when no class is left to evaluate.
    """
    predicted, referenced = resolve_classes(prediction, sources[0]), resolve_classes(reference, sources[1])
    explicit: dict[str, str | None] = {}
    for source, target in (mapping or {}).items():
        pred = _lookup(source, predicted, "--map: prediction class")
        explicit[pred] = None if target is None else _lookup(target, referenced, f"--map: ground-truth class for {source!r}")
    claimed = [t for t in explicit.values() if t is not None]
    if len(set(claimed)) != len(claimed):
        raise ValueError(f"--map: several prediction classes map to one ground-truth class: {claimed}")
    automatic = match_classes([p for p in prediction if p not in explicit], [r for r in reference if r not in claimed])
    by_reference = {target: pred for pred, target in {**automatic, **explicit}.items() if target is not None}
    pairs = [(r, by_reference[r]) for r in reference if r in by_reference]
    skipped = (tuple(p for p in prediction if p not in by_reference.values()),
               tuple(r for r in reference if r not in by_reference))
    if classes:
        wanted = resolve_classes(classes, "--classes")
        known = {canonical_name(n) for pair in pairs for n in pair}
        unknown = [name for canonical, name in wanted.items() if canonical not in known]
        if unknown:
            raise ValueError(f"--classes {unknown} are not classes of both label sets; evaluable: "
                             f"{[r for r, _ in pairs]}")
        pairs = [(r, p) for r, p in pairs if wanted.keys() & {canonical_name(r), canonical_name(p)}]
        skipped = (), ()
    if not pairs:
        raise ValueError(f"no prediction class {list(prediction)} matches a ground-truth class {list(reference)}; "
                         "pair them with --map")
    return ClassMatching(tuple(pairs), *skipped)


def with_label_sets(matching: ClassMatching, sets: Mapping[str, tuple[int, frozenset[str]]]) -> ClassMatching:
    """``matching`` plus a pair per ground-truth label set whose classes are all paired: (set, union of their
    prediction classes), after the classes."""
    paired = dict(matching.pairs)
    found, unpaired = [], []
    for name, (_, classes) in sets.items():
        members = tuple(c for c in paired if c in classes)  # ground-truth order
        if len(members) == len(classes):
            found.append(LabelSetPair(name, members, tuple(paired[c] for c in members)))
        else:
            unpaired.append(name)
    return ClassMatching((*matching.pairs, *((s.name, s.prediction_name) for s in found)), matching.prediction_only,
                         matching.reference_only, tuple(found), tuple(unpaired))
