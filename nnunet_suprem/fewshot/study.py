"""``nnunet-suprem fewshot``: pre-trained vs scratch at N training cases, several draws each, with stock nnU-Net.

For a target dataset planned with ``plan-transfer`` and a pre-trained checkpoint: one fold per (N, draw) in a
``splits_final.json`` of the study's own, every fold trained from the checkpoint and from scratch
(``nnUNetv2_train``), the held-out test cases predicted (``nnUNetv2_predict``) and scored (``nnunet-suprem
evaluate``), then ``fewshot.csv``, ``summary.csv``/``summary.md`` and ``fewshot.png``.

The user's nnU-Net folders are only read: the study has its own ``OUT/nnUNet_preprocessed/<dataset>`` made of
links to the preprocessed dataset's files plus its own splits, and its own ``OUT/nnUNet_results``; nnU-Net's
commands run with ``nnUNet_preprocessed``/``nnUNet_results`` pointing there. Every command is printed before it
runs, its output kept in ``OUT/logs``; running the same command again resumes (see :mod:`nnunet_suprem.steps`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path

from nnunet_suprem.evaluate.folders import find_dataset_json
from nnunet_suprem.fewshot.report import (ARMS, METHOD, class_groups, evaluation_rows, learned_overview, plot_study,
                                          read_evaluation, summarize_study, summary_markdown, unpaired_note,
                                          write_long_table, write_summary_csv)
from nnunet_suprem.fileio import (atomic_path, check_file_ending, check_name, check_text, input_cases, read_json,
                                  write_json)
from nnunet_suprem.jobs import default_num_processes
from nnunet_suprem.planning.recipes import TRANSFER_PLANS_NAME
from nnunet_suprem.planning.split import SPLITS_FILE, few_shot_splits, training_cases
from nnunet_suprem.steps import (Step, add_device_argument, changed_settings, claimed_out, default_device,
                                 report_failure, run_steps, trainer_epochs)

logger = logging.getLogger(__name__)

SETTINGS_FILE = "fewshot.json"
OUTPUTS = ("fewshot.csv", "summary.csv", "summary.md", "fewshot.png")
DEFAULT_PRETRAINED_TRAINER = "SuPreMFinetuneTrainer"
DEFAULT_SCRATCH_TRAINER = "SuPreMTrainer"


@dataclass(frozen=True)
class Study:
    """The settings of a few-shot study (``OUT/fewshot.json``; another run in OUT must have the same)."""
    preprocessed: str  # the target's preprocessed dataset folder, $nnUNet_preprocessed/DatasetXXX_NAME
    plans: str
    configuration: str
    checkpoint: str  # the pre-trained arm's -pretrained_weights
    sizes: tuple[int, ...]  # training cases N
    draws: int  # draws of N training cases, per N
    seed: int
    pretrained_trainer: str
    scratch_trainer: str
    test_images: str
    test_labels: str
    tolerance: float | None  # NSD tolerance in mm; None: Dice only
    scratch_from: str | None = None  # a finished study's folder whose scratch arm this study reuses; None: its own

    @property
    def dataset(self) -> str:
        return Path(self.preprocessed).name

    def trainer(self, arm: str) -> str:
        return self.pretrained_trainer if arm == "pretrained" else self.scratch_trainer

    def dataset_json(self) -> dict:
        return json.loads((Path(self.preprocessed) / "dataset.json").read_text())

    def file_ending(self) -> str:
        return check_file_ending(self.dataset_json().get("file_ending"), Path(self.preprocessed) / "dataset.json")

    def test_cases(self) -> list[str]:
        """The test cases' identifiers: ``CASE`` of the ``CASE_XXXX<file_ending>`` images in ``test_images``."""
        channels = len(self.dataset_json()["channel_names"])
        return sorted(input_cases(Path(self.test_images), self.file_ending(), channels))

    def check_held_out(self, cases: list[str]) -> None:
        """ValueError naming the test cases that are among the training ``cases`` (a draw could train on them)."""
        shared = sorted(set(cases) & set(self.test_cases()))
        if shared:
            raise ValueError(f"{self.test_images}: {len(shared)} test case(s) are training cases of {self.preprocessed}"
                             f" ({', '.join(shared)}): test on held-out cases only (--test-images)")

    def check_values(self, source: str) -> None:
        """ValueError naming ``source`` (the command line, a settings file) unless every setting has its type and
        range: names that are file names, sizes and draws positive integers, a tolerance >= 0."""
        paths = [(self.preprocessed, "preprocessed"), (self.checkpoint, "checkpoint"),
                 (self.test_images, "test_images"), (self.test_labels, "test_labels")]
        if self.scratch_from is not None:
            paths.append((self.scratch_from, "scratch_from"))
        for value, what in paths:
            check_text(value, what, source)
        for value, what in ((self.plans, "plans name"), (self.configuration, "configuration"),
                            (self.pretrained_trainer, "trainer"), (self.scratch_trainer, "trainer")):
            check_name(value, what, source)
        if not self.sizes or not all(_is_int(n) and n >= 1 for n in self.sizes):
            raise ValueError(f"{source}: training-set sizes must be integers >= 1, got {list(self.sizes)}")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"{source}: --train-cases lists a size twice: {list(self.sizes)}")
        if not (_is_int(self.draws) and self.draws >= 1):
            raise ValueError(f"{source}: --draws must be at least 1, got {self.draws!r}")
        if not _is_int(self.seed):
            raise ValueError(f"{source}: --seed must be an integer, got {self.seed!r}")
        if self.tolerance is not None and not (isinstance(self.tolerance, (int, float)) and self.tolerance >= 0):
            raise ValueError(f"{source}: --tolerance must be >= 0 mm, got {self.tolerance!r}")

    def check(self) -> list[str]:
        """Validate the settings against the files; returns the training cases (ValueError/FileNotFoundError)."""
        folder = Path(self.preprocessed)
        self.check_values("the command line")
        plans_file = folder / f"{self.plans}.json"
        if not plans_file.is_file():
            raise FileNotFoundError(f"{plans_file} not found: plan the target first (nnunet-suprem plan-transfer "
                                    f"--plans-name {self.plans})")
        if self.configuration not in json.loads(plans_file.read_text()).get("configurations", {}):
            raise ValueError(f"{plans_file} has no configuration {self.configuration!r}")
        if not Path(self.checkpoint).is_file():
            raise FileNotFoundError(f"{self.checkpoint}: checkpoint file not found (--pretrained)")
        for path, option in ((self.test_images, "--test-images"), (self.test_labels, "--test-labels")):
            if not Path(path).is_dir():
                raise FileNotFoundError(f"{path}: test folder not found ({option})")
        cases = training_cases(folder)
        for n in self.sizes:
            few_shot_splits(cases, n)  # refuses an N the dataset cannot split
        self.check_held_out(cases)
        return cases


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def study_settings(study: Study, cases: list[str]) -> dict:
    """What ``fewshot.json`` records of a study: its settings and the training cases they were checked against."""
    return {**asdict(study), "training_cases": cases}


