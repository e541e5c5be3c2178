"""``nnunet-suprem demo``: the whole SuPreM story on synthetic phantoms, with stock nnU-Net commands.

Partially labelled sources -> merge -> plan/preprocess -> pre-train (SuPreMTrainer) -> a target dataset with novel
classes, planned onto the pre-trained network with 5 training cases -> fine-tune from the pre-trained checkpoint and
the same training from scratch -> predict the held-out test cases -> evaluate -> a table and a learning-curve figure.

Every step is a command a user could type (printed before it runs, its output kept in ``OUT/logs``), run with
``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` inside ``OUT``. A finished step is not run again, and an
interrupted training continues (``--c``), so running the same command again resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from nnunet_suprem.fileio import atomic_path, write_json
from nnunet_suprem.nnunet_env import dataset_name, with_ext_trainers

DEFAULT_OUT = "suprem_demo"
SETTINGS_FILE = "demo.json"
SOURCES = {  # simulated public datasets: dataset ID, hospital, the classes it annotates (partial labels)
    "DemoSourceA": (601, "hospA", "liver,aorta,postcava,lung_left,lung_right,gall_bladder"),
    "DemoSourceB": (602, "hospB", "liver,aorta,pancreas,bladder,femur_left,femur_right"),
    "DemoSourceC": (603, "hospC", "liver,postcava,pancreas,bladder,lung_left,lung_right,femur_left,femur_right"),
}
PRETRAIN_ID, PRETRAIN_NAME = 610, "DemoPretrain"
TARGET_ID, TARGET_NAME = 620, "DemoNovel"
DATASET_FOLDERS = {PRETRAIN_ID: dataset_name(PRETRAIN_ID, PRETRAIN_NAME),
                   TARGET_ID: dataset_name(TARGET_ID, TARGET_NAME)}
# the target annotates classes the pre-training annotated (in another dataset's label values) and novel ones, like
# SuPreM's TotalSegmentator organs group; the novel organs are in every pre-training image but never annotated there
SEEN_CLASSES = "liver,lung_left,lung_right,aorta"
NOVEL_CLASSES = "spleen,kidney_left,kidney_right,stomach"
TARGET_CLASSES = f"{SEEN_CLASSES},{NOVEL_CLASSES}"
TARGET_PLANS = "nnUNetPlans_transfer"
TRAIN_CASES = 5
ARMS = ("pretrained", "scratch")


@dataclass(frozen=True)
class Budget:
    """Sizes and trainers of one demo run (the trainers' names say their epochs and iterations)."""
    shape: tuple[int, int, int]  # voxel grid of every phantom
    source_cases: int  # training cases per source dataset
    target_cases: int  # per hospital: TRAIN_CASES of them train, the others validate
    test_cases: int  # held-out, fully annotated, per hospital
    pretrain_trainer: str
    finetune_trainer: str  # from the pre-trained checkpoint
    scratch_trainer: str  # the same epochs, iterations and schedule from random weights


FAST = Budget((32, 32, 32), 6, 3, 2, "SuPreMTrainer_16epochs_20iterations",
              "SuPreMFinetuneTrainer_10epochs_12iterations", "SuPreMTrainer_10epochs_12iterations")
SMOKE = Budget((16, 16, 16), 2, 2, 1, "SuPreMTrainer_smoke", "SuPreMFinetuneTrainer_smoke", "SuPreMTrainer_smoke")
FULL = Budget((32, 32, 32), 10, 4, 4, "SuPreMTrainer_100epochs_25iterations",
              "SuPreMFinetuneTrainer_40epochs_25iterations", "SuPreMTrainer_40epochs_25iterations")


class StepFailed(Exception):
    """A command of the demo failed; the message names it and shows the end of its log."""


@dataclass
class Step:
    """One command of the demo; ``epochs`` > 0 marks an nnU-Net training (progress bar, resumable with --c)."""
    title: str
    command: list[str]
    epochs: int = 0
    results_folder: Path | None = None  # training: the fold folder nnU-Net writes into


class Demo:
    """The demo's commands for one budget and output folder, running them, and the final report."""

    def __init__(self, out: Path, budget: Budget, device: str, folds: int):
        self.out, self.budget, self.device, self.folds = out, budget, device, folds
        self.raw = out / "nnUNet_raw"
        self.preprocessed = out / "nnUNet_preprocessed"
        self.results = out / "nnUNet_results"

    # --- the story, as commands -------------------------------------------------------------------------------
    def model_folder(self, dataset: str, trainer: str, plans: str) -> Path:
        return self.results / dataset / f"{trainer}__{plans}__3d_fullres"

    @property
    def pretrained_folder(self) -> Path:
        return self.model_folder(DATASET_FOLDERS[PRETRAIN_ID], self.budget.pretrain_trainer, "nnUNetPlans")

    def arm_trainer(self, arm: str) -> str:
        return self.budget.finetune_trainer if arm == "pretrained" else self.budget.scratch_trainer

    def predictions(self, arm: str, fold: int) -> Path:
        return self.out / "predictions" / arm / f"fold_{fold}"

    def evaluation(self, fold: int) -> Path:
        return self.out / "evaluation" / f"fold_{fold}"

    def steps(self) -> list[Step]:
        b, shape, np_ = self.budget, [str(s) for s in self.budget.shape], ["-np", "2"]
        steps = [Step(f"simulate source {name}: {hospital} annotates {classes}",
                      ["nnunet-suprem", "synth", "-d", str(i), "--name", name, "--hospitals", hospital, "--cases",
                       str(b.source_cases), "--annotate", f"{hospital}={classes}", "--shape", *shape,
                       "--seed", str(i), *np_, "--overwrite"])
                 for name, (i, hospital, classes) in SOURCES.items()]
        steps += [
            Step("merge the partially labelled sources into one taxonomy",
                 ["nnunet-suprem", "merge", *(str(i) for i, _, _ in SOURCES.values()), "-d", str(PRETRAIN_ID),
                  "--name", PRETRAIN_NAME, "--taxonomy", "union", *np_, "--overwrite"]),
            Step("plan and preprocess the pre-training dataset",
                 ["nnUNetv2_plan_and_preprocess", "-d", str(PRETRAIN_ID), "-c", "3d_fullres", *np_]),
            self.training_step("pre-train with partial labels", PRETRAIN_ID, b.pretrain_trainer, "nnUNetPlans", 0),
            Step(f"simulate the target: {SEEN_CLASSES} (annotated in pre-training) and {NOVEL_CLASSES} (novel)",
                 ["nnunet-suprem", "synth", "-d", str(TARGET_ID), "--name", TARGET_NAME, "--cases",
                  str(b.target_cases), "--test-cases", str(b.test_cases), "--annotate",
                  *(f"{h}={TARGET_CLASSES}" for _, h, _ in SOURCES.values()), "--shape", *shape,
                  "--seed", str(TARGET_ID), *np_, "--overwrite"]),
            Step("plan the target with the pre-trained network, then preprocess",
                 ["nnunet-suprem", "plan-transfer", "-d", str(TARGET_ID), "--pretrained", str(self.pretrained_folder),
                  "--plans-name", TARGET_PLANS, *np_, "--overwrite"]),
            Step(f"few-shot split: {TRAIN_CASES} training cases per fold",
                 ["nnunet-suprem", "split", "-d", str(TARGET_ID), "--train-cases", str(TRAIN_CASES),
                  "--folds", str(self.folds), "--seed", "0", "--overwrite"]),
        ]
        checkpoint = str(self.pretrained_folder / "fold_0" / "checkpoint_final.pth")
        test_images = str(self.raw / DATASET_FOLDERS[TARGET_ID] / "imagesTs")
        test_labels = str(self.raw / DATASET_FOLDERS[TARGET_ID] / "labelsTs")
        for fold in range(self.folds):
            for arm in ARMS:
                weights = ["-pretrained_weights", checkpoint] if arm == "pretrained" else []
                steps.append(self.training_step(f"fine-tune, {arm}, fold {fold}", TARGET_ID, self.arm_trainer(arm),
                                                TARGET_PLANS, fold, weights))
            for arm in ARMS:
                steps.append(Step(f"predict the test cases, {arm}, fold {fold}",
                                  ["nnUNetv2_predict", "-i", test_images, "-o", str(self.predictions(arm, fold)),
                                   "-d", str(TARGET_ID), "-c", "3d_fullres", "-p", TARGET_PLANS,
                                   "-tr", self.arm_trainer(arm), "-f", str(fold), "-chk", "checkpoint_final.pth",
                                   "-device", self.device, "-npp", "1", "-nps", "1"]))
            steps.append(Step(f"evaluate pre-trained against scratch, fold {fold}",
                              ["nnunet-suprem", "evaluate", str(self.predictions("pretrained", fold)), test_labels,
                               "--compare", str(self.predictions("scratch", fold)), "--no-nsd", *np_,
                               "-o", str(self.evaluation(fold))]))
        return steps

    def training_step(self, title: str, dataset_id: int, trainer: str, plans: str, fold: int,
                      extra: Sequence[str] = ()) -> Step:
        return Step(f"{title}: {trainer}",
                    ["nnUNetv2_train", str(dataset_id), "3d_fullres", str(fold), "-tr", trainer, "-p", plans,
                     "-device", self.device, *extra],
                    epochs=trainer_epochs(trainer),
                    results_folder=self.model_folder(DATASET_FOLDERS[dataset_id], trainer, plans) / f"fold_{fold}")

    # --- running ----------------------------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        env = with_ext_trainers()
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results))
        env.setdefault("nnUNet_def_n_proc", "2")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def training_environment(self) -> dict[str, str]:
        """On a CPU, augment in the training process: worker processes only compete for the same cores (nnU-Net's
        planning needs nnUNet_n_proc_DA >= 1, so this is for training only). A value the user set wins."""
        if self.device != "cpu" or "nnUNet_n_proc_DA" in os.environ:
            return {}
        return {"nnUNet_n_proc_DA": "0"}

    def run(self) -> None:
        steps = self.steps()
        env, done_dir, logs = self.environment(), self.out / ".steps_done", self.out / "logs"
        done_dir.mkdir(parents=True, exist_ok=True)
        logs.mkdir(exist_ok=True)
        start = time.perf_counter()
        for number, step in enumerate(steps, 1):
            marker = done_dir / f"{number:02d}"
            header = f"[{number}/{len(steps)}] {step.title}"
            if marker.is_file():
                print(f"{header}: done before", flush=True)
                continue
            print(f"{header}\n  $ {shlex.join(step.command)}", flush=True)
            step_start = time.perf_counter()
            step_env = {**env, **self.training_environment()} if step.epochs else env
            run_logged(resumable(step), step_env, logs / f"{number:02d}_{step.command[0]}.log", step.epochs)
            marker.write_text(shlex.join(step.command) + "\n")
            print(f"  {time.perf_counter() - step_start:.0f} s", flush=True)
        table = self.report()
        print(f"\n{table}\ntotal {time.perf_counter() - start:.0f} s; everything is in {self.out}:\n"
              f"  export nnUNet_raw={self.raw} nnUNet_preprocessed={self.preprocessed} nnUNet_results={self.results}")

    # --- the result -------------------------------------------------------------------------------------------
    def report(self) -> str:
        """The Dice table (also written to OUT/results.md) and OUT/learning_curves.png."""
        per_fold = [json.loads((self.evaluation(f) / "summary.json").read_text()) for f in range(self.folds)]
        table = dice_table(per_fold, self.describe(), set(SEEN_CLASSES.split(",")))
        with atomic_path(self.out / "results.md") as tmp:
            Path(tmp).write_text(table + "\n")
        figure = self.out / "learning_curves.png"
        plot_learning_curves({arm: [self.learning_curve(arm, f) for f in range(self.folds)] for arm in ARMS},
                             figure, f"Fine-tuning on the target, {TRAIN_CASES} training cases")
        return f"{table}\n\nlearning curves: {figure}"

    def describe(self) -> str:
        test = self.budget.test_cases * len(SOURCES)
        return (f"Test Dice on {test} held-out target cases after fine-tuning on {TRAIN_CASES} cases "
                f"({self.budget.finetune_trainer} vs {self.budget.scratch_trainer}, {self.folds} fold(s), "
                f"{self.device})")

    def learning_curve(self, arm: str, fold: int) -> list[float]:
        from nnunet_suprem.transfer.checkpoint import load_weights_only

        folder = self.model_folder(DATASET_FOLDERS[TARGET_ID], self.arm_trainer(arm), TARGET_PLANS)
        checkpoint = load_weights_only(folder / f"fold_{fold}" / "checkpoint_final.pth")
        return [float(v) for v in checkpoint["logging"]["mean_fg_dice"]]


