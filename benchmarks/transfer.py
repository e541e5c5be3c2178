"""Does supervised pre-training help few-shot fine-tuning? Pre-trained vs scratch, side by side, over K draws.

    python benchmarks/transfer.py [--fast] [--draws 3] [--out DIR] [--ablate TRAINER ...]

Runs `nnunet-suprem demo --folds K` (synthetic partial-label pre-training with SuPreMTrainer, plan-transfer to a
target with 4 classes seen in pre-training and 4 novel ones), whose fine-tuning part is the few-shot study of
`nnunet-suprem fewshot`: K independent draws of 5 training cases, each fine-tuned from the pre-trained checkpoint
and from scratch with the same budget, test Dice on held-out cases. Then prints the study's paired difference
pre-trained - scratch per class group with its 95% CI (units: draw x test case). Everything stays in --out (a
rerun resumes); the study's tables are in DIR/fewshot (fewshot.csv, summary.csv, summary.md, fewshot.png).

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
    """The study's Dice rows of pre-trained - scratch per class group."""
    with open(study / "summary.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["metric"] == "Dice" and not r["class"] and r["arm"] == DIFFERENCE]


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

    print(f"\npre-trained - scratch, test Dice points ({args.draws} draw(s); mean [95% CI] over draw x test case):")
    for trainer, study in studies.items():
        print(f"{trainer} ({study}):")
        for row in differences(study):
            print(f"  N={row['N']} {row['group']:<6} {100 * float(row['mean']):+.1f} "
                  f"[{100 * float(row['ci_low']):+.1f}, {100 * float(row['ci_high']):+.1f}]  (n={row['n']})")


if __name__ == "__main__":
    main()
