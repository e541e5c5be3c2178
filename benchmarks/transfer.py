"""Does supervised pre-training help few-shot fine-tuning? Pre-trained vs scratch, side by side, over K draws.

    python benchmarks/transfer.py [--fast] [--draws 3] [--out DIR]

Runs `nnunet-suprem demo --folds K` (synthetic partial-label pre-training with SuPreMTrainer, plan-transfer to a
target with 4 classes seen in pre-training and 4 novel ones), whose fine-tuning part is the few-shot study of
`nnunet-suprem fewshot`: K independent draws of 5 training cases, each fine-tuned from the pre-trained checkpoint
and from scratch with the same budget, test Dice on held-out cases. Then prints the study's paired difference
pre-trained - scratch per class group with its 95% CI (units: draw x test case). Everything stays in --out (a
rerun resumes); the study's tables are in DIR/fewshot (fewshot.csv, summary.csv, summary.md, fewshot.png).
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from nnunet_suprem.fewshot.report import DIFFERENCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="the demo's --fast budget")
    parser.add_argument("--draws", type=int, default=3, help="independent draws of the 5 training cases")
    parser.add_argument("--out", help="demo folder (default: a new temporary folder)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_transfer_")) / "demo"
    demo = [str(Path(sys.executable).parent / "nnunet-suprem"), "demo", "--out", str(out), "--folds", str(args.draws)]
    subprocess.run(demo + (["--fast"] if args.fast else []), check=True)

    with open(out / "fewshot" / "summary.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "Dice" and not r["class"] and r["arm"] == DIFFERENCE]
    print(f"\npre-trained - scratch, test Dice points ({args.draws} draw(s); mean [95% CI] over draw x test case):")
    for row in rows:
        print(f"  N={row['N']} {row['group']:<6} {100 * float(row['mean']):+.1f} "
              f"[{100 * float(row['ci_low']):+.1f}, {100 * float(row['ci_high']):+.1f}]  (n={row['n']})")


if __name__ == "__main__":
    main()
