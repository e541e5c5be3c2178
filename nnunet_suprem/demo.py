"""``nnunet-suprem demo``: the whole SuPreM story on synthetic phantoms, with stock nnU-Net commands.

Partially labelled sources -> merge -> plan/preprocess -> pre-train (SuPreMTrainer) -> a target dataset with novel
classes, planned onto the pre-trained network -> a few-shot study (``nnunet-suprem fewshot``) at 5 training cases:
fine-tune from the pre-trained checkpoint and the same training from scratch, predict the held-out test cases,
evaluate -> a table, a figure and learning curves.

Every step is a command a user could type (printed before it runs, its output kept in ``OUT/logs``), run with
``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` inside ``OUT`` (the study's in ``OUT/fewshot``) and
``nnUNet_def_n_proc`` worker processes per command (else 2). A finished step is not run again, and an interrupted
training continues (``--c``), so running the same command again resumes.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nnunet_suprem.fewshot.curves import first_epoch_means, plot_learning_curves, read_class_curves
from nnunet_suprem.fewshot.report import ARMS, class_groups
from nnunet_suprem.fewshot.study import Study, run_study
from nnunet_suprem.jobs import default_num_processes
from nnunet_suprem.nnunet_env import dataset_name, with_ext_trainers
from nnunet_suprem.planning.recipes import CPU_PLANS_NAME
from nnunet_suprem.steps import (Step, add_device_argument, claimed_out, default_device, report_failure, run_steps,
                                 step_times, time_table, trainer_epochs)

logger = logging.getLogger(__name__)

DEFAULT_OUT = "suprem_demo"
DEMO_SETTINGS_FILE = "demo.json"
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
UNSET_WORKERS = 2  # worker processes of every command (-np, nnU-Net's pools) unless nnUNet_def_n_proc says otherwise


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
    plans: str = "nnUNetPlans"  # of the pre-training: nnU-Net's own, or CPU_PLANS_NAME (``plan --preset cpu``)
    # phantom anatomy (``synth --organ-scale``): small organs 1.4x larger, so that on 32^3 grids a from-scratch
    # nnU-Net learns the novel classes within the default budget (docs/benchmarks.md)
    organ_scale: float = 1.4


# 16^3 phantoms (about 2 cm voxels) with organs twice the reference size: nnU-Net's own U-Net at full width steps
# about 7x faster than on 32^3 and learns every class within minutes (docs/benchmarks.md#the-demo)
FAST = Budget((16, 16, 16), 6, 3, 2, "SuPreMTrainer_30epochs_50iterations",
              "SuPreMFinetuneTrainer_12epochs_40iterations", "SuPreMTrainer_12epochs_40iterations", organ_scale=2.0)
SMOKE = Budget((16, 16, 16), 2, 2, 1, "SuPreMTrainer_smoke", "SuPreMFinetuneTrainer_smoke", "SuPreMTrainer_smoke",
               CPU_PLANS_NAME)
FULL = Budget((32, 32, 32), 10, 4, 4, "SuPreMTrainer_100epochs_25iterations",
              "SuPreMFinetuneTrainer_40epochs_25iterations", "SuPreMTrainer_40epochs_25iterations")


class Demo:
    """The demo's commands for one budget and output folder; the fine-tuning part is a few-shot study."""

    def __init__(self, out: Path, budget: Budget, device: str, draws: int):
        self.out, self.budget, self.device, self.draws = out, budget, device, draws
        self.raw = out / "nnUNet_raw"
        self.preprocessed = out / "nnUNet_preprocessed"
        self.results = out / "nnUNet_results"
        self.workers = default_num_processes(UNSET_WORKERS)

    @property
    def pretrained_folder(self) -> Path:
        return (self.results / DATASET_FOLDERS[PRETRAIN_ID]
                / f"{self.budget.pretrain_trainer}__{self.budget.plans}__3d_fullres")

    def steps(self) -> list[Step]:
        """Everything up to the planned target and the pre-trained checkpoint; each step's inputs are the files
        earlier steps wrote, so a redone step redoes the steps after it that read what it wrote."""
        b, shape, np_ = self.budget, [str(s) for s in self.budget.shape], ["-np", str(self.workers)]
        sources = {name: self.raw / dataset_name(i, name) for name, (i, _, _) in SOURCES.items()}
        pretraining = self.preprocessed / DATASET_FOLDERS[PRETRAIN_ID]
        target = self.raw / DATASET_FOLDERS[TARGET_ID]
        commands = [(f"simulate source {name}: {hospital} annotates {classes}",
                     ["nnunet-suprem", "synth", "-d", str(i), "--name", name, "--hospitals", hospital, "--cases",
                      str(b.source_cases), "--annotate", f"{hospital}={classes}", "--shape", *shape,
                      "--organ-scale", str(b.organ_scale), "--seed", str(i), *np_, "--overwrite"],
                     (), (sources[name],))
                    for name, (i, hospital, classes) in SOURCES.items()]
        commands += [
            ("merge the partially labelled sources into one taxonomy",
             ["nnunet-suprem", "merge", *(str(i) for i, _, _ in SOURCES.values()), "-d", str(PRETRAIN_ID),
              "--name", PRETRAIN_NAME, "--taxonomy", "union", *np_, "--overwrite"],
             tuple(sources.values()), (self.raw / DATASET_FOLDERS[PRETRAIN_ID],)),
            self.planning(np_),
        ]
        steps = [Step(title, command, f"{number:02d}_{command[0]}", inputs, outputs)
                 for number, (title, command, inputs, outputs) in enumerate(commands, 1)]
        steps.append(Step(f"pre-train with partial labels: {b.pretrain_trainer}",
                          ["nnUNetv2_train", str(PRETRAIN_ID), "3d_fullres", "0", "-tr", b.pretrain_trainer,
                           *(["-p", b.plans] if b.plans != "nnUNetPlans" else []), "-device", self.device],
                          f"{len(steps) + 1:02d}_nnUNetv2_train",
                          inputs=(pretraining / f"{b.plans}.json", pretraining / "dataset.json",
                                  pretraining / f"{b.plans}_3d_fullres"),
                          outputs=(self.checkpoint,), results_folder=self.checkpoint.parent,
                          epochs=trainer_epochs(b.pretrain_trainer)))
        commands = [
            (f"simulate the target: {SEEN_CLASSES} (annotated in pre-training) and {NOVEL_CLASSES} (novel)",
             ["nnunet-suprem", "synth", "-d", str(TARGET_ID), "--name", TARGET_NAME, "--cases",
              str(b.target_cases), "--test-cases", str(b.test_cases), "--annotate",
              *(f"{h}={TARGET_CLASSES}" for _, h, _ in SOURCES.values()), "--shape", *shape,
              "--organ-scale", str(b.organ_scale), "--seed", str(TARGET_ID), *np_, "--overwrite"],
             (), (target,)),
            ("plan the target with the pre-trained network, then preprocess",
             ["nnunet-suprem", "plan-transfer", "-d", str(TARGET_ID), "--pretrained", str(self.pretrained_folder),
              "--plans-name", TARGET_PLANS, *np_, "--overwrite"],
             (target, self.pretrained_folder / "plans.json", self.checkpoint),
             (self.preprocessed / DATASET_FOLDERS[TARGET_ID],)),
        ]
        return steps + [Step(title, command, f"{number:02d}_{command[0]}", inputs, outputs)
                        for number, (title, command, inputs, outputs) in enumerate(commands, len(steps) + 1)]

    def planning(self, np_: list[str]) -> tuple[str, list[str], tuple[Path, ...], tuple[Path, ...]]:
        """The planning step of the pre-training dataset: nnU-Net's, or its plans with the CPU preset's network."""
        raw, pretraining = self.raw / DATASET_FOLDERS[PRETRAIN_ID], self.preprocessed / DATASET_FOLDERS[PRETRAIN_ID]
        if self.budget.plans == CPU_PLANS_NAME:
            return ("plan and preprocess the pre-training dataset: nnU-Net's plans with a narrower network",
                    ["nnunet-suprem", "plan", "--preset", "cpu", "-d", str(PRETRAIN_ID), *np_, "--overwrite"],
                    (raw,), (pretraining / f"{CPU_PLANS_NAME}.json",))
        return ("plan and preprocess the pre-training dataset",
                ["nnUNetv2_plan_and_preprocess", "-d", str(PRETRAIN_ID), "-c", "3d_fullres", *np_],
                (raw,), (pretraining,))

    @property
    def checkpoint(self) -> Path:
        return self.pretrained_folder / "fold_0" / "checkpoint_final.pth"

    def study(self) -> Study:
        """The fine-tuning part: pre-trained vs scratch on TRAIN_CASES cases, ``draws`` times."""
        target = DATASET_FOLDERS[TARGET_ID]
        return Study(str(self.preprocessed / target), TARGET_PLANS, "3d_fullres", str(self.checkpoint),
                     (TRAIN_CASES,), self.draws, 0, self.budget.finetune_trainer, self.budget.scratch_trainer,
                     str(self.raw / target / "imagesTs"), str(self.raw / target / "labelsTs"), tolerance=None)

    def environment(self) -> dict[str, str]:
        env = with_ext_trainers()
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results))
        env.setdefault("nnUNet_def_n_proc", str(self.workers))
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def run(self) -> None:
        start = time.perf_counter()
        run_steps(self.steps(), self.out, self.environment(), self.device)
        folder = self.out / "fewshot"
        logger.info("\nfine-tuning: a few-shot study in %s (as nnunet-suprem fewshot)", folder)
        fewshot = run_study(self.study(), folder, self.device, self.workers)
        runs = {arm: [read_class_curves(fewshot.model_folder(arm) / f"fold_{fold}") for _, _, fold in fewshot.runs()]
                for arm in ARMS}
        groups = class_groups(runs[ARMS[0]][0], fewshot.known_classes)
        figure = self.out / "learning_curves.png"
        plot_learning_curves(runs, groups, figure, f"Fine-tuning on the target, {TRAIN_CASES} training cases")
        first = first_epoch_means(runs, groups)
        logger.info("pseudo Dice after the first fine-tuning epoch (validation cases):\n%s\nlearning curves: %s",
                    "\n".join(f"  {group:<6} " + ", ".join(f"{arm} {first[arm, group]:.3f}" for arm in ARMS)
                              for group in dict.fromkeys(groups.values())), figure)
        logger.info("where the time went (every step's own run, resumed ones included):\n%s",
                    time_table(step_times(self.out) + step_times(folder)))
        logger.info("total %.0f s; everything is in %s:\n  export nnUNet_raw=%s nnUNet_preprocessed=%s "
                    "nnUNet_results=%s", time.perf_counter() - start, self.out, self.raw,
                    folder / "nnUNet_preprocessed", folder / "nnUNet_results")


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole SuPreM story on synthetic CT phantoms (no download), pre-trained vs scratch",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"folder for every dataset, model, prediction and log (default: ./{DEFAULT_OUT}); running "
                        f"again with the same folder resumes")
    p.add_argument("--fast", action="store_true",
                   help=f"the story in about 10 minutes on 2 CPU cores, on coarse phantoms: {FAST.shape[0]}^3 "
                        f"voxels, organs {FAST.organ_scale:g}x larger, {FAST.pretrain_trainer}, "
                        f"{FAST.finetune_trainer} "
                        f"(default: {FULL.shape[0]}^3 phantoms, {FULL.pretrain_trainer}, {FULL.finetune_trainer})")
    p.add_argument("--smoke", action="store_true",
                   help="check the installation: every step at a minimal size in about 3 minutes on a CPU (the "
                        "numbers mean nothing)")
    p.add_argument("--folds", type=int, default=1,
                   help=f"independent draws of the {TRAIN_CASES} training cases, each fine-tuned both ways "
                        f"(default: 1)")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.folds < 1:
        raise ValueError(f"--folds must be >= 1, got {args.folds}")
    if args.fast and args.smoke:
        raise ValueError("--fast and --smoke are different budgets: choose one")
    budget = SMOKE if args.smoke else FAST if args.fast else FULL
    out = Path(args.out).expanduser().resolve()
    with claimed_out(out, {"budget": asdict(budget), "folds": args.folds}, DEMO_SETTINGS_FILE, "demo"):
        return report_failure("demo", Demo(out, budget, args.device or default_device(), args.folds).run)
