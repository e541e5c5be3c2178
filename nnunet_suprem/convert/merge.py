"""``nnunet-suprem merge``: merge nnU-Net raw datasets with different label sets into one partial-label dataset.

Every source label is mapped to a class of the target taxonomy, or to a set of classes ("one of these": a
side-less ``kidney``), by the table of public datasets (:mod:`nnunet_suprem.public_datasets`), canonical name and
synonyms (``taxonomy.match_classes``; a source with two labels of one class is refused), both sides of a side-less
name, or a user mapping file::

    {
      "*":               {"tumor": null},                  # any source: drop (voxels become background)
      "Dataset011_BTCV": {"rad": "adrenal_gland_right",    # this source only (name or ID)
                          "unclear": "ignore",             # voxels become nnU-Net's ignore label
                          "kidney": ["kidney_left", "kidney_right"]}  # a set
    }

A set's voxels get a value of their own above every class value (:mod:`nnunet_suprem.manifest`). Sources in
nnU-Net's region-based format (KiTS23) are read by value: a value means its smallest region less the regions inside.

Images are not copied: the merged dataset.json lists every case under ``dataset`` with a
relative path to the source image. Only the relabelled label maps are written. Case
identifiers are prefixed with the source name. The manifest records, per source, the
classes that source annotates (intersected with the source's own manifest, if any).
"""
from __future__ import annotations

import functools
import itertools
import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from nnunet_suprem.convert.cases import CaseResult, Problem
from nnunet_suprem.convert.driver import CaseJob, Conversion, add_common_arguments, run_conversion
from nnunet_suprem.convert.staging import DatasetStaging
from nnunet_suprem.fileio import (NIFTI_ENDINGS, NNUNET_TOLERANCE, atomic_path, check_file_ending, check_image_file,
                                  check_name, check_single_volume, check_text, geometry, grid_mismatch, read_header)
from nnunet_suprem.manifest import annotated_classes_by_case, foreground_labels
from nnunet_suprem.nnunet_env import CANONICAL_READER, raw_root
from nnunet_suprem.public_datasets import public_dataset_meanings
from nnunet_suprem.taxonomy import (KNOWN_CLASSES, TAXONOMIES, both_sides, canonical_name, in_taxonomy_order,
                                    label_dict, match_classes, resolve_classes, set_name)

TARGETS = ("abdomenatlas1.1", "union")
DROP, IGNORE = None, "ignore"
Target = str | tuple[str, ...] | None
"""What a source label becomes: a class, a set of classes ("one of these"), DROP (background) or IGNORE."""


def load_mapping_file(path: str | Path | None) -> dict[str, dict[str, Target]]:
    """The ``--map`` file: ``{source or "*": {source label: target class | [target classes] | null | "ignore"}}``."""
    if path is None:
        return {}
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--map {path}: {e}") from e
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
        raise ValueError(f"--map {path}: expected {{\"*\" or source: {{label: class | [classes] | null | "
                         "\"ignore\"}}")
    for source, labels in mapping.items():
        for label, target in labels.items():
            where = f"target of {source!r}/{label!r}"
            if isinstance(target, list):
                if not target:
                    raise ValueError(f"--map {path}: {where} is an empty list of classes")
                labels[label] = tuple(check_text(t, where, f"--map {path}") for t in target)
            elif target is not None:
                check_text(target, where, f"--map {path}")
    return mapping


