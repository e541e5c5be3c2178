"""nnunet-suprem evaluate speed against nnU-Net's own evaluation, on the same files, in one run.

    python benchmarks/evaluate.py [--cases 6] [--shape 256 256 128] [-np 1]

Writes (in a temporary folder) ground-truth and predicted label maps of 25 classes (AbdomenAtlas 1.1
names, random ellipsoids; the prediction moves and resizes each by a few voxels) and times, with the
same number of processes: nnU-Net's ``compute_metrics_on_folder`` (Dice only; it always starts a
process pool), ``nnunet-suprem evaluate`` Dice only (``--no-nsd``) and with NSD at 1 mm, all writing
their outputs, each after a warm-up run on 2 cases. Printed, measured in this run: seconds per case
as wall clock over all cases and as marginal time (the extra time of N cases over 2, which leaves
out fixed start-up such as nnU-Net's pool or our plot), the ratios (targets: ours Dice-only <=
nnU-Net; NSD <= 3x our Dice-only), and the largest Dice difference between the two implementations.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_suprem.evaluate import evaluate
from nnunet_suprem.fileio import write_image, write_json
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_1, label_dict

SPACING = (0.8, 0.8, 2.5)  # mm, x y z


def draw(shape: tuple[int, ...], ellipsoids: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Label map (array order z, y, x) with ellipsoid i + 1 drawn inside its bounding box only."""
    labels = np.zeros(shape, dtype=np.uint8)
    for value, (centre, radii) in enumerate(ellipsoids, start=1):
        low = np.maximum(np.floor(centre - radii).astype(int), 0)
        high = np.minimum(np.ceil(centre + radii).astype(int) + 1, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(low, high))]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
        labels[tuple(slice(a, b) for a, b in zip(low, high))][inside] = value
    return labels


def write_label_map(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    write_image(image, path)


def make_cases(root: Path, num_cases: int, size_xyz: tuple[int, int, int], seed: int) -> None:
    """``root/gt`` and ``root/pred``: label maps ``case_XXX.nii.gz`` and a dataset.json each."""
    rng = np.random.default_rng(seed)
    shape = size_xyz[::-1]
    classes = ABDOMENATLAS_1_1
    for folder in ("gt", "pred"):
        write_json({"labels": label_dict(list(classes)), "file_ending": ".nii.gz"}, root / folder / "dataset.json")
    for i in range(num_cases):
        truth = [(rng.uniform(0.2, 0.8, 3) * shape, rng.uniform(0.04, 0.15, 3) * shape) for _ in classes]
        predicted = [(c + rng.uniform(-3, 3, 3), r * rng.uniform(0.9, 1.1, 3)) for c, r in truth]
        write_label_map(draw(shape, truth), root / "gt" / f"case_{i:03d}.nii.gz")
        write_label_map(draw(shape, predicted), root / "pred" / f"case_{i:03d}.nii.gz")


def subset(root: Path, cases: int) -> Path:
    """A copy of ``root`` (symlinks) with only the first ``cases`` cases."""
    small = root.parent / f"{root.name}_{cases}"
    for folder in ("gt", "pred"):
        (small / folder).mkdir(parents=True)
        for name in ("dataset.json", *(f"case_{i:03d}.nii.gz" for i in range(cases))):
            (small / folder / name).symlink_to(root / folder / name)
    return small


def time_nnunet(root: Path, processes: int) -> tuple[float, dict]:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    start = time.perf_counter()
    result = compute_metrics_on_folder(str(root / "gt"), str(root / "pred"), str(root / "nnunet_summary.json"),
                                       SimpleITKIO(), ".nii.gz", list(range(1, len(ABDOMENATLAS_1_1) + 1)),
                                       num_processes=processes)
    return time.perf_counter() - start, result


def time_ours(root: Path, processes: int, tolerance: float | None) -> tuple[float, dict]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = evaluate(root / "pred", root / "gt", root / f"ours_{tolerance}", tolerance=tolerance,
                           num_processes=processes)
    return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6, help="cases (>= 3; default 6)")
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 128), metavar=("X", "Y", "Z"))
    parser.add_argument("-np", dest="processes", type=int, default=1, help="processes for both (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.cases < 3:
        parser.error("--cases must be >= 3 (the marginal time compares N cases with 2)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "full"
        print(f"writing {args.cases} cases of {args.shape[0]}x{args.shape[1]}x{args.shape[2]} voxels, "
              f"{len(ABDOMENATLAS_1_1)} classes ...")
        make_cases(root, args.cases, tuple(args.shape), args.seed)
        small = subset(root, 2)
        runs = {"nnU-Net compute_metrics_on_folder (Dice)": lambda r: time_nnunet(r, args.processes),
                "nnunet-suprem evaluate --no-nsd (Dice)": lambda r: time_ours(r, args.processes, None),
                "nnunet-suprem evaluate (Dice + NSD 1 mm)": lambda r: time_ours(r, args.processes, 1.0)}
        wall, marginal, results = {}, {}, {}
        for run in runs.values():  # warm-up: imports and first-use costs stay out of the timings
            run(small)
        for name, run in runs.items():
            total, results[name] = run(root)
            fixed_and_two, _ = run(small)
            wall[name], marginal[name] = total / args.cases, (total - fixed_and_two) / (args.cases - 2)

    nnunet, dice_only, with_nsd = runs
    values = label_dict(list(ABDOMENATLAS_1_1))
    by_file = {Path(c["prediction_file"]).name: c["metrics"] for c in results[nnunet]["metric_per_case"]}
    pairs = np.array([(by_file[Path(c["prediction_file"]).name][values[name]]["Dice"], c["metrics"][name]["Dice"])
                      for c in results[dice_only]["metric_per_case"] for name in c["metrics"]], dtype=float)
    same_nan = np.array_equal(np.isnan(pairs[:, 0]), np.isnan(pairs[:, 1]))
    difference = np.nanmax(np.abs(pairs[:, 0] - pairs[:, 1]))
    print(f"-np {args.processes}, {args.cases} cases; seconds per case (wall clock over all cases | marginal, "
          "start-up excluded)")
    for name in runs:
        print(f"  {name:44s} {wall[name]:6.3f} | {marginal[name]:6.3f}")
    print(f"ours Dice-only / nnU-Net:   {wall[dice_only] / wall[nnunet]:.2f}x wall, "
          f"{marginal[dice_only] / marginal[nnunet]:.2f}x marginal (target <= 1)")
    print(f"ours Dice+NSD / Dice-only:  {wall[with_nsd] / wall[dice_only]:.2f}x wall, "
          f"{marginal[with_nsd] / marginal[dice_only]:.2f}x marginal (target <= 3)")
    print(f"largest |Dice ours - Dice nnU-Net| over {len(pairs)} (case, class) pairs: {difference:.2e}; "
          f"NaN (class in neither) in the same places: {same_nan}")


if __name__ == "__main__":
    main()
