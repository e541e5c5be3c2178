"""Does supervised pre-training help few-shot fine-tuning? Pre-trained vs scratch, side by side, over K folds.

    python benchmarks/transfer.py [--fast] [--folds 3] [--out DIR]

Runs `nnunet-suprem demo --folds K` (synthetic partial-label pre-training with SuPreMTrainer, plan-transfer to a
target with 4 classes seen in pre-training and 4 novel ones, K independent draws of 5 training cases, each
fine-tuned from the pre-trained checkpoint and from scratch with the same budget, test Dice on held-out cases), then
prints the gain of the pre-trained arm per fold for the seen, novel and all classes. The demo prints the per-class
table and writes the learning curves; everything stays in --out (a rerun resumes).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nnunet_suprem.demo import NOVEL_CLASSES, SEEN_CLASSES


def mean_dice(means: dict, classes: list[str]) -> float:
    return float(np.nanmean([means[c]["Dice"] for c in classes]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="the demo's --fast budget")
    parser.add_argument("--folds", type=int, default=3, help="independent draws of the 5 training cases")
    parser.add_argument("--out", help="demo folder (default: a new temporary folder)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_transfer_")) / "demo"
    demo = [str(Path(sys.executable).parent / "nnunet-suprem"), "demo", "--out", str(out), "--folds", str(args.folds)]
    subprocess.run(demo + (["--fast"] if args.fast else []), check=True)

    groups = {"seen": SEEN_CLASSES.split(","), "novel": NOVEL_CLASSES.split(","),
              "all": SEEN_CLASSES.split(",") + NOVEL_CLASSES.split(",")}
    gains = {name: [] for name in groups}
    for fold in range(args.folds):
        summary = json.loads((out / "evaluation" / f"fold_{fold}" / "summary.json").read_text())
        for name, classes in groups.items():
            gains[name].append(100 * (mean_dice(summary["mean"], classes)
                                      - mean_dice(summary["comparison"]["mean"], classes)))
    print("\npre-trained - scratch, test Dice points (per fold; mean +- s.d.):")
    for name, values in gains.items():
        print(f"  {name:<6} " + ", ".join(f"{v:+.1f}" for v in values)
              + f"   mean {np.mean(values):+.1f} +- {np.std(values):.1f}")


if __name__ == "__main__":
    main()
