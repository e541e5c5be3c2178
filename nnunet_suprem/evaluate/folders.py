"""Prediction and ground-truth folders in either layout, read one case at a time.

Layouts (detected from the folder's content):
- label maps, as nnU-Net writes them: ``<case><file_ending>``, class values from a dataset.json
  (``--*-labels``, else ``dataset.json`` in the folder or beside it, as in nnU-Net raw datasets);
- per-organ mask folders, as AbdomenAtlas and TotalSegmentator ship them:
  ``<case>/segmentations/<class>.nii.gz``; a missing mask file means the case does not annotate
  that class (an error in a prediction).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from nnunet_suprem.evaluate.labels import DEFAULT_FILE_ENDING, parse_label_spec, read_dataset_json
from nnunet_suprem.evaluate.metrics import Box, union_box
from nnunet_suprem.fileio import NIFTI_ENDINGS, Geometry, check_same_grid, geometry, read_volume
from nnunet_suprem.mask_folders import MASKS, case_folders, folder_classes, has_masks, mask_files

IMAGE_ENDINGS = (*NIFTI_ENDINGS, ".mha", ".nrrd")


@dataclass(frozen=True)
class Region:
    """Where one class of a case is: voxels of ``array`` equal to ``value``, all inside ``box`` (None: empty)."""
    array: np.ndarray
    value: int
    box: Box | None

    def mask(self, box: Box) -> np.ndarray:
        return self.array[box] == self.value


@dataclass(frozen=True)
class UnionRegion:
    """The union of ``parts`` (a label set: its voxels and its classes' voxels, or the predictions of its classes)."""
    parts: tuple[Region, ...]

    @property
    def box(self) -> Box | None:
        return functools.reduce(union_box, (part.box for part in self.parts), None)

    def mask(self, box: Box) -> np.ndarray:
        return np.logical_or.reduce([part.mask(box) for part in self.parts])


@dataclass
class Segmentation:
    """One case in memory: a :class:`Region` per class, the voxels to ignore, and the grid of ``grid_file``."""
    regions: dict[str, Region | UnionRegion]
    ignore: Region | None
    grid: Geometry
    grid_file: Path

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel spacing in mm in array axis order (SimpleITK arrays are z, y, x)."""
        return self.grid[1][::-1]


def _read(path: Path) -> tuple[np.ndarray, Geometry]:
    """A segmentation's voxels as non-negative integers, and its grid."""
    array, image = read_volume(path)
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise ValueError(f"{path}: segmentation has non-integer values")
        array = array.astype(np.int32)
    elif array.dtype.kind not in "biu":
        raise ValueError(f"{path}: segmentation has pixel type {array.dtype}")
    if array.dtype.kind == "i" and array.min(initial=0) < 0:
        raise ValueError(f"{path}: segmentation has negative values")
    return array, geometry(image)


@dataclass(frozen=True)
class LabelMapCase:
    """A case stored as one label map with ``values[class]`` per class (and label set)."""
    path: Path
    values: Mapping[str, int]
    ignore_value: int | None = None

    def read(self, classes: Sequence[str]) -> Segmentation:
        """Read the file once and locate every class of ``classes`` (one pass over the array)."""
        array, grid = _read(self.path)
        wanted = [self.values[c] for c in classes] + ([self.ignore_value] if self.ignore_value is not None else [])
        boxes = ndimage.find_objects(array, max_label=max(wanted))
        region = {v: Region(array, v, boxes[v - 1]) for v in wanted}
        ignore = region[self.ignore_value] if self.ignore_value is not None else None
        return Segmentation({c: region[self.values[c]] for c in classes}, ignore, grid, self.path)


@dataclass(frozen=True)
class MaskFolderCase:
    """A case stored as one binary mask file per class (``files``; a class without a file is not annotated)."""
    path: Path
    files: Mapping[str, Path]

    def read(self, classes: Sequence[str]) -> Segmentation:
        """Read the mask files of ``classes`` that exist (all on one grid, else ValueError naming two of them)."""
        regions: dict[str, Region] = {}
        first: tuple[Geometry, Path] | None = None
        for name in classes:
            if name not in self.files:
                continue
            array, grid = _read(self.files[name])
            if first is None:
                first = grid, self.files[name]
            check_same_grid(grid, self.files[name], *first)
            mask = (array != 0).view(np.uint8)
            box = ndimage.find_objects(mask)
            regions[name] = Region(mask, 1, box[0] if box else None)
        if first is None:
            raise ValueError(f"{self.path}: no mask file of the classes {list(classes)}")
        return Segmentation(regions, None, *first)


CaseSource = LabelMapCase | MaskFolderCase


@dataclass(frozen=True)
class SegmentationFolder:
    """A folder of segmentations: its classes (label order), cases and the classes each case annotates."""
    path: Path
    layout: str
    classes: tuple[str, ...]
    cases: Mapping[str, CaseSource]
    annotated: Mapping[str, frozenset[str]]  # cases annotating fewer than all classes
    sets: Mapping[str, tuple[int, frozenset[str]]] = field(default_factory=dict)  # label sets: (value, classes)

    def annotated_classes(self, case: str) -> frozenset[str]:
        return self.annotated.get(case, frozenset(self.classes))


def _mask_folder(path: Path, labels: Sequence[str] | None, option: str) -> SegmentationFolder:
    if labels:
        raise ValueError(f"{option} applies to label maps; {path} holds per-organ mask folders "
                         f"(<case>/{MASKS}/<class>.nii.gz: class names come from the file names)")
    folders = [f for f in case_folders(path) if has_masks(f)]
    classes = tuple(folder_classes(folders, path))
    cases, annotated = {}, {}
    for folder in folders:
        files, _ = mask_files(folder / MASKS, classes)
        cases[folder.name] = MaskFolderCase(folder, files)
        if len(files) < len(classes):
            annotated[folder.name] = frozenset(files)
    return SegmentationFolder(path, "mask folders", classes, cases, annotated)


def find_dataset_json(path: Path) -> Path | None:
    """The dataset.json that names a label-map folder's classes: in ``path``, else beside it; None: neither."""
    for candidate in (path / "dataset.json", path.parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def _label_map_folder(path: Path, labels: Sequence[str] | None, option: str) -> SegmentationFolder:
    if labels:
        spec = parse_label_spec(labels)
    elif (found := find_dataset_json(path)) is not None:
        spec = read_dataset_json(found)
    else:
        raise ValueError(f"{path} holds label maps but no dataset.json is in it or beside it: name the classes "
                         f"with {option} (a dataset.json, a taxonomy or class names in label-value order)")
    ending = spec.file_ending
    values = {**spec.values, **{name: value for name, (value, _) in spec.sets.items()}}
    cases = {f.name[: -len(ending)]: LabelMapCase(f, values, spec.ignore_value)
             for f in sorted(path.iterdir()) if f.is_file() and f.name.endswith(ending) and not f.name.startswith(".")}
    annotated = {case: classes for case, classes in spec.annotated.items() if case in cases}
    return SegmentationFolder(path, "label maps", tuple(spec.values), cases, annotated, spec.sets)


def open_folder(path: str | Path, labels: Sequence[str] | None = None, option: str = "--labels") -> SegmentationFolder:
    """Scan ``path`` (no image is read). ``labels`` is a ``--*-labels`` argument (label maps only), named ``option`` in errors."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder")
    has_files = any(f.is_file() and f.name.endswith(IMAGE_ENDINGS) for f in path.iterdir())
    has_mask_folders = any(f.is_dir() and has_masks(f) for f in path.iterdir())
    if has_files and has_mask_folders:
        raise ValueError(f"{path} holds both label-map files and <case>/{MASKS}/ folders; keep one layout per folder")
    folder = _mask_folder(path, labels, option) if has_mask_folders else _label_map_folder(path, labels, option)
    if not folder.cases:
        raise ValueError(f"{path} holds no segmentations (expected <case>{DEFAULT_FILE_ENDING} label maps or "
                         f"<case>/{MASKS}/<class>.nii.gz masks)")
    return folder
