"""Running a study as commands a user could type: each logged before it runs, its output in ``OUT/logs``.

Used by ``nnunet-suprem demo`` and ``nnunet-suprem fewshot``. A step is done when its marker in
``OUT/.steps_done`` records the same command and the same input files (size, modification time) and its output
files exist; done steps are skipped, so running the same study again resumes. A training whose fold folder holds
a checkpoint continues from it with nnU-Net's ``--c``. A study folder holds a settings file: a run with other
settings is refused.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from nnunet_suprem.fileio import source_fingerprint, write_json

DONE_FOLDER = ".steps_done"
LOG_FOLDER = "logs"

logger = logging.getLogger(__name__)


class StepFailed(Exception):
    """A command failed; the message names it and shows the end of its log."""


@dataclass
class Step:
    """One command; ``name`` (unique in its study) names its marker and log."""
    title: str
    command: list[str]
    name: str
    inputs: tuple[Path, ...] = ()  # a changed input file makes the step run again
    outputs: tuple[Path, ...] = ()  # a missing output file makes the step run again
    results_folder: Path | None = None  # an nnU-Net training: the fold folder it writes (resumable with --c)
    epochs: int | None = None  # a training's epochs, when known (progress bar)


def trainer_epochs(name: str) -> int | None:
    """Epochs of one of our training-length variants (their ``epochs`` attribute), None for other trainers (nnU-Net's
    default is set only when a trainer is built)."""
    from nnunet_suprem.training import variants

    trainer = getattr(variants, name, None)
    return trainer.epochs if isinstance(trainer, type) else None


def resumable(step: Step) -> list[str]:
    """A training that left a checkpoint continues from it (nnU-Net's --c; pre-trained weights are in it)."""
    folder = step.results_folder
    if folder is None or not any((folder / f).is_file() for f in ("checkpoint_latest.pth", "checkpoint_final.pth")):
        return step.command
    command = list(step.command)
    if "-pretrained_weights" in command:
        index = command.index("-pretrained_weights")
        del command[index:index + 2]
    return [*command, "--c"]


def training_environment(device: str) -> dict[str, str]:
    """On a CPU, augment in the training process: worker processes only compete for the same cores (nnU-Net's
    planning needs nnUNet_n_proc_DA >= 1, so this is for training only). A value the user set wins."""
    if device != "cpu" or "nnUNet_n_proc_DA" in os.environ:
        return {}
    return {"nnUNet_n_proc_DA": "0"}


def _marker(step: Step) -> dict:
    return {"command": step.command, "inputs": source_fingerprint(step.inputs)}


def is_done(step: Step, done_folder: Path) -> bool:
    """The step ran with the same command and inputs, and its outputs exist."""
    marker = done_folder / step.name
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return recorded == _marker(step) and all(p.is_file() for p in step.outputs)


def run_steps(steps: Sequence[Step], out: Path, env: Mapping[str, str], device: str) -> None:
    """Run the steps not done yet, in order, logging each command; raises :class:`StepFailed`."""
    done_folder, logs = out / DONE_FOLDER, out / LOG_FOLDER
    done_folder.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    for number, step in enumerate(steps, 1):
        header = f"[{number}/{len(steps)}] {step.title}"
        if is_done(step, done_folder):
            logger.info("%s: done before", header)
            continue
        command = resumable(step)
        logger.info("%s\n  $ %s", header, shlex.join(command))
        start = time.perf_counter()
        step_env = {**env, **training_environment(device)} if step.results_folder is not None else dict(env)
        run_logged(command, step_env, logs / f"{step.name}.log", step.results_folder is not None, step.epochs)
        write_json(_marker(step), done_folder / step.name)
        logger.info("  %.0f s", time.perf_counter() - start)


def run_logged(command: Sequence[str], env: Mapping[str, str], log: Path, training: bool = False,
               epochs: int | None = None) -> None:
    """Run ``command`` with its output in ``log``; a training shows nnU-Net's epochs as a progress bar."""
    from tqdm import tqdm

    executable = Path(sys.executable).parent / command[0]
    argv = [str(executable) if executable.is_file() else command[0], *command[1:]]
    # a bar on a terminal (tqdm's disable=None), nothing in a redirected output: the log has every epoch
    bar = tqdm(total=epochs, desc="  epochs", unit="epoch", leave=False, disable=None) if training else None
    with open(log, "w") as out:
        process = subprocess.Popen(argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


def prepare_out(out: Path, settings: dict, settings_file: str, what: str) -> None:
    """Use ``out`` for a new study, or resume the study there with the same settings; refuse anything else.

    Settings that are None are not recorded, so a setting added later with a None default matches the folders
    written before it."""
    saved = out / settings_file
    settings = _recorded(settings)
    if saved.is_file():
        changed = changed_settings(json.loads(saved.read_text()), settings)
        if changed:
            raise ValueError(f"{out} holds a {what} run with other settings ({'; '.join(changed)}); choose another "
                             f"--out")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a {what} folder (no {settings_file}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings, saved)


def changed_settings(previous: dict, settings: dict, ignore: frozenset[str] = frozenset()) -> list[str]:
    """``"key: <previous> there, <settings> here"`` for each setting (but ``ignore``) that differs, as recorded."""
    previous, settings = _recorded(previous), _recorded(settings)
    return [f"{key}: {previous.get(key)!r} there, {settings.get(key)!r} here"
            for key in sorted((set(previous) | set(settings)) - ignore) if previous.get(key) != settings.get(key)]


def _recorded(settings: dict) -> dict:
    """``settings`` as written to and read back from a settings file (tuples become lists), without None values."""
    return {key: value for key, value in json.loads(json.dumps(settings)).items() if value is not None}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-device", dest="device", choices=("cuda", "cpu", "mps"), default=None,
                        help="nnU-Net's device (default: cuda when available, else cpu)")


def report_failure(command: str, run: Callable[[], None]) -> int:
    """Run a study; a failed step is one message (exit 1) saying that the same command resumes."""
    try:
        run()
    except StepFailed as e:
        print(f"nnunet-suprem {command}: {e}\nFix the cause and run the same command again to resume.",
              file=sys.stderr)
        return 1
    return 0
