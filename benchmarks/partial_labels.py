"""Does partial-label training work? SuPreMTrainer vs naive nnU-Net vs a fully annotated oracle, side by side.

    python benchmarks/partial_labels.py [--epochs 50] [--iterations 25] [--runs abc] [--out DIR]

Three simulated hospitals annotate different subsets of 6 organs (every organ annotated
somewhere, no hospital annotates all; liver everywhere). The same images are trained, with
the same epochs, iterations and seed:
  (a) SuPreMTrainer on the merged partial labels (manifest),
  (b) stock nnUNetTrainer on the same labels, unannotated organs counted as background (naive),
  (c) stock nnUNetTrainer on fully annotated versions of the same cases (oracle),
  (d) SuPreMTrainer on the fully annotated cases (oracle with laterality-aware mirroring),
and evaluated on held-out fully annotated cases with nnU-Net's own metric code, and on copies of
them with the right kidney erased (is the remaining kidney called left?). Also prints
the train-step time of SuPreMTrainer / nnUNetTrainer on identical batches. Everything runs
through nnU-Net (plan_and_preprocess CLI, trainers and predictor in-process) on the CPU
unless a GPU is present. Artefacts stay in --out (default: a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from common import make_trainer, nnunet_folders, predict, processes, run, test_dice

PARTIAL = {"hospA": "liver,spleen,kidney_left,kidney_right",
           "hospB": "liver,aorta,stomach,kidney_left,kidney_right",
           "hospC": "liver,spleen,aorta,stomach"}
ALL = "liver,spleen,kidney_left,kidney_right,aorta,stomach"


def make_datasets(args) -> None:
    """Both datasets, planned and preprocessed (kept when --out already holds them)."""
    if all((Path(os.environ["nnUNet_preprocessed"]) / d / "nnUNetPlans.json").is_file()
           for d in ("Dataset501_Partial", "Dataset502_Full")):
        return
    common = ("--cases", str(args.cases), "--test-cases", str(args.test_cases), "--shape", *map(str, args.shape),
              "--seed", str(args.seed), "-np", str(processes()))
    run("nnunet-suprem", "synth", "-d", "501", "--name", "Partial", *common,
        "--annotate", *(f"{h}={c}" for h, c in PARTIAL.items()))
    run("nnunet-suprem", "synth", "-d", "502", "--name", "Full", *common,
        "--annotate", *(f"{h}={ALL}" for h in PARTIAL))
    for dataset in ("501", "502"):
        run("nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "3d_fullres", "-np", str(processes()))
    raw = Path(os.environ["nnUNet_raw"])
    make_left_only_cases(raw / "Dataset502_Full", raw / "left_only_images")


def trainer_classes(epochs: int, iterations: int):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    class BenchSuPreMTrainer(SuPreMTrainer):
        pass

    BenchSuPreMTrainer.epochs, BenchSuPreMTrainer.iterations_per_epoch = epochs, iterations
    BenchSuPreMTrainer.val_iterations_per_epoch = 2

    class BenchNnUNetTrainer(nnUNetTrainer):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = epochs, iterations, 2

    return BenchSuPreMTrainer, BenchNnUNetTrainer


def make_left_only_cases(raw: Path, out: Path) -> None:
    """Copies of the test images with the right kidney replaced by soft tissue: only a left kidney remains."""
    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_path in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        case = image_path.name.removesuffix("_0000.nii.gz")
        image = sitk.ReadImage(str(image_path))
        ct = sitk.GetArrayFromImage(image)
        right = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" / f"{case}.nii.gz"))) == labels["kidney_right"]
        ct[right] = rng.normal(0, 20, right.sum()).astype(ct.dtype)
        edited = sitk.GetImageFromArray(ct)
        edited.CopyInformation(image)
        sitk.WriteImage(edited, str(out / image_path.name), True)


def left_only_share(predictions: Path, raw: Path) -> float:
    """Share of the predicted kidney voxels (either side) that are called kidney_left on left-only cases."""
    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    left = right = 0
    for path in predictions.glob("*.nii.gz"):
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        left += int((prediction == labels["kidney_left"]).sum())
        right += int((prediction == labels["kidney_right"]).sum())
    return left / max(1, left + right)


def train_and_evaluate(cls, dataset: str, device: torch.device, seed: int) -> tuple[dict[str, float], float, float]:
    """Per-class test Dice, training seconds, and the kidney_left share on left-only cases."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    trainer = make_trainer(cls, dataset, device)
    start = time.perf_counter()
    trainer.run_training()
    seconds = time.perf_counter() - start
    raw = Path(os.environ["nnUNet_raw"]) / dataset
    out = Path(trainer.output_folder) / "test_predictions"
    dice = test_dice(trainer, raw, out, device)
    predict(trainer, raw.parent / "left_only_images", out.with_name("left_only_predictions"), device)
    return dice, seconds, left_only_share(out.with_name("left_only_predictions"), raw)


