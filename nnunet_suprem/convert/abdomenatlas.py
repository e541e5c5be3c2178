"""``nnunet-suprem convert-abdomenatlas``: AbdomenAtlas 1.0/1.1 case folders -> nnU-Net raw dataset.

Source layout, one folder per case::

    BDMAP_00000001/ct.nii.gz
    BDMAP_00000001/segmentations/<class>.nii.gz   (one binary mask per class)
    BDMAP_00000001/combined_labels.nii.gz         (1.0 Mini, optional; used with --combined-labels)
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from nnunet_suprem.convert.cases import CaseResult, Problem, convert_label_map_case, convert_mask_case
from nnunet_suprem.convert.driver import CaseJob, Conversion, add_common_arguments, run_conversion, skipped_case
from nnunet_suprem.convert.staging import DatasetStaging
from nnunet_suprem.fileio import check_name
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_0, ABDOMENATLAS_1_1, canonical_name, label_dict

VERSIONS = {"1.0": ABDOMENATLAS_1_0, "1.1": ABDOMENATLAS_1_1}
COMBINED_LABELS = "combined_labels.nii.gz"
MASKS = "segmentations"


def select_classes(requested: Sequence[str] | None, taxonomy: Sequence[str], what: str) -> list[str]:
    """Classes to convert, in taxonomy order; ``requested`` names may be synonyms."""
    if not requested:
        return list(taxonomy)
    by_canonical = {canonical_name(c): c for c in taxonomy}
    unknown = [r for r in requested if canonical_name(r) not in by_canonical]
    if unknown:
        raise ValueError(f"--classes {unknown} are not {what} classes; choose from {list(taxonomy)}")
    chosen = {by_canonical[canonical_name(r)] for r in requested}
    return [c for c in taxonomy if c in chosen]


def mask_files(folder: Path, classes: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """``{class: mask file}`` for the wanted classes in ``folder`` (matched by canonical name), and unused names.

    Hidden files (e.g. macOS ``._liver.nii.gz``) are unused; a name with control characters is a ValueError.
    """
    wanted = {canonical_name(c): c for c in classes}
    found: dict[str, Path] = {}
    unused = []
    for path in sorted(folder.glob("*.nii*")) if folder.is_dir() else []:
        if path.name.startswith("."):
            unused.append(path.name)
            continue
        check_name(path.name, "mask file name", folder)
        name = wanted.get(canonical_name(path.name))
        if name is None:
            unused.append(path.name)
        elif name in found:
            raise ValueError(f"both {found[name].name} and {path.name} are masks of {name}")
        else:
            found[name] = path
    return found, unused


def find_ct(folder: Path) -> Path | None:
    for name in ("ct.nii.gz", "ct.nii"):
        if (folder / name).is_file():
            return folder / name
    return None


def add_case_folder(conversion: Conversion, folder: Path, classes: list[str], test: bool = False) -> list[str]:
    """Add ``<folder>/ct.nii.gz`` + ``segmentations/`` as a job (or as skipped); return unused mask names."""
    ct = find_ct(folder)
    if ct is None:
        conversion.skipped.append(skipped_case(folder.name, folder, "no ct.nii.gz in the case folder"))
        return []
    if not (folder / MASKS).is_dir():
        conversion.skipped.append(skipped_case(folder.name, folder, f"no {MASKS}/ folder: the case annotates nothing"))
        return []
    try:
        masks, unused = mask_files(folder / MASKS, classes)
    except ValueError as e:
        conversion.skipped.append(CaseResult(folder.name, problems=[Problem(str(folder), str(e), True)]))
        return []
    if not masks:
        conversion.skipped.append(skipped_case(folder.name, folder / MASKS,
                                               "no mask of the selected classes: the case annotates nothing"))
        return unused
    convert = functools.partial(convert_mask_case, folder.name, ct, masks, conversion.labels)
    conversion.jobs.append(CaseJob(folder.name, convert, (ct, *masks.values()), str(folder), test))
    return unused


def case_folders(src: Path) -> list[Path]:
    """The case folders in ``src``: sub-folders whose names do not start with '.' (see ``left_out_entries``)."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    return sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))