def label_regions(dataset_json: Mapping, json_file: Path) -> dict[str, frozenset[int]]:
    """``{label: the integer values it covers}`` of a dataset.json's ``labels``, checked; ValueError naming
    ``json_file`` and the label otherwise.

    An integer label covers its value alone: background 0, every other label a distinct positive integer.
    nnU-Net's region-based labels (``"kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2``) must nest or be
    disjoint, so that each value has one smallest region, and ``regions_class_order`` (the value nnU-Net writes for
    each region, in label order) must give each region a value whose smallest region it is.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        raise ValueError(f"{json_file}: labels is not a mapping of names to values")
    regions: dict[str, frozenset[int]] = {}
    for label, value in labels.items():
        check_text(label, "label name", json_file)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"{json_file}: label {label!r} has value {value!r}, not a non-negative integer or a "
                             "region of them")
        if (0 in values) != (label == "background") or (label == "background" and values != [0]):
            raise ValueError(f"{json_file}: label {label!r} has value {value!r}; only 'background' may be 0, and it "
                             "must be")
        regions[label] = frozenset(values)
    for (a, ra), (b, rb) in itertools.combinations(regions.items(), 2):
        if ra == rb or (ra & rb and not (ra < rb or rb < ra)):
            what = "share the value" if len(ra) == len(rb) == 1 else "are regions that overlap without nesting:"
            raise ValueError(f"{json_file}: labels {a!r} and {b!r} {what} {sorted(ra & rb)}")
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        _check_regions_class_order(regions, dataset_json.get("regions_class_order"), json_file)
    return regions


def smallest_region(value: int, regions: Mapping[str, frozenset[int]]) -> str:
    """The label whose region is the smallest holding ``value`` (regions nest: one exists if any holds it)."""
    return min((label for label, r in regions.items() if value in r), key=lambda label: len(regions[label]))


def _check_regions_class_order(regions: Mapping[str, frozenset[int]], order: object, json_file: Path) -> None:
    foreground = [label for label in regions if label not in ("background", "ignore")]
    if not (isinstance(order, list) and len(order) == len(foreground) and all(isinstance(v, int) for v in order)):
        raise ValueError(f"{json_file}: region-based labels need regions_class_order, one value per region "
                         f"{foreground}; found {order!r}")
    for label, value in zip(foreground, order):
        if value not in regions[label] or smallest_region(value, regions) != label:
            raise ValueError(f"{json_file}: regions_class_order gives region {label!r} the value {value}, which "
                             "is not a value whose smallest region it is")


class Source:
    """A raw dataset to merge: its folder, dataset.json, files and case prefix."""

    def __init__(self, dataset: str | int, raw_folder: Path):
        from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        dataset = str(dataset)
        if dataset.isdigit():
            try:
                dataset = convert_id_to_dataset_name(int(dataset))
            except RuntimeError:
                raise FileNotFoundError(f"no dataset with ID {dataset} in $nnUNet_raw ({raw_folder})") from None
        name = check_name(dataset, "source dataset", "merge")
        if not (name.startswith("Dataset") and name[7:10].isdigit() and name[10:11] == "_" and name[11:]):
            raise ValueError(f"merge: source {name!r} is neither a dataset ID nor a DatasetXXX_Name folder name")
        self.folder = raw_folder / name
        json_file = self.folder / "dataset.json"
        if not json_file.is_file():
            raise FileNotFoundError(f"{json_file} not found (is {name} in $nnUNet_raw?)")
        self.name = name
        self.id = name[7:10]
        try:
            self.dataset_json = json.loads(json_file.read_text())
            labels, _ = self.dataset_json["labels"], self.dataset_json["channel_names"]
            check_file_ending(self.dataset_json["file_ending"], json_file)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{json_file}: not a usable nnU-Net dataset.json ({e})") from None
        self.regions = label_regions(self.dataset_json, json_file)
        self.region_based = any(isinstance(v, (list, tuple)) for v in labels.values())
        try:
            self.files = get_filenames_of_train_images_and_targets(str(self.folder), self.dataset_json)
        except (OSError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{json_file}: cannot list its cases ({type(e).__name__}: {e})") from None
        self.json_file = json_file
        self.prefix = name[11:]

    @property
    def reading_json(self) -> dict:
        """What reading one of its label maps needs of the dataset.json (labels, file ending, reader): sent with every
        case instead of the whole file, whose manifest and ``dataset`` entries grow with the number of cases."""
        return {key: self.dataset_json[key] for key in ("labels", "file_ending", "overwrite_image_reader_writer")
                if key in self.dataset_json}

    def label_targets(self, mapping: Mapping[str, Mapping], targets: Sequence[str] | None) -> dict[str, Target]:
        """``{source label: class | set of classes | None (drop) | "ignore"}``; raises listing what cannot be mapped.

        In this order: ``mapping``; the table of the public dataset the source is
        (:mod:`nnunet_suprem.public_datasets`); the class of the same name; both sides of a side-less name
        (``kidney``) unless another label of the source has a side of it. Two labels of one class are an error
        (:func:`nnunet_suprem.taxonomy.resolve_classes`), whether mapped or not. With a fixed taxonomy, a set from
        the table or a side-less name keeps the classes the taxonomy has.
        """
        user = {**mapping.get("*", {}), **mapping.get(self.id.lstrip("0"), {}), **mapping.get(self.id, {}),
                **mapping.get(self.name, {})}
        labels, source = foreground_labels(self.dataset_json), f"{self.json_file} labels"
        if targets is None:
            by_name = {label: canonical for canonical, label in resolve_classes(labels, source).items()}
            by_name = {label: c if c in KNOWN_CLASSES else None for label, c in by_name.items()}
        else:
            by_name = match_classes(labels, targets, names_source=source, targets_source="target taxonomy")
        public = public_dataset_meanings(self.name, self.dataset_json, self.region_based)
        table = public[1] if public else {}
        named = {label: by_name[label] for label in labels if by_name[label] is not None and label not in table}
        sided = {c for meaning in (*named.values(), *table.values()) for c in _classes(meaning)}
        coarse = {label: sides for label in labels if label not in named and label not in table
                  and (sides := both_sides(label)) and sided.isdisjoint(sides)}
        resolved = {**named, **{label: _within(m, targets) for label, m in {**table, **coarse}.items()}}
        if targets is None:  # the union: a name of no known class is a class of its own
            resolved.update({label: canonical_name(label) for label in labels if label not in resolved})
        resolved.update(user)
        unmapped = [label for label in labels if label not in resolved or resolved[label] == ()]
        if unmapped:
            raise ValueError(f"{self.name}: labels {unmapped} match no class of the target taxonomy; map them "
                             f"with --map (a class name, a list of classes, null to drop, or \"ignore\")")
        return {label: _one_or_set(resolved[label]) for label in labels}

    def value_targets(self, label_targets: Mapping[str, Target]) -> dict[int, Target]:
        """``{label value: what its voxels become}``: the meaning of its smallest region less the classes of the
        regions inside that one (KiTS23's ``masses`` (2, 3) less ``tumor`` 2: value 3 is the cyst)."""
        foreground = {label: r for label, r in self.regions.items() if label not in ("background", "ignore")}
        by_value: dict[int, Target] = dict.fromkeys(self.regions.get("ignore", ()), IGNORE)
        for label, region in foreground.items():
            target = label_targets[label]
            inner = {c for other, r in foreground.items() if r < region for c in _classes(label_targets[other])}
            for value in region:
                if smallest_region(value, foreground) != label:
                    continue
                if target in (DROP, IGNORE):
                    by_value[value] = target
                    continue
                rest = tuple(c for c in _classes(target) if c not in inner)
                if not rest:
                    raise ValueError(f"{self.json_file}: value {value} of region {label!r} means {target} less "
                                     f"the regions inside it ({sorted(inner)}): nothing; map {label!r} with --map")
                by_value[value] = _one_or_set(rest)
        return by_value


def _classes(target: Target) -> tuple[str, ...]:
    """The classes a target names (none for DROP and IGNORE)."""
    if target in (DROP, IGNORE):
        return ()
    return target if isinstance(target, tuple) else (target,)


def _one_or_set(target: Target) -> Target:
    """A set of one class is that class."""
    return target[0] if isinstance(target, tuple) and len(set(target)) == 1 else target


def _within(meaning: Target, targets: Sequence[str] | None) -> Target:
    """A built-in meaning with only the classes of a fixed taxonomy (``()``: none of them)."""
    if meaning in (DROP, IGNORE) or targets is None:
        return meaning
    return tuple(c for c in _classes(meaning) if c in targets)


def relabel_case(case: str, source_label: str, images: list[str], dataset_json: dict, lut: np.ndarray,
                 values: frozenset[int], annotated: list[str], image_out: Path, label_out: Path) -> CaseResult:
    """Write ``lut[source label map]`` with nnU-Net's reader/writer for the source's file format
    (``dataset_json``: :attr:`Source.reading_json`).

    ``values``: the label values the source's dataset.json gives; a label map with another value skips the case.
    The source ``images`` are fully checked, not copied: ``image_out`` is unused, merged
    datasets reference the source images. A label map off its images' grid (size, or spacing, origin and
    direction beyond the tolerance of nnU-Net's ``verify_dataset_integrity``) skips the case.
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    result = CaseResult(case, annotated)
    grids = {}
    for file in (*images, source_label):
        try:
            check_image_file(file)
            header = read_header(file)
            if file.endswith(NIFTI_ENDINGS):  # nnU-Net would read a 4D file as several channels
                check_single_volume(header, file)
            grids[file] = geometry(header)
        except (ValueError, RuntimeError) as e:
            result.problems.append(Problem.from_error(file, e))
    if not result.converted:
        return result
    for image in images:
        if mismatch := grid_mismatch(grids[source_label], grids[image], NNUNET_TOLERANCE):
            result.problems.append(Problem(source_label, f"not on the grid of its image {image}: {mismatch}", True))
            return result
    try:
        rw = determine_reader_writer_from_dataset_json(dataset_json, source_label, verbose=False)()
        seg, properties = rw.read_seg(source_label)
    except Exception as e:  # nnU-Net's readers raise whatever their library raises
        result.problems.append(Problem(source_label, f"unreadable: {e}", True))
        return result
    unexpected = [v for v in np.unique(seg).tolist() if v not in values]
    if unexpected:
        result.problems.append(Problem(source_label, f"label values {unexpected[:10]} are not in the source "
                                                     "dataset.json labels", True))
        return result
    with atomic_path(label_out) as tmp:
        rw.write_seg(lut[seg[0].astype(np.int64)], tmp, properties)
    return result


def merge_datasets(sources: Sequence[str | int], dataset_id: int, name: str, taxonomy: str = "abdomenatlas1.1",
                   mapping_file: str | Path | None = None, num_processes: int = 1, overwrite: bool = False,
                   strict: bool = False, keep_orientation: bool = False) -> Path:
    """Merge raw datasets into ``$nnUNet_raw/DatasetXXX_name``; returns its path."""
    if len(set(map(str, sources))) != len(sources):
        raise ValueError(f"a source is listed twice: {list(sources)}")
    mapping = load_mapping_file(mapping_file)
    root = raw_root()
    loaded = [Source(s, root) for s in sources]
    _check_compatible(loaded)
    targets = None if taxonomy == "union" else TAXONOMIES[taxonomy]
    label_targets = {s.name: s.label_targets(mapping, targets) for s in loaded}
    value_targets = {s.name: s.value_targets(label_targets[s.name]) for s in loaded}
    used = {c for m in label_targets.values() for t in m.values() for c in _classes(t)}
    unknown = sorted(used - set(targets)) if targets is not None else []
    if unknown:
        raise ValueError(f"--map names classes outside {taxonomy}: {unknown}")
    classes = [c for c in targets if c in used] if targets is not None else in_taxonomy_order(used)
    labels = label_dict(classes)
    if any(IGNORE in m.values() or "ignore" in s.dataset_json["labels"] for s, m in
           zip(loaded, label_targets.values())):
        labels["ignore"] = len(labels)
    sets = set_values((t for m in value_targets.values() for t in m.values() if isinstance(t, tuple)), labels)

    prefixes = [s.prefix for s in loaded]
    file_ending = loaded[0].dataset_json["file_ending"]
    reorient = not keep_orientation and file_ending in (".nii.gz", ".nii")
    conversion = Conversion([], labels, channel_names=loaded[0].dataset_json["channel_names"],
                            reader=CANONICAL_READER if reorient else loaded[0].dataset_json.get(
                                "overwrite_image_reader_writer"),
                            sets={set_name(c): (value, list(c)) for c, value in sets.items()})
    staging = DatasetStaging(dataset_id, name, {
        "converter": "merge", "sources": [str(s.folder) for s in loaded], "taxonomy": taxonomy,
        "map": mapping}, overwrite)
    for source in loaded:
        targets_of = label_targets[source.name]
        prefix = source.prefix if prefixes.count(source.prefix) == 1 else source.name
        lut = _lookup_table(value_targets[source.name], labels, sets)
        values = frozenset(v for region in source.regions.values() for v in region)
        source_annotated = annotated_classes_by_case(source.dataset_json) or {}
        reading_json = source.reading_json
        for case, files in sorted(source.files.items()):
            merged_case = f"{prefix}_{case}"
            try:
                check_name(case, "case identifier", source.json_file)
            except ValueError as e:
                problem = Problem.from_error(source.json_file, e)
                conversion.skipped.append(CaseResult(repr(merged_case), problems=[problem]))
                continue
            own = source_annotated.get(case, foreground_labels(source.dataset_json))
            annotated = [c for c in classes if c in {t for label in own for t in _classes(targets_of[label])}]
            conversion.sources[merged_case] = prefix
            entry = {"images": [os.path.relpath(i, staging.final) for i in files["images"]],
                     "label": f"labelsTr/{merged_case}{file_ending}"}
            conversion.jobs.append(CaseJob(
                merged_case, functools.partial(relabel_case, merged_case, files["label"], files["images"],
                                               reading_json, lut, values, annotated),
                (Path(files["label"]), *map(Path, files["images"])), f"{source.json_file} case {case!r}",
                dataset_entry=entry, writes_image=False))
    conversion.notes.append(f"label mapping: {label_targets}")
    conversion.notes.extend(f"set {set_name(c)!r} (value {value}): one of {list(c)}" for c, value in sets.items())
    return run_conversion(conversion, staging, ", ".join(s.name for s in loaded), num_processes, strict,
                          file_ending=file_ending)


def _check_compatible(sources: list[Source]) -> None:
    for what in ("channel_names", "file_ending"):
        values = {s.name: s.dataset_json[what] for s in sources}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            raise ValueError(f"the sources differ in {what}: {values}; only datasets with the same {what} can "
                             "be merged")


def set_values(sets: Iterable[tuple[str, ...]], labels: Mapping[str, int]) -> dict[tuple[str, ...], int]:
    """``{set's classes in label order: its label value}``: one value per distinct set, after every value of
    ``labels`` (the ignore label included), in the order of their classes' labels."""
    distinct = {tuple(sorted(set(s), key=labels.__getitem__)) for s in sets}
    ordered = sorted(distinct, key=lambda s: [labels[c] for c in s])
    return {classes: max(labels.values()) + 1 + i for i, classes in enumerate(ordered)}


def _lookup_table(value_targets: Mapping[int, Target], labels: Mapping[str, int],
                  sets: Mapping[tuple[str, ...], int]) -> np.ndarray:
    """Merged label value of every source label value (0 where the source gives none)."""
    by_classes = {frozenset(c): value for c, value in sets.items()}
    lut = np.zeros(max(value_targets, default=0) + 1, dtype=np.int64)
    for value, target in value_targets.items():
        if target is not DROP:
            lut[value] = by_classes[frozenset(target)] if isinstance(target, tuple) else labels[target]
    return lut


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "merge", help="merge nnU-Net raw datasets with different label sets into one partial-label dataset",
        description="Relabel every case of the source datasets into one taxonomy (names + synonyms + --map), "
                    "record per source which classes it annotates (dataset.json manifest) and reference the "
                    "source images instead of copying them. Only the relabelled label maps are written.")
    p.add_argument("sources", nargs="+", metavar="SRC_ID", help="source dataset IDs or names in $nnUNet_raw")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset ID of the merged dataset")
    p.add_argument("--name", required=True, help="name of the merged dataset")
    p.add_argument("--taxonomy", choices=TARGETS, default="abdomenatlas1.1",
                   help="target classes: AbdomenAtlas 1.1 (default) or the union of the source classes")
    p.add_argument("--map", dest="mapping_file",
                   help="JSON mapping file for labels names do not resolve: {source or \"*\": {label: class, "
                        "[classes] (a set), null (drop) or \"ignore\"}}")
    add_common_arguments(p)
    p.set_defaults(func=lambda a: print(merge_datasets(
        a.sources, a.dataset_id, a.name, a.taxonomy, a.mapping_file, num_processes=a.num_processes,
        overwrite=a.overwrite, strict=a.strict, keep_orientation=a.keep_orientation)))
