"""Validate one case (a CT plus per-class binary masks or a combined label map) and write it in nnU-Net format.

Rules, applied to every converter:
- every NIfTI file is fully decoded first (``fileio.check_image_file``): truncated, damaged
  and NaN-holding files are fatal problems naming the file;
- the CT must be a readable 3D single-channel image; masks must have its size exactly and
  its spacing, origin and direction within ``fileio.GEOMETRY_TOLERANCE``; the label map is written
  with the CT's exact geometry;
- masks must be binary: values {0, 1} or {0, 255} (any dtype); empty masks are fine;
- overlapping masks are resolved by *smaller structure wins* (the class with fewer voxels
  in this case keeps the contested voxels, e.g. hepatic_vessel inside liver) and reported
  with the voxel counts;
- a class without a mask file is not annotated in that case (partial label), never
  silently background;
- a fatal problem (unreadable file, wrong geometry, non-binary mask) skips the case.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from nnunet_suprem.fileio import (Grid, atomic_path, check_image_file, check_single_volume, geometry, grid_mismatch,
                                  read_header, read_volume, write_image)


@dataclass
class Problem:
    file: str
    problem: str
    fatal: bool

    @classmethod
    def from_error(cls, file: str | Path, error: Exception) -> "Problem":
        """The fatal problem of ``file`` that ``error`` describes (our checks raise ValueError starting with the
        file's name, which the report already shows; readers raise RuntimeError)."""
        if isinstance(error, ValueError):
            return cls(str(file), str(error).removeprefix(f"{file}: "), True)
        return cls(str(file), f"unreadable: {str(error).strip().splitlines()[-1]}", True)


@dataclass
class CaseResult:
    case: str
    annotated: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def converted(self) -> bool:
        return not any(p.fatal for p in self.problems)

    def to_json(self) -> dict:
        return asdict(self)


def label_dtype(max_value: int) -> type:
    """The smallest unsigned integer type that holds ``max_value``."""
    return np.uint8 if max_value <= np.iinfo(np.uint8).max else np.uint16


def _read_ct(ct_path: Path, result: CaseResult) -> Grid | None:
    """The CT after a full integrity check: only its header when it is copied byte for byte (already .nii.gz),
    else the image to re-encode."""
    try:
        check_image_file(ct_path)
        ct = read_header(ct_path) if _copied_as_is(ct_path) else sitk.ReadImage(str(ct_path))
        check_single_volume(ct, ct_path)
    except (ValueError, RuntimeError) as e:
        result.problems.append(Problem.from_error(ct_path, e))
        return None
    return ct


def _copied_as_is(ct_path: Path) -> bool:
    return ct_path.name.endswith(".nii.gz")


def _read_on_grid(path: Path, ct: Grid, result: CaseResult) -> np.ndarray | None:
    """The voxels of a mask or label map on the CT's grid (decoded once, fully checked), or None."""
    try:
        array, grid = read_volume(path)
    except ValueError as e:
        result.problems.append(Problem.from_error(path, e))
        return None
    mismatch = grid_mismatch(geometry(grid), geometry(ct))
    if mismatch:
        result.problems.append(Problem(str(path), f"not on the CT's grid: {mismatch}", True))
        return None
    return array


@dataclass
class _Foreground:
    """A binary mask as its bounding box and the boolean mask inside it (organs are small: this is compact)."""
    box: tuple[slice, ...]
    inside: np.ndarray
    count: int


def _foreground(path: Path, array: np.ndarray, result: CaseResult) -> _Foreground | None:
    """The foreground of a {0,1} or {0,255} mask; None (and a fatal problem) for any other values."""
    count = np.count_nonzero(array)
    if count == 0:
        return _Foreground((slice(0, 0),) * array.ndim, np.zeros((0,) * array.ndim, dtype=bool), 0)
    top = array.max()
    exact = array.dtype.kind in "ub" and top == 1  # unsigned with max 1: values are {0, 1}
    if top not in (1, 255) or not (exact or np.count_nonzero(array == top) == count):
        shown = np.unique(array[array != 0])[:6].tolist()
        result.problems.append(Problem(str(path), f"not a binary mask: non-zero values {shown} "
                                                  "(expected only 1 or only 255)", True))
        return None
    box = []
    for axis in range(array.ndim):
        inner = array[tuple(box)] if box else array
        hits = np.flatnonzero(inner.any(axis=tuple(a for a in range(array.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return _Foreground(tuple(box), array[tuple(box)] != 0, int(count))


def _write_image(ct_path: Path, ct: Grid, image_out: Path) -> None:
    if _copied_as_is(ct_path):
        with atomic_path(image_out) as tmp:  # already in the output format (and fully checked): copy the bytes
            shutil.copyfile(ct_path, tmp)
    else:
        write_image(ct, image_out)


def _write_labels(label_array: np.ndarray, ct: Grid, label_out: Path) -> None:
    labels = sitk.GetImageFromArray(label_array)
    labels.SetSpacing(ct.GetSpacing())
    labels.SetOrigin(ct.GetOrigin())
    labels.SetDirection(ct.GetDirection())
    write_image(labels, label_out)


def convert_mask_case(case: str, ct_path: Path, masks: Mapping[str, Path], labels: Mapping[str, int],
                      image_out: Path, label_out: Path) -> CaseResult:
    """Combine per-class binary masks (``{class: file}``, a subset of ``labels``) into one label map."""
    result = CaseResult(case)
    ct = _read_ct(ct_path, result)
    if ct is None:
        return result
    foreground: dict[str, _Foreground] = {}
    for name in labels:
        if name in masks:
            mask = _read_on_grid(masks[name], ct, result)
            found = None if mask is None else _foreground(masks[name], mask, result)
            if found is not None:
                foreground[name] = found
    if not result.converted:
        return result

    label_array = np.zeros(ct.GetSize()[::-1], dtype=label_dtype(max(labels.values(), default=0)))
    value_to_name = {v: k for k, v in labels.items()}
    for name in sorted(foreground, key=lambda n: (-foreground[n].count, -labels[n])):  # larger first: smaller wins
        region, inside = label_array[foreground[name].box], foreground[name].inside
        contested = region[inside]
        contested = contested[contested > 0]
        if contested.size:
            for value, count in zip(*np.unique(contested, return_counts=True)):
                result.problems.append(Problem(
                    str(masks[name]), f"overlaps {value_to_name[int(value)]} in {int(count)} voxels; "
                                      f"assigned to {name} (smaller structure wins)", False))
        region[inside] = labels[name]
    result.annotated = [n for n in labels if n in foreground]
    _write_image(ct_path, ct, image_out)
    _write_labels(label_array, ct, label_out)
    return result


def convert_label_map_case(case: str, ct_path: Path, label_path: Path, value_map: Mapping[int, int],
                           annotated: list[str], image_out: Path, label_out: Path) -> CaseResult:
    """Relabel a combined label map (``{source value: output value}``; unlisted non-zero values are an error)."""
    result = CaseResult(case)
    ct = _read_ct(ct_path, result)
    array = None if ct is None else _read_on_grid(label_path, ct, result)
    if array is None:
        return result
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            result.problems.append(Problem(str(label_path), "label map has non-integer values", True))
            return result
        array = array.astype(np.int64)
    present = np.unique(array)
    unexpected = sorted(set(present.tolist()) - set(value_map) - {0})
    if unexpected:
        result.problems.append(Problem(str(label_path), f"unexpected label values {unexpected[:10]}", True))
        return result
    lut = np.zeros(int(present.max()) + 1, dtype=label_dtype(max(value_map.values(), default=0)))
    for source, target in value_map.items():
        if source <= present.max():
            lut[source] = target
    result.annotated = list(annotated)
    _write_image(ct_path, ct, image_out)
    _write_labels(lut[array], ct, label_out)
    return result
