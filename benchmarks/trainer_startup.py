"""Trainer start-up on a large preprocessed dataset: SuPreMTrainer vs nnUNetTrainer, side by side in one run.

    python benchmarks/trainer_startup.py [--cases 2000] [--classes 25] [--locations 10000] [--repeats 3] [--out DIR]

Builds a synthetic preprocessed dataset of --cases cases in nnU-Net's blosc2 layout: every case links
the image and segmentation of one real preprocessed phantom case, and its .pkl holds that case's
properties with realistic ``class_locations`` (--locations x 4 int64 per class for --classes classes,
about 8 MB per case by default, as nnU-Net writes for AbdomenAtlas-sized label sets). Then times, each
in a fresh process, trainer construction through ``on_train_start`` (network, data loaders, the first
training and validation batch: everything up to the first iteration) for nnUNetTrainer and
SuPreMTrainer, alternating, --repeats times each, after one warm-up run of nnUNetTrainer (which writes
splits_final.json). SuPreMTrainer's first start on a dataset reads every case's orientation once and
writes a summary (printed separately); later starts read only the summary. Printed: median seconds
and the ratio SuPreMTrainer / nnUNetTrainer (target <= 1.1). Needs about --cases x 8 MB of disk in --out
(default: a temporary folder, removed at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import derived_dataset, nnunet_folders, planned_source, source_case

from nnunet_suprem.training.case_geometry import summary_path

DATASET = "Dataset701_Startup"


def build(cases: int, classes: int, locations: int) -> Path:
    """The synthetic dataset's data folder (kept when --out already holds it)."""
    source = planned_source()
    _, data = derived_dataset(source, DATASET)
    if len(list(data.glob("*.pkl"))) == cases:
        return data
    stem, properties = source_case(source)
    rng = np.random.default_rng(0)
    properties["class_locations"] = {c: rng.integers(0, 512, (locations, 4), dtype=np.int64)
                                     for c in range(1, classes + 1)}
    payload = pickle.dumps(properties)
    for i in range(cases):
        case = data / f"case_{i:05d}"
        for suffix in (".b2nd", "_seg.b2nd"):
            target = Path(f"{case}{suffix}")
            if not target.exists():
                os.link(f"{stem}{suffix}", target)
        Path(f"{case}.pkl").write_bytes(payload)
    print(f"{cases} cases, .pkl of {len(payload) / 1e6:.1f} MB each ({classes} classes x {locations} locations)")
    return data


def start_once(trainer: str) -> float:
    """Seconds from construction to the end of ``on_train_start``, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--child", trainer], check=True, capture_output=True, text=True,
                         env={**os.environ, "nnUNet_n_proc_DA": "0"}).stdout
    return float(out.strip().splitlines()[-1])


def child(name: str) -> None:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from common import make_trainer
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    cls = {"nnUNetTrainer": nnUNetTrainer, "SuPreMTrainer": SuPreMTrainer}[name]
    start = time.perf_counter()
    trainer = make_trainer(cls, DATASET, torch.device("cpu"))
    trainer.on_train_start()
    print(f"{time.perf_counter() - start:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=25)
    parser.add_argument("--locations", type=int, default=10000, help="class_locations rows per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="folder for the datasets (default: a temporary folder, removed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    root = nnunet_folders(args.out, "suprem_startup_")
    try:
        data = build(args.cases, args.classes, args.locations)
        Path(summary_path(str(data))).unlink(missing_ok=True)
        start_once("nnUNetTrainer")  # warm-up: writes splits_final.json, fills the file cache
        first = start_once("SuPreMTrainer")
        times = {"nnUNetTrainer": [], "SuPreMTrainer": []}
        for _ in range(args.repeats):
            for name in times:
                times[name].append(start_once(name))
        median = {name: statistics.median(t) for name, t in times.items()}
        print(f"start-up up to the first iteration, {args.cases} cases, median of {args.repeats} (s): "
              + ", ".join(f"{name} {t:.2f}" for name, t in median.items()))
        print(f"SuPreMTrainer / nnUNetTrainer: {median['SuPreMTrainer'] / median['nnUNetTrainer']:.3f}")
        print(f"SuPreMTrainer's first start on the dataset (reads every case's orientation once, writes the "
              f"summary): {first:.2f} s, {first / median['nnUNetTrainer']:.2f}x nnUNetTrainer")
        print(json.dumps({"times_s": times, "first_suprem_start_s": first}))
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
