"""convert-abdomenatlas speed on cases of real clinical size, against the floor of just reading their files.

    python benchmarks/convert.py [--cases 12]

Each case is the real chest CT of ../shared/data/real-ct (512x512x48, 0.57x0.57x5 mm) with 25
AbdomenAtlas 1.1 masks: the phantom's 16 organs drawn on that grid, 9 empty. Printed, measured
in this run: seconds per case to read all of a case's files (the floor), to convert with
-np 1 and -np 2 (wall clock over all cases, and marginal: the extra time of N cases over 2,
which leaves out the fixed start-up of importing nnU-Net and starting workers), and the ratios
(target: -np 1 <= 1.5x the floor, -np 2 near 2x faster).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from nnunet_suprem.convert.abdomenatlas import convert_abdomenatlas
from nnunet_suprem.fileio import write_image
from nnunet_suprem.phantom import PHANTOM_CLASSES, Hospital, case_rng, synthesize_case
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_1

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct" / "lung1" / "ct.nii.gz"


def make_cases(src: Path, num_cases: int) -> None:
    ct = sitk.ReadImage(str(REAL_CT))
    grid = Hospital("real", ct.GetSize(), ct.GetSpacing(), "LPS")
    for index in range(num_cases):
        case = src / f"BDMAP_{index:08d}"
        (case / "segmentations").mkdir(parents=True)
        shutil.copy(REAL_CT, case / "ct.nii.gz")
        phantom = synthesize_case(grid, case_rng(0, grid, index))
        empty = phantom.label_map({})
        for name in ABDOMENATLAS_1_1:
            mask = phantom.mask(name) if name in PHANTOM_CLASSES else empty
            mask.CopyInformation(ct)
            write_image(mask, case / "segmentations" / f"{name}.nii.gz")


def read_floor(src: Path) -> float:
    start = time.perf_counter()
    for path in sorted(src.rglob("*.nii.gz")):
        sitk.ReadImage(str(path))
    return time.perf_counter() - start


def timed_conversion(src: Path, dataset_id: int, processes: int) -> float:
    start = time.perf_counter()
    convert_abdomenatlas(src, dataset_id, f"Bench{dataset_id}", num_processes=processes)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.update({k: str(tmp / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        src, small = tmp / "atlas", tmp / "atlas_2"
        print(f"writing {args.cases} cases of {REAL_CT.name} + 25 masks ...")
        make_cases(src, args.cases)
        small.mkdir()
        for case in sorted(src.iterdir())[:2]:
            (small / case.name).symlink_to(case)
        floor = read_floor(src) / args.cases
        per_case, marginal = {}, {}
        for processes in (1, 2):
            total = timed_conversion(src, 900 + processes, processes)
            fixed_and_two = timed_conversion(small, 910 + processes, processes)
            per_case[processes] = total / args.cases
            marginal[processes] = (total - fixed_and_two) / (args.cases - 2)
    print(f"read floor (CT + 25 masks):  {floor:.3f} s/case")
    for p in (1, 2):
        print(f"convert -np {p}: {per_case[p]:.3f} s/case wall ({per_case[p] / floor:.2f}x floor), "
              f"{marginal[p]:.3f} s/case marginal, start-up excluded ({marginal[p] / floor:.2f}x floor)")
    print(f"speed-up -np 2 vs -np 1: {per_case[1] / per_case[2]:.2f}x wall, {marginal[1] / marginal[2]:.2f}x marginal")


if __name__ == "__main__":
    main()
