"""``nnunet-suprem merge``: merge nnU-Net raw datasets with different label sets into one partial-label dataset.

Every source label is mapped to a class of the target taxonomy by canonical name and
synonyms (``taxonomy.match_classes``; a source with two labels of one class is refused), or by a
user mapping file::

    {
      "*":               {"tumor": null},                  # any source: drop (voxels become background)
      "Dataset011_BTCV": {"rad": "adrenal_gland_right",    # this source only (name or ID)
                          "unclear": "ignore"}             # voxels become nnU-Net's ignore label
    }

Images are not copied: the merged dataset.json lists every case under ``dataset`` with a
relative path to the source image. Only the relabelled label maps are written. Case
identifiers are prefixed with the source name. The manifest records, per source, the
classes that source annotates (intersected with the source's own manifest, if any).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_suprem.convert.cases import CaseResult, Problem
from nnunet_suprem.convert.driver import CaseJob, Conversion, add_common_arguments, run_conversion
from nnunet_suprem.convert.staging import DatasetStaging
from nnunet_suprem.fileio import (NIFTI_ENDINGS, NNUNET_TOLERANCE, atomic_path, check_file_ending, check_image_file,
                                  check_name, check_single_volume, check_text, geometry, grid_mismatch, read_header)
from nnunet_suprem.manifest import annotated_classes_by_case, foreground_labels
from nnunet_suprem.nnunet_env import CANONICAL_READER, raw_root
from nnunet_suprem.taxonomy import TAXONOMIES, in_taxonomy_order, label_dict, match_classes, resolve_classes

TARGETS = ("abdomenatlas1.1", "union")
DROP, IGNORE = None, "ignore"


def load_mapping_file(path: str | Path | None) -> dict[str, dict[str, str | None]]:
    """The ``--map`` file: ``{source or "*": {source label: target class | null | "ignore"}}``."""
    if path is None:
        return {}
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--map {path}: {e}") from e
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
        raise ValueError(f"--map {path}: expected {{\"*\" or source: {{label: class | null | \"ignore\"}}}}")
    for source, labels in mapping.items():
        for label, target in labels.items():
            if target is not None:
                check_text(target, f"target of {source!r}/{label!r}", f"--map {path}")
    return mapping


def check_label_values(labels: object, json_file: Path) -> None:
    """ValueError naming ``json_file`` and the key unless ``labels`` maps each name to its own integer value:
    background 0, every other label a distinct positive integer (else the lookup table would relabel voxels)."""
    if not isinstance(labels, dict):
        raise ValueError(f"{json_file}: labels is not a mapping of names to values")
    owner: dict[int, str] = {}
    for label, value in labels.items():
        check_text(label, "label name", json_file)
        if isinstance(value, (list, tuple)):
            raise ValueError(f"{json_file}: label {label!r} is a region {value!r}; region-based labels cannot be "
                             "merged")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{json_file}: label {label!r} has value {value!r}, not a non-negative integer")
        if (value == 0) != (label == "background"):
            raise ValueError(f"{json_file}: label {label!r} has value {value}; only 'background' may be 0, and it "
                             "must be")
        if value in owner:
            raise ValueError(f"{json_file}: labels {owner[value]!r} and {label!r} share the value {value}")
        owner[value] = label


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
        check_label_values(labels, json_file)
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

    def label_targets(self, mapping: Mapping[str, Mapping], targets: Sequence[str] | None) -> dict[str, str | None]:
        """``{source label: target class | None (drop) | "ignore"}``; raises listing what cannot be mapped.

        Labels are matched by name unless ``mapping`` names them; two labels of one class are an error
        (:func:`nnunet_suprem.taxonomy.resolve_classes`), whether mapped or not.
        """
        user = {**mapping.get("*", {}), **mapping.get(self.id.lstrip("0"), {}), **mapping.get(self.id, {}),
                **mapping.get(self.name, {})}
        labels, source = foreground_labels(self.dataset_json), f"{self.json_file} labels"
        if targets is None:
            by_name = {label: canonical for canonical, label in resolve_classes(labels, source).items()}
        else:
            by_name = match_classes(labels, targets, names_source=source, targets_source="target taxonomy")
        unmapped = [label for label in labels if label not in user and by_name[label] is None]
        if unmapped:
            raise ValueError(f"{self.name}: labels {unmapped} match no class of the target taxonomy; map them "
                             f"with --map (a class name, null to drop, or \"ignore\")")
        return {label: user[label] if label in user else by_name[label] for label in labels}


def relabel_case(case: str, source_label: str, images: list[str], dataset_json: dict, lut: np.ndarray,
                 annotated: list[str], image_out: Path, label_out: Path) -> CaseResult:
    """Write ``lut[source label map]`` with nnU-Net's reader/writer for the source's file format
    (``dataset_json``: :attr:`Source.reading_json`).

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
    known = set(dataset_json["labels"].values())
    unexpected = [v for v in np.unique(seg).tolist() if v not in known]
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
    used = {t for m in label_targets.values() for t in m.values() if t not in (DROP, IGNORE)}
    unknown = sorted(used - set(targets)) if targets is not None else []
    if unknown:
        raise ValueError(f"--map names classes outside {taxonomy}: {unknown}")
    classes = [c for c in targets if c in used] if targets is not None else in_taxonomy_order(used)
    labels = label_dict(classes)
    if any(IGNORE in m.values() or "ignore" in s.dataset_json["labels"] for s, m in
           zip(loaded, label_targets.values())):
        labels["ignore"] = len(labels)

    prefixes = [s.prefix for s in loaded]
    file_ending = loaded[0].dataset_json["file_ending"]
    reorient = not keep_orientation and file_ending in (".nii.gz", ".nii")
    conversion = Conversion([], labels, channel_names=loaded[0].dataset_json["channel_names"],
                            reader=CANONICAL_READER if reorient else loaded[0].dataset_json.get(
                                "overwrite_image_reader_writer"))
    staging = DatasetStaging(dataset_id, name, {
        "converter": "merge", "sources": [str(s.folder) for s in loaded], "taxonomy": taxonomy,
        "map": mapping}, overwrite)
    for source in loaded:
        targets_of = label_targets[source.name]
        prefix = source.prefix if prefixes.count(source.prefix) == 1 else source.name
        lut = _lookup_table(source.dataset_json["labels"], targets_of, labels)
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
            annotated = [c for c in classes if c in {targets_of[l] for l in own}]
            conversion.sources[merged_case] = prefix
            entry = {"images": [os.path.relpath(i, staging.final) for i in files["images"]],
                     "label": f"labelsTr/{merged_case}{file_ending}"}
            conversion.jobs.append(CaseJob(
                merged_case, functools.partial(relabel_case, merged_case, files["label"], files["images"],
                                               reading_json, lut, annotated),
                (Path(files["label"]), *map(Path, files["images"])), f"{source.json_file} case {case!r}",
                dataset_entry=entry, writes_image=False))
    conversion.notes.append(f"label mapping: {label_targets}")
    return run_conversion(conversion, staging, ", ".join(s.name for s in loaded), num_processes, strict,
                          file_ending=file_ending)


def _check_compatible(sources: list[Source]) -> None:
    for what in ("channel_names", "file_ending"):
        values = {s.name: s.dataset_json[what] for s in sources}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            raise ValueError(f"the sources differ in {what}: {values}; only datasets with the same {what} can "
                             "be merged")


def _lookup_table(source_labels: Mapping[str, int], targets_of: Mapping[str, str | None],
                  labels: Mapping[str, int]) -> np.ndarray:
    lut = np.zeros(max(source_labels.values()) + 1, dtype=np.int64)
    for label, value in source_labels.items():
        if label == "ignore":
            lut[value] = labels["ignore"]
        elif label != "background":
            target = targets_of[label]
            lut[value] = 0 if target is DROP else labels[target]
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
    p.add_argument("--map", dest="mapping_file", help="JSON mapping file for labels names do not resolve")
    add_common_arguments(p)
    p.set_defaults(func=lambda a: print(merge_datasets(
        a.sources, a.dataset_id, a.name, a.taxonomy, a.mapping_file, num_processes=a.num_processes,
        overwrite=a.overwrite, strict=a.strict, keep_orientation=a.keep_orientation)))
