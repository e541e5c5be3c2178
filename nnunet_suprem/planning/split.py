"""``nnunet-suprem split``: few-shot ``splits_final.json`` (N training cases, the rest validate) for stock nnU-Net."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_suprem.fileio import read_json, write_json
from nnunet_suprem.planning.pipeline import dataset_folder_name, preprocessed_root

SPLITS_FILE = "splits_final.json"


def training_cases(preprocessed_folder: Path) -> list[str]:
    """Identifiers of the training cases: the label files nnU-Net's preprocessing copies to ``gt_segmentations``."""
    dataset_json = preprocessed_folder / "dataset.json"
    labels = preprocessed_folder / "gt_segmentations"
    if not dataset_json.is_file() or not labels.is_dir():
        raise FileNotFoundError(f"{labels} not found: preprocess the dataset first (nnUNetv2_plan_and_preprocess, "
                                f"nnunet-suprem plan or nnunet-suprem plan-transfer)")
    ending = read_json(dataset_json)["file_ending"]
    cases = sorted(p.name[:-len(ending)] for p in labels.iterdir() if p.name.endswith(ending))
    if not cases:
        raise FileNotFoundError(f"{labels} holds no {ending} label files: preprocess the dataset first")
    return cases


def few_shot_splits(cases: Sequence[str], train_cases: int, seed: int = 0,
                    folds: int = 1) -> list[dict[str, list[str]]]:
    """``folds`` random draws of ``train_cases`` training cases, the rest validating, in nnU-Net's split format.

    Draws come one after another from ``numpy.random.default_rng(seed)``, so fold k is the same whatever ``folds``.
    """
    if not 1 <= train_cases < len(cases):
        raise ValueError(f"--train-cases must be between 1 and {len(cases) - 1} (the dataset has {len(cases)} training "
                         f"cases and at least one must remain for validation), got {train_cases}")
    if folds < 1:
        raise ValueError(f"--folds must be at least 1, got {folds}")
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(folds):
        chosen = set(rng.choice(len(cases), size=train_cases, replace=False).tolist())
        splits.append({"train": [c for i, c in enumerate(cases) if i in chosen],
                       "val": [c for i, c in enumerate(cases) if i not in chosen]})
    return splits


def write_few_shot_splits(dataset_id: int, train_cases: int, seed: int = 0, folds: int = 1,
                          overwrite: bool = False) -> Path:
    """Write ``$nnUNet_preprocessed/DatasetXXX_NAME/splits_final.json``; refuses to replace one unless ``overwrite``."""
    folder = preprocessed_root() / dataset_folder_name(dataset_id)
    path = folder / SPLITS_FILE
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (nnU-Net writes a 5-fold split when it first trains the "
                              f"dataset); pass --overwrite to replace it")
    write_json(few_shot_splits(training_cases(folder), train_cases, seed, folds), path)
    return path


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "split", help="write a few-shot splits_final.json (N training cases, the rest for validation)",
        description="Pick N training cases at random (seeded) and validate on all others: writes nnU-Net's "
                    "splits_final.json into $nnUNet_preprocessed/DatasetXXX_NAME, so that stock "
                    "`nnUNetv2_train D CONFIG 0` trains on those N cases (the paper's N = 5/10/20 settings). "
                    "With --folds K, folds 0..K-1 are K independent draws; nnU-Net trains a fold >= K on a random "
                    "80:20 split instead. Folds already trained keep the split they were trained with.")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="dataset ID (preprocessed)")
    p.add_argument("--train-cases", type=int, required=True, metavar="N", help="training cases per fold")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--folds", type=int, default=1, metavar="K", help="independent draws, folds 0..K-1 (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    path = write_few_shot_splits(args.dataset_id, args.train_cases, args.seed, args.folds, args.overwrite)
    splits = json.loads(path.read_text())
    print(f"wrote {path}: {len(splits)} fold(s) of {args.train_cases} training and {len(splits[0]['val'])} "
          f"validation cases (seed {args.seed})")
    print(f"train with: nnUNetv2_train {args.dataset_id} CONFIGURATION FOLD (FOLD = 0..{len(splits) - 1})")