def read_study(folder: Path) -> Study:
    """The settings of the study in ``folder`` (its ``fewshot.json``; settings that are None are not recorded),
    checked (:meth:`Study.check_values`); FileNotFoundError naming the folder when it is not a study's."""
    return _read_settings(folder, "name the --out of nnunet-suprem fewshot")[0]


def _read_settings(folder: Path, hint: str) -> tuple[Study, dict]:
    """The study of ``folder`` and its ``fewshot.json`` as recorded, checked; FileNotFoundError (with ``hint``)
    when there is none, ValueError naming the file when it is not valid."""
    settings_file = folder / SETTINGS_FILE
    if not settings_file.is_file():
        raise FileNotFoundError(f"{folder}: not a fewshot folder (no {SETTINGS_FILE}): {hint}")
    settings = read_json(settings_file)
    if not isinstance(settings, dict) or not isinstance(settings.get("sizes"), list):
        raise ValueError(f"{settings_file}: not a fewshot settings file (a JSON object with a list of sizes)")
    values = {f.name: settings.get(f.name) for f in fields(Study)}
    study = Study(**{**values, "sizes": tuple(values["sizes"])})
    study.check_values(str(settings_file))
    cases = settings.get("training_cases")
    if cases is not None and not (isinstance(cases, list) and all(isinstance(c, str) for c in cases)):
        raise ValueError(f"{settings_file}: training_cases must be a list of case names")
    return study, settings


