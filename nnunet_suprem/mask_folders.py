"""The per-organ mask-folder layout of AbdomenAtlas and TotalSegmentator, read by the converters and ``evaluate``::

    <case>/ct.nii.gz
    <case>/segmentations/<class>.nii.gz   (one binary mask per class; no file: the case does not annotate it)

Mask files are matched to classes by canonical name (:func:`nnunet_suprem.taxonomy.match_classes`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nnunet_suprem.fileio import NIFTI_ENDINGS, check_name
from nnunet_suprem.taxonomy import match_classes, resolve_classes

MASKS = "segmentations"
CT_FILES = ("ct.nii.gz", "ct.nii")


def case_folders(src: Path) -> list[Path]:
    """The case folders in ``src``: sub-folders whose names do not start with '.'."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    return sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_ct(folder: Path) -> Path | None:
    """``<folder>/ct.nii.gz`` (or ``ct.nii``), None when there is none."""
    return next((folder / name for name in CT_FILES if (folder / name).is_file()), None)


def has_masks(folder: Path) -> bool:
    return (folder / MASKS).is_dir()


def _listing(folder: Path) -> tuple[list[Path], list[str]]:
    """The mask files of ``folder`` (``.nii.gz``/``.nii``, not hidden) and the names of its other ``*.nii*`` files.

    A mask file name with control characters is a ValueError naming ``folder``.
    """
    masks, other = [], []
    for path in sorted(folder.glob("*.nii*")) if folder.is_dir() else []:
        hidden = path.name.startswith(".")  # e.g. macOS ``._liver.nii.gz``
        if not hidden:
            check_name(path.name, "mask file name", folder)
        if hidden or not path.name.endswith(NIFTI_ENDINGS):
            other.append(path.name)
        else:
            masks.append(path)
    return masks, other


def _class_of(path: Path) -> str:
    """The class a mask file names, spelled as in its name (``Right Kidney.nii.gz`` -> ``Right Kidney``)."""
    return path.name[: -len(next(e for e in NIFTI_ENDINGS if path.name.endswith(e)))]


def folder_classes(cases: Sequence[Path], source: str | Path) -> list[str]:
    """The classes of the masks of all ``cases`` (first spelling order); ValueError naming ``source`` when two
    spellings of one class occur (see :func:`nnunet_suprem.taxonomy.resolve_classes`)."""
    names = dict.fromkeys(_class_of(p) for case in cases for p in _listing(case / MASKS)[0])
    return list(resolve_classes(names, str(source)).values())


def mask_files(folder: Path, classes: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """``{class: mask file}`` for ``classes`` in the ``segmentations`` ``folder``, and the names of its other files.

    ValueError naming ``folder`` when two files are one class (``postcava.nii.gz``, ``ivc.nii.gz``).
    """
    masks, unused = _listing(folder)
    matches = match_classes([p.name for p in masks], classes, names_source=str(folder), targets_source="classes")
    found = {matches[p.name]: p for p in masks if matches[p.name] is not None}
    return found, sorted(unused + [p.name for p in masks if matches[p.name] is None])