def left_out_entries(src: Path) -> list[CaseResult]:
    """Entries of ``src`` that look like case folders but are not converted: hidden folders, dangling links."""
    left_out = []
    for path in sorted(src.iterdir()):
        if path.is_symlink() and not path.exists():
            left_out.append(skipped_case(path.name, path, "dangling symbolic link"))
        elif path.is_dir() and path.name.startswith("."):
            left_out.append(skipped_case(path.name, path, "hidden folder (its name starts with '.'), not converted"))
    return left_out


def plan_abdomenatlas(src: Path, classes: list[str], combined_labels: bool) -> Conversion:
    """Scan ``src`` and describe the conversion (no file is written)."""
    folders = case_folders(src)
    conversion = Conversion([], label_dict(classes), skipped=left_out_entries(src))
    unused: set[str] = set()
    for folder in folders:
        if not combined_labels:
            unused.update(add_case_folder(conversion, folder, classes))
        elif (ct := find_ct(folder)) is None:
            conversion.skipped.append(skipped_case(folder.name, folder, "no ct.nii.gz in the case folder"))
        else:
            value_map = {v: conversion.labels.get(c, 0) for v, c in enumerate(ABDOMENATLAS_1_0, start=1)}
            labels = folder / COMBINED_LABELS
            conversion.jobs.append(CaseJob(folder.name, functools.partial(
                convert_label_map_case, folder.name, ct, labels, value_map, classes), (ct, labels), str(folder)))
    if not conversion.jobs and not conversion.skipped:
        raise FileNotFoundError(f"{src} holds no case folders (expected <case>/ct.nii.gz and <case>/segmentations/)")
    if unused:
        conversion.notes.append(f"mask files not converted (not among the selected classes): {sorted(unused)}")
    return conversion


def convert_abdomenatlas(src: str | Path, dataset_id: int, name: str = "AbdomenAtlas", version: str = "1.1",
                         classes: Sequence[str] | None = None, combined_labels: bool = False,
                         num_processes: int = 1, overwrite: bool = False, strict: bool = False,
                         keep_orientation: bool = False) -> Path:
    """Convert AbdomenAtlas case folders into ``$nnUNet_raw/DatasetXXX_name``; returns its path."""
    src = Path(src).resolve()
    selected = select_classes(classes, VERSIONS[version], f"AbdomenAtlas {version}")
    if combined_labels and not set(selected) <= set(ABDOMENATLAS_1_0):
        raise ValueError(f"{COMBINED_LABELS} holds only the 9 AbdomenAtlas 1.0 classes; use --version 1.0 "
                         "or --classes among them")
    conversion = plan_abdomenatlas(src, selected, combined_labels)
    if keep_orientation:
        conversion.reader = None
    options = {"converter": "abdomenatlas", "source": str(src), "version": version, "classes": selected,
               "combined_labels": combined_labels}
    staging = DatasetStaging(dataset_id, name, options, overwrite)
    return run_conversion(conversion, staging, str(src), num_processes, strict)


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-abdomenatlas", help="convert AbdomenAtlas 1.0/1.1 case folders to an nnU-Net raw dataset",
        description="Convert AbdomenAtlas case folders (<case>/ct.nii.gz, <case>/segmentations/<class>.nii.gz) into "
                    "$nnUNet_raw/DatasetXXX_NAME. Cases without some masks are recorded as partially annotated in "
                    "the dataset.json manifest; bad cases are skipped and listed in conversion_report.json. "
                    "Rerunning an interrupted conversion resumes it.")
    p.add_argument("src", help="folder with one sub-folder per case")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset ID of the output")
    p.add_argument("--name", default="AbdomenAtlas", help="dataset name (default: AbdomenAtlas)")
    p.add_argument("--version", choices=sorted(VERSIONS), default="1.1",
                   help="1.1: 25 classes (default); 1.0: the first 9")
    p.add_argument("--classes", nargs="+", help="convert only these classes (names or synonyms)")
    p.add_argument("--combined-labels", action="store_true",
                   help=f"read {COMBINED_LABELS} (AbdomenAtlas 1.0 values) instead of segmentations/")
    add_common_arguments(p)
    p.set_defaults(func=lambda a: print(convert_abdomenatlas(
        a.src, a.dataset_id, a.name, a.version, a.classes, a.combined_labels, num_processes=a.num_processes,
        overwrite=a.overwrite, strict=a.strict, keep_orientation=a.keep_orientation)))