def check_scratch_source(study: Study, cases: list[str]) -> None:
    """A study may reuse the scratch arm of ``study.scratch_from`` when that study ran its own scratch arm with the
    same settings (the pre-trained arm's trainer and checkpoint may differ); ValueError/FileNotFoundError."""
    source = Path(study.scratch_from)
    theirs = _read_settings(source, "--scratch-from")[1]
    if theirs.get("scratch_from") is not None:
        raise ValueError(f"{source} reuses the scratch arm of {theirs['scratch_from']}: name that study in "
                         f"--scratch-from")
    changed = changed_settings(theirs, study_settings(study, cases),
                               ignore=frozenset({"pretrained_trainer", "checkpoint", "scratch_from"}))
    if changed:
        raise ValueError(f"{source} is a study with other settings ({'; '.join(changed)}): its scratch arm cannot "
                         f"be reused (--scratch-from)")


class FewShot:
    """A study's commands in ``out``, running them, and the report."""

    def __init__(self, out: Path, study: Study, device: str, num_processes: int):
        self.out, self.study, self.device, self.num_processes = out, study, device, num_processes
        self.preprocessed = out / "nnUNet_preprocessed"

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms this study trains, predicts and scores itself (not a scratch arm it reuses)."""
        return ARMS if self.study.scratch_from is None else tuple(a for a in ARMS if a != "scratch")

    def root(self, arm: str) -> Path:
        """The study folder that holds ``arm``'s models, predictions and evaluations."""
        return self.out if arm in self.arms else Path(self.study.scratch_from)

    def runs(self) -> list[tuple[int, int, int]]:
        """(N, draw, fold) of every training set; fold = position of N x draws + draw."""
        s = self.study
        return [(n, draw, i * s.draws + draw) for i, n in enumerate(s.sizes) for draw in range(s.draws)]

    def model_folder(self, arm: str) -> Path:
        s = self.study
        return self.root(arm) / "nnUNet_results" / s.dataset / f"{s.trainer(arm)}__{s.plans}__{s.configuration}"

    def predictions(self, arm: str, n: int, draw: int) -> Path:
        return self.root(arm) / "predictions" / arm / f"N{n}_draw{draw}"

    def evaluation(self, arm: str, n: int, draw: int) -> Path:
        return self.root(arm) / "evaluation" / arm / f"N{n}_draw{draw}"

    def check_reused_arms(self) -> None:
        """Every evaluation of a reused arm exists (FileNotFoundError: finish that study, then run this one again,
        which resumes: its own arm may train before the study it reuses has finished)."""
        for arm in (a for a in ARMS if a not in self.arms):
            for n, draw, _ in self.runs():
                summary = self.evaluation(arm, n, draw) / "summary.json"
                if not summary.is_file():
                    raise FileNotFoundError(f"{summary} not found: finish the study in {self.root(arm)}, then run "
                                            f"this command again to report with its {arm} arm (--scratch-from)")

    # --- preparing the study's nnU-Net folder ------------------------------------------------------------------
    def prepare(self, cases: list[str]) -> list[str]:
        """Link the preprocessed dataset into the study's folder, write its splits; returns the test cases."""
        source, target = Path(self.study.preprocessed).resolve(), self.preprocessed / self.study.dataset
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(source.iterdir()):
            if entry.name == SPLITS_FILE:
                continue
            link = target / entry.name
            if link.is_symlink() and Path(os.readlink(link)) == entry:
                continue
            if link.is_symlink():
                link.unlink()
            if not link.exists():
                link.symlink_to(entry, target_is_directory=entry.is_dir())
        splits = [split for n in self.study.sizes for split in few_shot_splits(cases, n, self.study.seed,
                                                                                 self.study.draws)]
        splits_file = target / SPLITS_FILE
        if not splits_file.is_file() or json.loads(splits_file.read_text()) != splits:
            write_json(splits, splits_file)
        return [f"{case}{self.study.file_ending()}" for case in self.study.test_cases()]

    # --- the commands ----------------------------------------------------------------------------------------
    def steps(self, prediction_files: list[str]) -> list[Step]:
        s, np_ = self.study, ["-np", str(self.num_processes)]
        own = self.preprocessed / s.dataset
        training_inputs = (own / f"{s.plans}.json", own / "dataset.json", own / SPLITS_FILE)
        labels = (Path(s.test_labels), *filter(None, [find_dataset_json(Path(s.test_labels))]))
        workers = str(min(self.num_processes, 3))  # nnU-Net's default for -npp and -nps
        scoring = ["--no-nsd"] if s.tolerance is None else ["--tolerance", str(s.tolerance)]
        steps = []
        for n, draw, fold in self.runs():
            where = f"N={n}, draw {draw} (fold {fold})"
            for arm in self.arms:
                weights = ["-pretrained_weights", s.checkpoint] if arm == "pretrained" else []
                fold_folder = self.model_folder(arm) / f"fold_{fold}"
                steps.append(Step(
                    f"train, {arm}, {where}: {s.trainer(arm)}",
                    ["nnUNetv2_train", s.dataset, s.configuration, str(fold), "-tr", s.trainer(arm), "-p", s.plans,
                     "-device", self.device, *weights],
                    f"train_{arm}_N{n}_draw{draw}",
                    inputs=(*training_inputs, *([Path(s.checkpoint)] if arm == "pretrained" else [])),
                    outputs=(fold_folder / "checkpoint_final.pth",),
                    results_folder=fold_folder, epochs=trainer_epochs(s.trainer(arm))))
            for arm in self.arms:
                output = self.predictions(arm, n, draw)
                steps.append(Step(
                    f"predict the test cases, {arm}, {where}",
                    ["nnUNetv2_predict", "-i", s.test_images, "-o", str(output), "-d", s.dataset,
                     "-c", s.configuration, "-p", s.plans, "-tr", s.trainer(arm), "-f", str(fold),
                     "-chk", "checkpoint_final.pth", "-device", self.device, "-npp", workers, "-nps", workers],
                    f"predict_{arm}_N{n}_draw{draw}",
                    inputs=(self.model_folder(arm) / f"fold_{fold}" / "checkpoint_final.pth", Path(s.test_images)),
                    outputs=tuple(output / f for f in prediction_files)))
            for arm in self.arms:
                predictions = self.predictions(arm, n, draw)
                evaluation = self.evaluation(arm, n, draw)
                steps.append(Step(
                    f"evaluate, {arm}, {where}",
                    ["nnunet-suprem", "evaluate", str(predictions), s.test_labels, *scoring, *np_,
                     "-o", str(evaluation)],
                    f"evaluate_{arm}_N{n}_draw{draw}", inputs=(predictions, *labels), outputs=(evaluation,)))
        return steps

    def environment(self) -> dict[str, str]:
        from nnunet_suprem.nnunet_env import with_ext_trainers

        env = with_ext_trainers()
        env.update(nnUNet_preprocessed=str(self.preprocessed), nnUNet_results=str(self.out / "nnUNet_results"))
        # the trainings' validation export and metric pools: -np workers, not nnU-Net's 8 (each imports nnU-Net)
        env.setdefault("nnUNet_def_n_proc", str(self.num_processes))
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def run(self, cases: list[str]) -> str:
        """Prepare, run every step not done yet, write the report; returns ``summary.md``'s text."""
        start = time.perf_counter()
        run_steps(self.steps(self.prepare(cases)), self.out, self.environment(), self.device)
        text = self.report()
        logger.info("\n%s\n\n%.0f s; wrote %s to %s", text, time.perf_counter() - start, ", ".join(OUTPUTS), self.out)
        return text

    # --- the result ------------------------------------------------------------------------------------------
    @cached_property
    def known_classes(self) -> set[str] | None:
        """The checkpoint's classes with pre-trained output rows (None: it records no class names); read once."""
        from nnunet_suprem.transfer.checkpoint import read_checkpoint
        from nnunet_suprem.transfer.head import BACKGROUND, IGNORE_LABEL

        checkpoint = read_checkpoint(self.study.checkpoint)
        if checkpoint.labels is None:
            return None
        known = set(checkpoint.labels) - {BACKGROUND, IGNORE_LABEL}
        return known if checkpoint.pretrained_rows is None else known & checkpoint.pretrained_rows

    def evaluated_runs(self) -> list[tuple[int, int, int]]:
        """The runs (as :meth:`runs`) that both arms, a reused one included, have evaluated."""
        return [(n, draw, fold) for n, draw, fold in self.runs()
                if all((self.evaluation(arm, n, draw) / "summary.json").is_file() for arm in ARMS)]

    def report(self, interim: bool = False) -> str:
        """Write :data:`OUTPUTS` from the evaluations of every run (``interim``: of the runs evaluated so far,
        FileNotFoundError when there is none); returns the summary table."""
        s = self.study
        if interim:
            runs = self.evaluated_runs()
            if not runs:
                raise FileNotFoundError(f"{self.out}: no (N, draw) has been evaluated by both arms yet")
        else:
            self.check_reused_arms()
            runs = self.runs()
        summaries = {(arm, n, draw): read_evaluation(self.evaluation(arm, n, draw) / "summary.json")
                     for n, draw, _ in runs for arm in ARMS}
        scored = dict.fromkeys(name for summary in summaries.values() for case in summary["metric_per_case"]
                               for name in case["metrics"])  # the ground truth's class names
        groups = class_groups(scored, self.known_classes)
        rows = [row for (arm, n, draw), summary in summaries.items()
                for row in evaluation_rows(summary, arm, n, draw, groups)]
        write_long_table(self.out / "fewshot.csv", rows)
        summary = summarize_study(rows)
        write_summary_csv(self.out / "summary.csv", summary)
        cases = len({row["case"] for row in rows})
        title = (f"{s.dataset}: {s.pretrained_trainer} from {Path(s.checkpoint).name} vs {s.scratch_trainer} from "
                 f"scratch, N = {', '.join(map(str, s.sizes))}, {s.draws} draw(s) each, {cases} test cases"
                 + (f" (scratch arm of {s.scratch_from})" if s.scratch_from else ""))
        if len(runs) < len(self.runs()):
            title = (f"INTERIM, {len(runs)} of {len(self.runs())} runs evaluated "
                     f"({', '.join(f'N={n} draw {draw}' for n, draw, _ in runs)}). {title}")
        unpaired = unpaired_note(rows)
        text = (f"{title}\n\n{learned_overview(summary)}\n\n{METHOD} 'in pre-training': the class has a pre-trained "
                f"output row in {s.checkpoint}.\n\n{summary_markdown(summary, '').strip()}"
                + (f"\n\nScored by one arm only, so left out of both:\n{unpaired}" if unpaired else ""))
        with atomic_path(self.out / "summary.md") as tmp:
            Path(tmp).write_text(text + "\n")
        plot_study(summary, self.out / "fewshot.png", title)
        return text


