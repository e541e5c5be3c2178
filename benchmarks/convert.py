"""convert-abdomenatlas speed on cases of real clinical size, against the floor of just reading their files.

    python benchmarks/convert.py [--cases 4]

Each case is the real chest CT of ../shared/data/real-ct (512x512x48, 0.57x0.57x5 mm) with 25
AbdomenAtlas 1.1 masks: the phantom's 16 organs drawn on that grid, 9 empty. Printed, measured
in this run: seconds per case to read all of a case's files (the floor), to convert with
-np 1 and -np 2, and the ratios (target: -np 1 <= 1.5x the floor, -np 2 near 2x faster).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.update({k: str(tmp / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        src = tmp / "atlas"
        print(f"writing {args.cases} cases of {REAL_CT.name} + 25 masks ...")
        make_cases(src, args.cases)
        floor = read_floor(src) / args.cases
        seconds = {}
        for dataset_id, processes in ((901, 1), (902, 2)):
            start = time.perf_counter()
            convert_abdomenatlas(src, dataset_id, f"Bench{processes}", num_processes=processes)
            seconds[processes] = (time.perf_counter() - start) / args.cases
    print(f"read floor (CT + 25 masks): {floor:.2f} s/case")
    print(f"convert -np 1:             {seconds[1]:.2f} s/case = {seconds[1] / floor:.2f}x the read floor")
    print(f"convert -np 2:             {seconds[2]:.2f} s/case = {seconds[1] / seconds[2]:.2f}x faster than -np 1")


if __name__ == "__main__":
    main()
