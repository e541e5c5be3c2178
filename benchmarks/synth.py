"""Phantom generation speed: seconds for a 10-case 48^3 dataset, 1 process vs 2, side by side.

    python benchmarks/synth.py [--cases 10] [--shape 48 48 48]

Prints wall-clock seconds for each process count and the speed-up ratio measured in this run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nnunet_suprem.phantom import HOSPITALS
from nnunet_suprem.synth import write_abdomenatlas_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10, help="cases in total (default 10)")
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 48, 48))
    args = parser.parse_args()
    hospital = HOSPITALS["hospA"].with_shape(tuple(args.shape))
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            start = time.perf_counter()
            write_abdomenatlas_dataset(Path(tmp) / f"np{processes}", [hospital], args.cases, seed=0,
                                       num_processes=processes)
            seconds[processes] = time.perf_counter() - start
    for processes, s in seconds.items():
        print(f"-np {processes}: {s:.2f} s for {args.cases} cases of {tuple(args.shape)} "
              f"({s / args.cases:.3f} s/case)")
    print(f"speed-up -np 2 vs -np 1: {seconds[1] / seconds[2]:.2f}x")


if __name__ == "__main__":
    main()