def run_study(study: Study, out: Path, device: str, num_processes: int) -> FewShot:
    """Check the settings, claim or resume ``out`` (refusing other settings and a folder in use), run the study."""
    cases = study.check()
    if study.scratch_from is not None:
        check_scratch_source(study, cases)
    fewshot = FewShot(out, study, device, num_processes)
    with claimed_out(out, study_settings(study, cases), SETTINGS_FILE, "fewshot"):
        fewshot.run(cases)
    return fewshot


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "fewshot", help="few-shot study: pre-trained vs scratch at N training cases, several draws, test Dice/NSD",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset_id", type=int, required=True,
                   help="target dataset ID (planned and preprocessed in $nnUNet_preprocessed, e.g. by plan-transfer)")
    p.add_argument("--pretrained", required=True, metavar="CHECKPOINT",
                   help="pre-trained checkpoint (e.g. fold_0/checkpoint_final.pth), the pre-trained arm's "
                        "-pretrained_weights; its class names decide which target classes are seen")
    p.add_argument("--train-cases", type=int, nargs="+", required=True, metavar="N",
                   help="training-set sizes, e.g. 5 10 20 (the other training cases validate)")
    p.add_argument("--draws", type=int, default=1,
                   help="random draws of N training cases per N, each trained both ways (default: 1); draw k of N "
                        "is fold k of `nnunet-suprem split --train-cases N --seed S` (independent across N)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws (default: 0)")
    p.add_argument("--out", required=True,
                   help="folder for splits, models, predictions, evaluations, logs and results; running again with "
                        "the same folder and settings resumes")
    p.add_argument("-p", dest="plans", default=TRANSFER_PLANS_NAME, help=f"plans (default: {TRANSFER_PLANS_NAME})")
    p.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default: 3d_fullres)")
    p.add_argument("--pretrained-trainer", default=DEFAULT_PRETRAINED_TRAINER,
                   help=f"trainer of the pre-trained arm (default: {DEFAULT_PRETRAINED_TRAINER})")
    p.add_argument("--scratch-trainer", default=DEFAULT_SCRATCH_TRAINER,
                   help=f"trainer of the scratch arm, the same budget from random weights (default: "
                        f"{DEFAULT_SCRATCH_TRAINER})")
    p.add_argument("--scratch-from", metavar="STUDY",
                   help="reuse the scratch arm of the finished study in folder STUDY (same dataset, plans, sizes, "
                        "draws, seed, scratch trainer and test cases): only the pre-trained arm trains, so several "
                        "fine-tuning recipes compare against one baseline")
    p.add_argument("--test-images", help="held-out images (default: $nnUNet_raw/DatasetXXX_NAME/imagesTs)")
    p.add_argument("--test-labels", help="their ground truth, label maps or per-organ mask folders "
                                         "(default: $nnUNet_raw/DatasetXXX_NAME/labelsTs)")
    p.add_argument("--tolerance", type=float, default=1.0, help="NSD tolerance in mm (default: 1.0)")
    p.add_argument("--no-nsd", action="store_true", help="Dice only")
    p.add_argument("-np", dest="num_processes", type=int, default=default_num_processes(),
                   help="processes for evaluation, nnUNetv2_predict (at most 3 there) and the trainings' validation "
                        "export (unless nnUNet_def_n_proc is set) (default: nnUNet_def_n_proc or 8)")
    add_device_argument(p)
    p.set_defaults(func=run)