def trainer_epochs(name: str) -> int:
    """Epochs of one of our trainer classes (they are defined with an ``epochs`` attribute)."""
    from nnunet_suprem.training import finetune_trainer, suprem_trainer

    for module in (finetune_trainer, suprem_trainer):
        if hasattr(module, name):
            return getattr(module, name).epochs
    raise ValueError(f"{name} is not an nnunet-suprem trainer")


def resumable(step: Step) -> list[str]:
    """A training that left a checkpoint continues from it (nnU-Net's --c; pre-trained weights are in it)."""
    if step.results_folder is None or not (step.results_folder / "checkpoint_latest.pth").is_file():
        return step.command
    command = list(step.command)
    if "-pretrained_weights" in command:
        index = command.index("-pretrained_weights")
        del command[index:index + 2]
    return [*command, "--c"]


def run_logged(command: Sequence[str], env: dict[str, str], log: Path, epochs: int) -> None:
    """Run ``command`` with its output in ``log``; training shows nnU-Net's epochs as a progress bar."""
    from tqdm import tqdm

    executable = Path(sys.executable).parent / command[0]
    argv = [str(executable) if executable.is_file() else command[0], *command[1:]]
    # a bar on a terminal (tqdm's disable=None), nothing in a redirected output: the log has every epoch
    bar = tqdm(total=epochs, desc="  epochs", unit="epoch", leave=False, disable=None) if epochs else None
    with open(log, "w") as out:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            out.write(line)
            match = re.search(r"Epoch (\d+)$", line.strip()) if bar is not None else None
            if match:
                bar.n = int(match.group(1))
                bar.refresh()
        status = process.wait()
    if bar is not None:
        bar.close()
    if status != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise StepFailed(f"{shlex.join(command)} failed (exit {status}); last lines of {log}:\n{tail}")


