"""Training-step time of the demo's network on its phantoms: the ``--fast`` grid (16^3) against the default grid
(32^3), at nnU-Net's width and at a half and a quarter of it, side by side in one run.

    python benchmarks/demo_step.py [--steps 8] [--out DIR]

For each grid it makes the demo's pre-training dataset with the demo's own first steps (three partially labelled
sources, merged, planned with nnU-Net's plans), then builds SuPreMTrainer on it in this process (CPU) with the
network's features scaled by each width and times, after one warm-up step, --steps training batches (loading and
augmentation in this process, as the demo's CPU trainings do) and --steps ``train_step`` calls. Printed: seconds
per batch and per step, and each configuration's time per iteration relative to ``--fast``'s (16^3, full width).
How many steps each configuration needs to learn the classes is not measured here (docs/benchmarks.md#the-demo).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from pathlib import Path

import torch

from common import nnunet_folders

from nnunet_suprem.demo import DATASET_FOLDERS, FAST, FULL, PRETRAIN_ID, Budget, Demo
from nnunet_suprem.steps import run_steps

WIDTHS = (1.0, 0.5, 0.25)


def planned_demo_dataset(root: Path, budget: Budget) -> Demo:
    """The demo's pre-training dataset of ``budget`` under ``root`` (made once per --out folder)."""
    demo = Demo(root / f"grid{budget.shape[0]}", budget, "cpu", 1)
    before_training = list(itertools.takewhile(lambda step: step.results_folder is None, demo.steps()))
    run_steps(before_training, demo.out, demo.environment(), "cpu")
    return demo


def iteration_seconds(demo: Demo, width: float, steps: int) -> tuple[float, float]:
    """(seconds per training batch, seconds per train_step) of SuPreMTrainer at ``width`` times nnU-Net's features."""
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    os.environ.update({key: value for key, value in demo.environment().items() if key.startswith("nnUNet_")},
                      nnUNet_n_proc_DA="0")
    preprocessed = demo.preprocessed / DATASET_FOLDERS[PRETRAIN_ID]
    plans = {**json.loads((preprocessed / "nnUNetPlans.json").read_text()), "continue_training": False}
    architecture = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    architecture["features_per_stage"] = [max(1, round(f * width)) for f in architecture["features_per_stage"]]
    trainer = SuPreMTrainer(plans, "3d_fullres", 0, json.loads((preprocessed / "dataset.json").read_text()),
                            device=torch.device("cpu"))
    trainer.initialize()
    trainer.on_train_start()
    trainer.train_step(next(trainer.dataloader_train))  # warm-up
    start = time.perf_counter()
    batches = [next(trainer.dataloader_train) for _ in range(steps)]
    loaded = time.perf_counter()
    for batch in batches:
        trainer.train_step(batch)
    done = time.perf_counter()
    trainer.on_train_end()
    return (loaded - start) / steps, (done - loaded) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed batches and steps per configuration (default 8)")
    parser.add_argument("--out", help="folder for the datasets (default: a temporary folder); reused when given again")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = nnunet_folders(args.out, "demo_step_")
    rows = []
    demos = [planned_demo_dataset(root, budget) for budget in (FAST, FULL)]  # planning before any training setting
    for demo in demos:
        budget = demo.budget
        for width in WIDTHS:
            data, step = iteration_seconds(demo, width, args.steps)
            rows.append((budget.shape[0], width, data, step))
            print(f"{budget.shape[0]}^3, width {width:g}: batch {data:.3f} s, train_step {step:.3f} s", flush=True)
    reference = next(data + step for grid, width, data, step in rows if grid == FAST.shape[0] and width == 1.0)
    print("\n| grid | width | batch s | train_step s | iteration / --fast's |\n| --- | ---: | ---: | ---: | ---: |")
    for grid, width, data, step in rows:
        print(f"| {grid}^3 | {width:g} | {data:.3f} | {step:.3f} | {(data + step) / reference:.2f} |")


if __name__ == "__main__":
    main()