def study_from_args(args: argparse.Namespace) -> Study:
    """The study a command line asks for (paths resolved, test folders defaulting to the raw dataset's)."""
    from nnunet_suprem.nnunet_env import dataset_folder_name, preprocessed_root, raw_root

    dataset = dataset_folder_name(args.dataset_id)
    test = {}
    for option, sub in (("test_images", "imagesTs"), ("test_labels", "labelsTs")):
        value = getattr(args, option)
        test[option] = str(Path(value).expanduser().resolve() if value else raw_root() / dataset / sub)
    return Study(str(preprocessed_root().resolve() / dataset), args.plans, args.configuration,
                 str(Path(args.pretrained).expanduser().resolve()), tuple(args.train_cases), args.draws, args.seed,
                 args.pretrained_trainer, args.scratch_trainer, tolerance=None if args.no_nsd else args.tolerance,
                 scratch_from=str(Path(args.scratch_from).expanduser().resolve()) if args.scratch_from else None,
                 **test)


def study_command(study: Study, out: Path, num_processes: int) -> tuple[list[str], dict[str, str]]:
    """The ``nnunet-suprem fewshot`` command line of ``study`` in ``out``, and the nnU-Net variable it needs
    (``nnUNet_preprocessed``, the parent of the study's preprocessed dataset)."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    s = study
    command = ["nnunet-suprem", "fewshot", "-d", str(convert_dataset_name_to_id(s.dataset)), "--pretrained",
               s.checkpoint, "--train-cases", *map(str, s.sizes), "--draws", str(s.draws), "--seed", str(s.seed),
               "-p", s.plans, "-c", s.configuration, "--pretrained-trainer", s.pretrained_trainer,
               "--scratch-trainer", s.scratch_trainer, "--test-images", s.test_images, "--test-labels", s.test_labels,
               *(["--no-nsd"] if s.tolerance is None else ["--tolerance", str(s.tolerance)]),
               *(["--scratch-from", s.scratch_from] if s.scratch_from else []), "--out", str(out),
               "-np", str(num_processes)]
    return command, {"nnUNet_preprocessed": str(Path(s.preprocessed).parent)}


def run(args: argparse.Namespace) -> int:
    study = study_from_args(args)
    out = Path(args.out).expanduser().resolve()
    return report_failure("fewshot", lambda: run_study(study, out, args.device or default_device(),
                                                       args.num_processes))