def dice_table(per_fold: Sequence[dict], title: str, seen: set[str]) -> str:
    """Markdown table of the evaluation summaries: Dice per class, pre-trained (A) vs scratch (B), means over folds;
    ``seen``: the classes pre-training annotated (grouped means for them and for the novel ones)."""
    import numpy as np

    classes = list(per_fold[0]["mean"])

    def dice(summary: dict, arm: str, names: Sequence[str]) -> float:
        means = summary["mean"] if arm == "pretrained" else summary["comparison"]["mean"]
        values = np.array([means[c]["Dice"] for c in names], dtype=float)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    def cell(values: Sequence[float]) -> str:
        values = np.asarray(values, dtype=float)
        if not np.isfinite(values).any():
            return "n/a"
        return f"{np.nanmean(values):.3f}" + (f" ± {np.nanstd(values):.3f}" if len(values) > 1 else "")

    groups = [(c, [c], "yes" if c in seen else "no") for c in classes]
    groups += [("mean, seen in pre-training", [c for c in classes if c in seen], ""),
               ("mean, novel", [c for c in classes if c not in seen], ""), ("mean, all", classes, "")]
    rows = [title, "", "| class | in pre-training | pre-trained | scratch | difference |",
            "| --- | --- | ---: | ---: | ---: |"]
    for name, members, flag in groups:
        if not members:
            continue
        a = [dice(s, "pretrained", members) for s in per_fold]
        b = [dice(s, "scratch", members) for s in per_fold]
        rows.append(f"| {name} | {flag} | {cell(a)} | {cell(b)} | {cell(np.subtract(a, b))} |")
    return "\n".join(rows)


