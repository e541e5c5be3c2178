"""Training-step time of SuPreMTrainer vs stock nnUNetTrainer on a GPU, with and without nnUNet_compile.

    python benchmarks/cuda_step.py [--steps 30] [--warmup 3] [--shape 64 64 64] [--device cuda] [--out DIR]
    python benchmarks/cuda_step.py --device cpu --steps 2     # smoke check

Writes a small phantom dataset (3 hospitals, one annotating 4 of 6 classes: a partial-label manifest), plans and
preprocesses it with nnU-Net's own planner (3d_fullres), draws a few real batches with nnU-Net's data loader,
and times ``train_step`` (AMP and gradient scaling as nnU-Net does on CUDA) of both trainers on the same batches,
alternating who goes first, after ``--warmup`` steps that also absorb torch.compile. nnU-Net decides whether to
compile (``_do_i_compile``: never on CPU). Needs nnunetv2 and this repository (imported from the checkout when
the package is not installed); everything is written to a temporary folder unless ``--out`` is given.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's nnunet_suprem, installed or not

from common import make_trainer, nnunet_folders  # noqa: E402

DATASET_ID, DATASET = 999, "Dataset999_CudaStep"
PARTIAL = {"hospB": ("liver", "spleen", "kidney_left", "kidney_right")}
START = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", flush=True)


def make_dataset(shape: tuple[int, int, int], cases: int) -> None:
    """Phantom raw dataset with a partial-label manifest, fingerprinted, planned and preprocessed for 3d_fullres."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)

    from nnunet_suprem.phantom import HOSPITALS
    from nnunet_suprem.synth import hospitals_from_args, write_nnunet_dataset

    processes = min(8, os.cpu_count() or 1)
    hospitals = hospitals_from_args(list(HOSPITALS), [f"{h}={','.join(c)}" for h, c in PARTIAL.items()], shape)
    write_nnunet_dataset(DATASET_ID, DATASET.split("_", 1)[1], hospitals, cases, num_processes=processes)
    with contextlib.redirect_stdout(io.StringIO()):
        extract_fingerprint_dataset(DATASET_ID, num_processes=processes, show_progress_bar=False)
        plan_experiment_dataset(DATASET_ID)
        preprocess_dataset(DATASET_ID, configurations=["3d_fullres"], num_processes=[processes],
                           show_progress_bar=False)


def quietly(function, *args):
    """Call ``function(*args)`` without nnU-Net's console output (it stays in the trainers' log files)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def initialized(cls, device: torch.device):
    trainer = quietly(make_trainer, cls, DATASET, device)
    quietly(trainer.initialize)
    return trainer


def real_batches(trainer, count: int) -> list[dict]:
    """``count`` training batches from nnU-Net's data loader (patch sampling and augmentation included)."""
    loader, _ = quietly(trainer.get_dataloaders)
    return [next(loader) for _ in range(count)]


def time_steps(trainers: list, batches: list[dict], warmup: int, steps: int, device: torch.device) -> list[float]:
    """Mean seconds per ``train_step`` of each trainer after ``warmup`` steps, alternating who goes first."""
    times = [[] for _ in trainers]
    for step in range(warmup + steps):
        batch = batches[step % len(batches)]
        order = range(len(trainers)) if step % 2 == 0 else reversed(range(len(trainers)))
        for i in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainers[i].train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                times[i].append(time.perf_counter() - start)
    return [float(np.mean(t)) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per trainer and setting (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (default: 3)")
    parser.add_argument("--shape", type=int, nargs=3, help="phantom grid (default: 64^3 on cuda, 32^3 on cpu)")
    parser.add_argument("--cases", type=int, default=2, help="training cases per hospital (default: 2)")
    parser.add_argument("--batches", type=int, default=4, help="distinct real batches, cycled (default: 4)")
    parser.add_argument("--out", help="keep the datasets and logs here (default: a temporary folder)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; run with --device cpu for a smoke check")
    shape = tuple(args.shape or ((64,) * 3 if device.type == "cuda" else (32,) * 3))

    root = nnunet_folders(args.out, "cuda_step_")  # before nnunetv2 is imported: it reads the folders then
    try:
        benchmark(args, device, shape, root)
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


def benchmark(args: argparse.Namespace, device: torch.device, shape: tuple[int, ...], root: Path) -> None:
    progress(f"phantom dataset {shape} x {3 * args.cases} cases in {root}; planning and preprocessing ...")
    make_dataset(shape, args.cases)
    os.environ["nnUNet_n_proc_DA"] = "0"  # batches are drawn up front; nnU-Net's planner needs it unset
    torch.backends.cudnn.benchmark = True  # as nnU-Net's run_training
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    classes = {"nnUNetTrainer": nnUNetTrainer, "SuPreMTrainer": SuPreMTrainer}
    means: dict[str, list[float]] = {}
    batches, plan = None, ""
    for compile_flag in ("0", "1"):
        os.environ["nnUNet_compile"] = compile_flag
        trainers = [initialized(cls, device) for cls in classes.values()]
        compiled = quietly(trainers[0]._do_i_compile)
        if batches is None:
            batches = real_batches(trainers[1], args.batches)
            config = trainers[1].configuration_manager
            plan = f"3d_fullres patch {config.patch_size}, batch {config.batch_size}"
            progress(f"batches of cases {', '.join(k for b in batches for k in b['keys'])}")
            progress(plan)
        progress(f"nnUNet_compile={compile_flag} (compiled: {compiled}): {args.warmup} warm-up + {args.steps} "
                 f"timed steps per trainer ...")
        means[compile_flag] = time_steps(trainers, batches, args.warmup, args.steps, device)
        progress(", ".join(f"{label} {1000 * t:.1f} ms" for label, t in zip(classes, means[compile_flag])))
        del trainers
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\nMean train_step time (ms) after {args.warmup} warm-up steps, {args.steps} steps, {name}, {plan}")
    print(f"{'':<26}{'nnUNet_compile=0':>18}{'nnUNet_compile=1':>18}")
    for i, label in enumerate(classes):
        print(f"{label:<26}" + "".join(f"{1000 * means[f][i]:18.1f}" for f in ("0", "1")))
    print(f"{'SuPreMTrainer / nnUNet':<26}" + "".join(f"{means[f][1] / means[f][0]:18.3f}" for f in ("0", "1")))
    progress("done")


if __name__ == "__main__":
    main()
