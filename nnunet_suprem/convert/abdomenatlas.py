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

from nnunet_suprem.convert.cases import convert_label_map_case
from nnunet_suprem.convert.driver import CaseJob, Conversion, add_common_arguments, run_conversion, skipped_case
from nnunet_suprem.convert.mask_conversion import add_case_folder, left_out_entries, select_classes
from nnunet_suprem.convert.staging import DatasetStaging
from nnunet_suprem.mask_folders import case_folders, find_ct
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_0, ABDOMENATLAS_1_1, label_dict

VERSIONS = {"1.0": ABDOMENATLAS_1_0, "1.1": ABDOMENATLAS_1_1}
COMBINED_LABELS = "combined_labels.nii.gz"


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

