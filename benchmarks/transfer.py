"""Does supervised pre-training help on novel classes with few cases? Fine-tuned vs scratch, side by side.

    python benchmarks/transfer.py [--pretrain-epochs 30] [--epochs 20] [--iterations 20] [--seeds 0 1 2] [--out DIR]

1. Pre-training: three simulated hospitals annotate different subsets of 10 organs (partial
   labels); SuPreMTrainer learns all of them.
2. Target: a new dataset whose classes were never seen in pre-training (spleen, both kidneys,
   stomach: organs of the size the phantoms resolve at 32^3), planned with `nnunet-suprem plan-transfer` onto the
   pre-trained topology, with `nnunet-suprem split --train-cases 5`: 5 training cases.
3. For each seed, the same SuPreMFinetuneTrainer with the same epochs and iterations:
   from the pre-trained checkpoint (through nnU-Net's own `-pretrained_weights` code path)
   and from scratch (no weights). Test Dice on held-out fully annotated target cases with
   nnU-Net's metric code; mean +- s.d. over seeds; learning curves (nnU-Net's pseudo Dice on
   the validation case per epoch) as a PNG.
Everything runs through nnU-Net on the CPU unless a GPU is present. Artefacts stay in --out.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from common import make_trainer, nnunet_folders, run, test_dice
from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer

PRETRAIN = {"hospA": "liver,aorta,postcava,lung_left,lung_right,gall_bladder",
            "hospB": "liver,aorta,pancreas,bladder,femur_left,femur_right",
            "hospC": "liver,postcava,pancreas,bladder,lung_left,lung_right,femur_left,femur_right"}
NOVEL = "spleen,kidney_left,kidney_right,stomach"
TARGET_PLANS = "nnUNetPlans_transfer"


def bench_class(base, name: str, epochs: int, iterations: int):
    """A subclass of ``base`` with its own results folder name and the benchmark's training length."""
    return type(name, (base,), {"epochs": epochs, "iterations_per_epoch": iterations, "val_iterations_per_epoch": 2})


def pretrain(args, device: torch.device) -> Path:
    """SuPreMTrainer on the partially labelled sources; returns its results folder (kept across runs)."""
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    cls = bench_class(SuPreMTrainer, "BenchPretrainTrainer", args.pretrain_epochs, args.iterations)
    folder = Path(os.environ["nnUNet_results"]) / "Dataset601_Pretrain" / f"{cls.__name__}__nnUNetPlans__3d_fullres"
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    run("nnunet-suprem", "synth", "-d", "601", "--name", "Pretrain", "--cases", str(args.cases), "--shape",
        *map(str, args.shape), "--seed", "100", "-np", "2", "--annotate", *(f"{h}={c}" for h, c in PRETRAIN.items()))
    run("nnUNetv2_plan_and_preprocess", "-d", "601", "-c", "3d_fullres", "-np", "2")
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = make_trainer(cls, "Dataset601_Pretrain", device)
    trainer.run_training()
    return folder


def prepare_target(args, pretrained_folder: Path) -> None:
    """The novel-class dataset, planned onto the pre-trained topology, with a 5-case split."""
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / "Dataset602_Novel"
    if (preprocessed / "splits_final.json").is_file():
        return
    run("nnunet-suprem", "synth", "-d", "602", "--name", "Novel", "--cases", "2", "--test-cases",
        str(args.test_cases), "--shape", *map(str, args.shape), "--seed", "200", "-np", "2",
        "--annotate", *(f"{h}={NOVEL}" for h in PRETRAIN))
    run("nnunet-suprem", "plan-transfer", "-d", "602", "--pretrained", str(pretrained_folder), "-c", "3d_fullres",
        "--plans-name", TARGET_PLANS)
    run("nnunet-suprem", "split", "-d", "602", "--train-cases", str(args.train_cases), "--seed", "0")


