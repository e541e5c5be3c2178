"""``nnunet-suprem convert-totalsegmentator``: TotalSegmentator v1/v2 -> nnU-Net raw dataset for one class group.

Source layout: ``sXXXX/ct.nii.gz``, ``sXXXX/segmentations/<class>.nii.gz`` and an optional
``meta.csv`` (``image_id;...;split`` with split train/val/test). Train and val cases go to
imagesTr/labelsTr, test cases to imagesTs/labelsTs; without meta.csv every case is a
training case. ``--train-cases N`` keeps a reproducible random subset of N training cases
(the paper's few-shot settings), drawn with ``--seed``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_suprem.convert.driver import Conversion, add_common_arguments, run_conversion
from nnunet_suprem.convert.mask_conversion import add_case_folder, left_out_entries, select_classes
from nnunet_suprem.convert.staging import DatasetStaging
from nnunet_suprem.mask_folders import MASKS, case_folders
from nnunet_suprem.nnunet_env import CANONICAL_READER
from nnunet_suprem.taxonomy import (SUPREM_GROUPS, TOTALSEGMENTATOR_V1, TOTALSEGMENTATOR_V1_TO_V2, TOTALSEGMENTATOR_V2,
                                    label_dict, totalsegmentator_version)

GROUPS = (*SUPREM_GROUPS, "all")
CLASSES = {"v1": TOTALSEGMENTATOR_V1, "v2": TOTALSEGMENTATOR_V2}


def group_classes(group: str, version: str) -> list[str]:
    """Class names of a SuPreM group (defined on v1 names) in the given dataset version."""
    if group == "all":
        return list(CLASSES[version])
    names = list(SUPREM_GROUPS[group])
    if version == "v2":
        names = [TOTALSEGMENTATOR_V1_TO_V2.get(n, n) for n in names]
    missing = [n for n in names if n not in CLASSES[version]]
    if missing:
        raise ValueError(f"TotalSegmentator {version} has no masks for {missing} of group {group!r}; "
                         f"pass --classes to choose the classes explicitly")
    return names


def read_splits(meta_csv: Path) -> dict[str, str]:
    """``{image_id: split}`` from TotalSegmentator's meta.csv (';' or ',' separated)."""
    text = meta_csv.read_text(encoding="utf-8-sig")
    dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=";,")
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    if not rows or not {"image_id", "split"} <= set(rows[0]):
        raise ValueError(f"{meta_csv}: expected columns image_id and split, found {list(rows[0]) if rows else []}")
    bad = sorted({r["split"] for r in rows} - {"train", "val", "test"})
    if bad:
        raise ValueError(f"{meta_csv}: unknown split values {bad} (expected train, val, test)")
    return {r["image_id"]: r["split"] for r in rows}


def few_shot_subset(cases: Sequence[str], n: int, seed: int) -> list[str]:
    """A reproducible random subset of ``n`` cases (the same for the same case list and seed)."""
    if n > len(cases):
        raise ValueError(f"--train-cases {n} but only {len(cases)} training cases are available")
    order = np.random.default_rng(seed).permutation(len(cases))
    return sorted(sorted(cases)[i] for i in order[:n])


def detect_release(src: Path, folders: Sequence[Path]) -> str:
    """``v1`` or ``v2``, from the mask file names of all case folders (ValueError when they do not tell)."""
    mask_names = {p.name for f in folders for p in (f / MASKS).glob("*.nii*")}
    if not mask_names:
        raise FileNotFoundError(f"{src} holds no <case>/{MASKS}/ folders with masks")
    try:
        return totalsegmentator_version(mask_names)
    except ValueError as e:
        raise ValueError(f"{src}: {e}; name the release with --release v1|v2") from None


def convert_totalsegmentator(src: str | Path, dataset_id: int, group: str, name: str | None = None,
                             classes: Sequence[str] | None = None, train_cases: int | None = None, seed: int = 0,
                             num_processes: int = 1, overwrite: bool = False, strict: bool = False,
                             keep_orientation: bool = False, release: str | None = None) -> Path:
    """Convert a TotalSegmentator release into ``$nnUNet_raw/DatasetXXX_name``; returns its path.

    ``release`` (``v1``/``v2``) overrides the detection from mask file names, e.g. for a copy
    that keeps only some classes' masks.
    """
    src = Path(src).resolve()
    folders = case_folders(src)
    version = release or detect_release(src, folders)
    selected = select_classes(classes, group_classes(group, version), f"TotalSegmentator {version} {group}")
    splits = read_splits(src / "meta.csv") if (src / "meta.csv").is_file() else {}

    conversion = Conversion([], label_dict(selected), skipped=left_out_entries(src),
                            notes=[f"TotalSegmentator {version}, group {group}"],
                            reader=None if keep_orientation else CANONICAL_READER)
    training = [f.name for f in folders if splits.get(f.name, "train") != "test"]
    keep = set(few_shot_subset(training, train_cases, seed) if train_cases is not None else training)
    for folder in folders:
        test = splits.get(folder.name, "train") == "test"
        if not test and folder.name not in keep:
            continue
        add_case_folder(conversion, folder, selected, test)
    if splits:
        unlisted = sorted(f.name for f in folders if f.name not in splits)
        if unlisted:
            conversion.notes.append(f"cases missing from meta.csv, treated as training cases: {unlisted}")

    options = {"converter": "totalsegmentator", "source": str(src), "version": version, "group": group,
               "classes": selected, "train_cases": train_cases, "seed": seed}
    staging = DatasetStaging(dataset_id, name or f"TotalSegmentator_{group}", options, overwrite)
    return run_conversion(conversion, staging, str(src), num_processes, strict)


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-totalsegmentator", help="convert TotalSegmentator v1/v2 (one class group) to an nnU-Net raw dataset",
        description="Convert a TotalSegmentator release (sXXXX/ct.nii.gz, sXXXX/segmentations/<class>.nii.gz, "
                    "meta.csv) into $nnUNet_raw/DatasetXXX_NAME for one SuPreM fine-tuning group. meta.csv splits: "
                    "train/val -> imagesTr, test -> imagesTs/labelsTs.")
    p.add_argument("src", help="the TotalSegmentator folder (case folders and meta.csv)")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset ID of the output")
    p.add_argument("--group", choices=GROUPS, required=True, help="SuPreM class group (or all classes)")
    p.add_argument("--name", help="dataset name (default: TotalSegmentator_<group>)")
    p.add_argument("--classes", nargs="+", help="convert only these classes of the group")
    p.add_argument("--train-cases", type=int, help="keep a reproducible random subset of N training cases")
    p.add_argument("--seed", type=int, default=0, help="seed of the --train-cases subset (default: 0)")
    p.add_argument("--release", choices=sorted(CLASSES),
                   help="the TotalSegmentator release (default: detected from the mask file names)")
    add_common_arguments(p)
    p.set_defaults(func=lambda a: print(convert_totalsegmentator(
        a.src, a.dataset_id, a.group, a.name, a.classes, a.train_cases, a.seed, num_processes=a.num_processes,
        overwrite=a.overwrite, strict=a.strict, keep_orientation=a.keep_orientation, release=a.release)))
