"""Does supervised pre-training help few-shot fine-tuning? Pre-trained vs scratch, side by side, over K draws.

    python benchmarks/transfer.py [--fast] [--draws 3] [--out DIR] [--ablate TRAINER ...]

Runs `nnunet-suprem demo --folds K` (synthetic partial-label pre-training with SuPreMTrainer, plan-transfer to a
target with 4 classes seen in pre-training and 4 novel ones), whose fine-tuning part is the few-shot study of
`nnunet-suprem fewshot`: K independent draws of 5 training cases, each fine-tuned from the pre-trained checkpoint
and from scratch with the same budget, test Dice on held-out cases. Then prints the study's paired difference
pre-trained - scratch per class group with its 95% CI (a Student t-interval over the draw means; with one draw, over
test cases only) and its value in every draw. Everything stays in --out (a rerun resumes); the study's tables are
in DIR/fewshot (fewshot.csv, summary.csv, summary.md, fewshot.png).

--ablate TRAINER ...: other fine-tuning recipes (e.g. SuPreMFinetuneTrainerFullLR_40epochs_25iterations), each a
study of its own in DIR/ablation_TRAINER (`nnunet-suprem fewshot --scratch-from DIR/fewshot`): the same checkpoint,
draws and test cases, paired with the demo's scratch arm, which is trained once; the differences print side by side.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from nnunet_suprem.fewshot.report import DIFFERENCE
from nnunet_suprem.fewshot.study import read_study, study_command


def differences(study: Path) -> list[dict]:
    """The study's Dice rows of pre-trained - scratch per class group, over its draws (``draw`` empty) and per draw."""
    with open(study / "summary.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["metric"] == "Dice" and not r["class"] and r["arm"] == DIFFERENCE]


def points(value: str) -> str:
    """A Dice difference from summary.csv in signed points."""
    return f"{100 * float(value):+.1f}"


def ablate(out: Path, trainer: str) -> Path:
    """Run the demo's study again with another pre-trained arm, reusing its scratch arm; returns the study folder."""
    demo = read_study(out / "fewshot")
    study = out / f"ablation_{trainer}"
    command, env = study_command(replace(demo, pretrained_trainer=trainer, scratch_from=str(out / "fewshot")), study, 2)
    command[0] = str(Path(sys.executable).parent / command[0])
    subprocess.run(command, env={**os.environ, "nnUNet_def_n_proc": "2", **env}, check=True)
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="the demo's --fast budget")
    parser.add_argument("--draws", type=int, default=3, help="independent draws of the 5 training cases")
    parser.add_argument("--out", help="demo folder (default: a new temporary folder)")
    parser.add_argument("--ablate", nargs="+", default=[], metavar="TRAINER",
                        help="other pre-trained-arm trainers to compare against the same scratch arm")
    args = parser.parse_args()
    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="bench_transfer_")) / "demo"
    demo = [str(Path(sys.executable).parent / "nnunet-suprem"), "demo", "--out", str(out), "--folds", str(args.draws)]
    subprocess.run(demo + (["--fast"] if args.fast else []), check=True)
    studies = {read_study(out / "fewshot").pretrained_trainer: out / "fewshot"}
    studies.update((trainer, ablate(out, trainer)) for trainer in args.ablate)

    print("\npre-trained - scratch, test Dice points: mean [95% CI] (what the CI covers); per draw")
    for trainer, study in studies.items():
        print(f"{trainer} ({study}):")
        rows = differences(study)
        for row in (r for r in rows if not r["draw"]):
            per_draw = [r for r in rows if r["draw"] and (r["N"], r["group"]) == (row["N"], row["group"])]
            print(f"  N={row['N']} {row['group']:<6} {points(row['mean'])} [{points(row['ci_low'])}, "
                  f"{points(row['ci_high'])}] ({row['interval']}); per draw "
                  f"{', '.join(points(r['mean']) for r in per_draw)}")


if __name__ == "__main__":
    main()