def step_time_ratio(supreme_cls, stock_cls, device: torch.device, steps: int) -> float:
    """Median train-step time of SuPreMTrainer / nnUNetTrainer on identical random batches (partial dataset)."""
    trainers = [make_trainer(c, "Dataset501_Partial", device) for c in (supreme_cls, stock_cls)]
    for t in trainers:
        t.initialize()
    patch = trainers[0].configuration_manager.patch_size
    batch_size = trainers[0].batch_size
    cases = sorted(trainers[0].annotated_rows)[:batch_size]  # partially annotated cases: the marginal loss path
    scales = trainers[0]._get_deep_supervision_scales()
    n_labels = len(trainers[0].dataset_json["labels"])
    times = [[], []]
    for step in range(steps + 1):
        target = torch.randint(0, n_labels, (batch_size, 1, *patch)).float()
        batch = {"data": torch.randn((batch_size, 1, *patch)), "keys": cases,
                 "target": [torch.nn.functional.interpolate(target, scale_factor=s, mode="nearest") for s in scales]}
        for i in (step % 2, 1 - step % 2):  # alternate who goes first
            start = time.perf_counter()
            trainers[i].train_step(batch)
            if step:  # the first step warms up
                times[i].append(time.perf_counter() - start)
    return float(np.median(times[0]) / np.median(times[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    parser.add_argument("--cases", type=int, default=6, help="training cases per hospital")
    parser.add_argument("--test-cases", type=int, default=2, help="held-out fully annotated cases per hospital")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 32))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-steps", type=int, default=10)
    parser.add_argument("--runs", default="abc", help="which of the runs (a)-(d) to train (default: abc, ~25 min "
                                                      "on 2 CPU cores; d adds ~8 min)")
    parser.add_argument("--out", help="keep all datasets and results here (default: a temporary folder)")
    args = parser.parse_args()

    out = nnunet_folders(args.out, "partial_labels_")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    start = time.perf_counter()
    make_datasets(args)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # training only: nnU-Net's planning fails with 0
    supreme, stock = trainer_classes(args.epochs, args.iterations)
    runs = {"(a) SuPreMTrainer, partial": (supreme, "Dataset501_Partial"),
            "(b) nnUNetTrainer, partial (naive)": (stock, "Dataset501_Partial"),
            "(c) nnUNetTrainer, full (oracle)": (stock, "Dataset502_Full"),
            "(d) SuPreMTrainer, full": (supreme, "Dataset502_Full")}
    runs = {name: run for name, run in runs.items() if name[1] in args.runs}
    results, seconds, left_share = {}, {}, {}
    for name, (cls, dataset) in runs.items():
        print(f"training {name} ...", flush=True)
        results[name], seconds[name], left_share[name] = train_and_evaluate(cls, dataset, device, args.seed)
    ratio = step_time_ratio(supreme, stock, device, args.timing_steps)

    classes = list(next(iter(results.values())))
    partial = [c for c in classes if any(c not in v.split(",") for v in PARTIAL.values())]
    print(f"\nDice on {args.test_cases * 3} held-out fully annotated cases "
          f"({args.epochs} epochs x {args.iterations} iterations, seed {args.seed}, {device.type}):")
    print(f"{'class':<16}" + "".join(f"{n[:3]:>8}" for n in runs) + "   unannotated in some source")
    for c in classes:
        print(f"{c:<16}" + "".join(f"{results[n][c]:8.3f}" for n in runs) + f"   {'yes' if c in partial else 'no'}")
    means = {n: float(np.nanmean(list(r.values()))) for n, r in results.items()}
    print(f"{'mean':<16}" + "".join(f"{means[n]:8.3f}" for n in runs))
    partial_means = {n: float(np.nanmean([r[c] for c in partial])) for n, r in results.items()}
    print(f"{'mean (partial)':<16}" + "".join(f"{partial_means[n]:8.3f}" for n in runs))
    print(f"{'left-only':<16}" + "".join(f"{left_share[n]:8.3f}" for n in runs)
          + "   share of predicted kidney voxels called kidney_left when only the left kidney is there")
    for n in runs:
        print(f"  {n}: {seconds[n]:.0f} s training")
    by_letter = {name[1]: name for name in runs}
    if {"a", "c"} <= set(by_letter):
        print(f"\n(a)/(c) mean Dice: {means[by_letter['a']] / means[by_letter['c']]:.3f} (target >= 0.95)")
    if {"a", "b"} <= set(by_letter):
        print(f"(a)-(b) mean Dice on partially annotated classes: "
              f"{partial_means[by_letter['a']] - partial_means[by_letter['b']]:+.3f}")
    print(f"train step time SuPreMTrainer / nnUNetTrainer on identical batches: {ratio:.3f} (target <= 1.05)")
    print(f"total {time.perf_counter() - start:.0f} s; artefacts in {out}")


if __name__ == "__main__":
    main()