def plot_learning_curves(curves: dict[str, list[list[float]]], path: Path, title: str) -> None:
    """Pseudo Dice per epoch of each arm (mean over folds, band = s.d.)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with plt.style.context("default"):  # nnU-Net's progress plots change seaborn's global style
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm, runs in curves.items():
            values = np.array(runs, dtype=float)
            mean, sd = np.nanmean(values, 0), np.nanstd(values, 0)
            epochs = np.arange(1, values.shape[1] + 1)
            ax.plot(epochs, mean, label=f"{arm} ({len(runs)} fold{'s' * (len(runs) > 1)})")
            ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.2)
        ax.set(xlabel="epoch", ylabel="pseudo Dice (nnU-Net, validation cases)", title=title, ylim=(0, 1))
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)


def prepare_out(out: Path, settings: dict) -> None:
    """Use ``out`` for a new demo, or resume the demo there with the same settings; refuse anything else."""
    saved = out / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))  # as read back (tuples become lists)
    if saved.is_file():
        previous = json.loads(saved.read_text())
        if previous != settings:
            raise ValueError(f"{out} holds a demo run with other settings ({previous}); to run with {settings} "
                             f"choose another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a demo folder (no {SETTINGS_FILE}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings, saved)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole SuPreM story on synthetic CT phantoms (no download), pre-trained vs scratch",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"folder for every dataset, model, prediction and log (default: ./{DEFAULT_OUT}); running "
                        f"again with the same folder resumes")
    p.add_argument("--fast", action="store_true",
                   help=f"small budget, under 10 minutes on 2 CPU cores: {FAST.shape[0]}^3 phantoms, "
                        f"{FAST.pretrain_trainer}, {FAST.finetune_trainer} (default: {FULL.shape[0]}^3 phantoms, "
                        f"{FULL.pretrain_trainer}, {FULL.finetune_trainer})")
    p.add_argument("--smoke", action="store_true",
                   help="check the installation: every step at a minimal size in about 3 minutes on a CPU (the "
                        "numbers mean nothing)")
    p.add_argument("--folds", type=int, default=1,
                   help="independent draws of the 5 training cases, each fine-tuned both ways (default: 1)")
    p.add_argument("-device", dest="device", choices=("cuda", "cpu", "mps"), default=None,
                   help="nnU-Net's device (default: cuda when available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.folds < 1:
        raise ValueError(f"--folds must be >= 1, got {args.folds}")
    if args.fast and args.smoke:
        raise ValueError("--fast and --smoke are different budgets: choose one")
    budget = SMOKE if args.smoke else FAST if args.fast else FULL
    out = Path(args.out).expanduser().resolve()
    device = args.device or default_device()
    prepare_out(out, {"budget": asdict(budget), "folds": args.folds})
    try:
        Demo(out, budget, device, args.folds).run()
    except StepFailed as e:
        print(f"nnunet-suprem demo: {e}\nFix the cause and run the same command again to resume.", file=sys.stderr)
        return 1
    return 0