def finetune(arm: str, seed: int, args, checkpoint: Path, device: torch.device):
    """One fine-tuning run; returns (test Dice per class, pseudo-Dice curve, seconds)."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    torch.manual_seed(seed)
    np.random.seed(seed)
    cls = bench_class(SuPreMFinetuneTrainer, f"BenchFinetune_{arm}_seed{seed}", args.epochs, args.iterations)
    cls.pretrained_lr_scale = args.pretrained_lr_scale
    trainer = make_trainer(cls, "Dataset602_Novel", device, TARGET_PLANS)
    # nnU-Net's own -pretrained_weights path (run_training.maybe_load_checkpoint), as nnUNetv2_train runs it
    maybe_load_checkpoint(trainer, False, False, str(checkpoint) if arm == "pretrained" else None)
    start = time.perf_counter()
    trainer.run_training()
    seconds = time.perf_counter() - start
    raw = Path(os.environ["nnUNet_raw"]) / "Dataset602_Novel"
    dice = test_dice(trainer, raw, Path(trainer.output_folder) / "test_predictions", device)
    curve = [float(v) for v in trainer.logger.get_value("mean_fg_dice", None)]
    return dice, curve, seconds


def plot_curves(curves: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("default"):  # nnU-Net's progress plots change seaborn's global style
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm, runs in curves.items():
            values = np.array(runs, dtype=float)
            mean, sd = np.nanmean(values, 0), np.nanstd(values, 0)
            epochs = np.arange(1, values.shape[1] + 1)
            ax.plot(epochs, mean, label=f"{arm} (mean of {len(runs)} seeds)")
            ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("pseudo Dice on the validation case")
        ax.set_title("Fine-tuning on novel classes, 5 training cases")
        ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (both arms)")
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    parser.add_argument("--cases", type=int, default=6, help="pre-training cases per hospital")
    parser.add_argument("--train-cases", type=int, default=5, help="target training cases")
    parser.add_argument("--test-cases", type=int, default=2, help="held-out target cases per hospital")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 32))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrained-lr-scale", type=float, default=SuPreMFinetuneTrainer.pretrained_lr_scale,
                        help="learning rate of pre-trained layers relative to new ones (trainer attribute; "
                             "default: the trainer's)")
    parser.add_argument("--out", help="keep all datasets and results here (default: a temporary folder)")
    args = parser.parse_args()

    out = nnunet_folders(args.out, "transfer_")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    pretrained_folder = pretrain(args, device)
    prepare_target(args, pretrained_folder)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # training only: nnU-Net's planning fails with 0
    checkpoint = pretrained_folder / "fold_0" / "checkpoint_final.pth"
    results = {"pretrained": [], "scratch": []}
    curves = {"pretrained": [], "scratch": []}
    for seed in args.seeds:
        for arm in results:
            print(f"fine-tuning {arm}, seed {seed} ...", flush=True)
            dice, curve, seconds = finetune(arm, seed, args, checkpoint, device)
            results[arm].append(dice)
            curves[arm].append(curve)
            print(f"  mean test Dice {np.nanmean(list(dice.values())):.3f} ({seconds:.0f} s)", flush=True)

    classes = list(results["pretrained"][0])
    print(f"\nTest Dice on {args.test_cases * 3} held-out cases, novel classes, {args.train_cases} training cases, "
          f"{args.epochs} epochs x {args.iterations} iterations, seeds {args.seeds}, {device.type} "
          f"(mean +- s.d. over seeds):")
    print(f"{'class':<14}{'pre-trained':>18}{'scratch':>18}")
    for c in classes:
        cells = [f"{np.mean([r[c] for r in results[a]]):.3f} +- {np.std([r[c] for r in results[a]]):.3f}"
                 for a in results]
        print(f"{c:<14}" + "".join(f"{cell:>18}" for cell in cells))
    means = {a: [float(np.nanmean(list(r.values()))) for r in results[a]] for a in results}
    print(f"{'mean':<14}" + "".join(f"{np.mean(m):.3f} +- {np.std(m):.3f}".rjust(18) for m in means.values()))
    gain = 100 * (np.mean(means["pretrained"]) - np.mean(means["scratch"]))
    print(f"\npre-trained - scratch: {gain:+.1f} Dice points (target >= +5); per seed: "
          + ", ".join(f"{100 * (p - s):+.1f}" for p, s in zip(means["pretrained"], means["scratch"])))
    plot_curves(curves, out / "learning_curves.png")
    print(f"learning curves: {out / 'learning_curves.png'}")
    print(f"total {time.perf_counter() - start:.0f} s; artefacts in {out}")


if __name__ == "__main__":
    main()
