"""Running a study as commands a user could type: each logged before it runs, its output in ``OUT/logs``.

Used by ``nnunet-suprem demo`` and ``nnunet-suprem fewshot``. A step is done when its marker in
``OUT/.steps_done`` records the same command and the same input files (size, modification time; a folder stands
for every file under it) and every output it declares and every file it wrote there still exist; done steps are
skipped, so running the same study again resumes. A step's marker is written when it starts (its command and
inputs) and completed when it finishes (the files it wrote): a training whose fold folder holds a checkpoint
continues from it with nnU-Net's ``--c`` only when it started with the same command and inputs, else it starts
again. A study folder holds a settings file: a run with other settings is refused once the folder holds work (a
finished step or a training checkpoint), so a failed first run claims nothing. One process at a time uses a folder
(:func:`claimed_out`).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from nnunet_suprem.fileio import files_in, read_json, source_fingerprint, write_json

DONE_FOLDER = ".steps_done"
LOG_FOLDER = "logs"
LOCK_FILE = ".lock"
CHECKPOINTS = ("checkpoint_latest.pth", "checkpoint_final.pth")  # what nnU-Net's --c continues from

logger = logging.getLogger(__name__)


class StepFailed(Exception):
    """A command failed; the message names it and shows the end of its log."""


@dataclass
class Step:
    """One command; ``name`` (unique in its study) names its marker and log."""
    title: str
    command: list[str]
    name: str
    inputs: tuple[Path, ...] = ()  # files or folders: a changed, added or removed file makes the step run again
    outputs: tuple[Path, ...] = ()  # files or folders: a missing one, or a missing file it wrote there, too
    results_folder: Path | None = None  # an nnU-Net training: the fold folder it writes (resumable with --c)
    epochs: int | None = None  # a training's epochs, when known (progress bar)


def trainer_epochs(name: str) -> int | None:
    """Epochs of one of our training-length variants (their ``epochs`` attribute), None for other trainers (nnU-Net's
    default is set only when a trainer is built)."""
    from nnunet_suprem.training import variants

    trainer = getattr(variants, name, None)
    return trainer.epochs if isinstance(trainer, type) else None


def resumable(step: Step, recorded: dict | None, marker: dict) -> list[str]:
    """A training that left a checkpoint continues from it (nnU-Net's --c; pre-trained weights are in it) when
    ``recorded``, its marker, shows it started with ``marker``'s command and inputs; a fold folder trained from
    anything else is deleted, so that nnU-Net starts again (its --c would load that folder's checkpoint)."""
    folder = step.results_folder
    if folder is None or not any((folder / f).is_file() for f in CHECKPOINTS):
        return step.command
    if not same_start(recorded, marker):
        logger.info("  %s was trained from other inputs or another command: training again", folder)
        shutil.rmtree(folder)
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


def step_marker(step: Step) -> dict:
    """What a step's marker records when it starts: its command and its inputs' fingerprint."""
    return {"command": step.command, "inputs": source_fingerprint(files_in(step.inputs))}


def _read_marker(path: Path) -> dict | None:
    """A step's marker as written (None: none, or not a marker)."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _finished(recorded: dict | None) -> bool:
    """The marker records a finished step (the files it wrote), not only a started one."""
    return recorded is not None and isinstance(recorded.get("outputs"), list)


def same_start(recorded: dict | None, marker: dict) -> bool:
    """``recorded`` started with ``marker``'s command, and every input it recorded is unchanged (an input this
    version adds, which an older marker lacks, is not counted as changed)."""
    if recorded is None or recorded.get("command") != marker["command"]:
        return False
    inputs = recorded.get("inputs")
    return isinstance(inputs, dict) and all(inputs[path] == fingerprint for path, fingerprint in
                                            marker["inputs"].items() if path in inputs)


def is_done(step: Step, done_folder: Path) -> bool:
    """The step finished with the same command and inputs, and its outputs and the files it wrote exist."""
    recorded = _read_marker(done_folder / step.name)
    if not _finished(recorded):
        return False
    return ({key: recorded.get(key) for key in ("command", "inputs")} == step_marker(step)
            and all(p.exists() for p in step.outputs) and all(Path(f).is_file() for f in recorded["outputs"]))


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
        marker = step_marker(step)  # the inputs as the step reads them
        command = resumable(step, _read_marker(done_folder / step.name), marker)
        write_json(marker, done_folder / step.name)  # started: what a checkpoint it leaves was trained from
        logger.info("%s\n  $ %s", header, shlex.join(command))
        start = time.perf_counter()
        step_env = {**env, **training_environment(device)} if step.results_folder is not None else dict(env)
        run_logged(command, step_env, logs / f"{step.name}.log", step.results_folder is not None, step.epochs)
        seconds = time.perf_counter() - start
        write_json({**marker, "outputs": [str(f) for f in files_in(step.outputs)], "title": step.title,
                    "seconds": round(seconds, 1), "finished": time.time()}, done_folder / step.name)
        logger.info("  %.0f s", seconds)


def step_times(out: Path) -> list[tuple[str, str, float]]:
    """``(title, command, seconds)`` of every finished step in ``out`` (in the order they finished; resumed runs
    included), as their markers record them."""
    markers = [_read_marker(path) for path in sorted((out / DONE_FOLDER).glob("*"))]
    finished = [m for m in markers if _finished(m) and isinstance(m.get("seconds"), (int, float))]
    return [(m.get("title", ""), shlex.join(m["command"][:2]), m["seconds"])
            for m in sorted(finished, key=lambda m: m.get("finished", 0))]


def time_table(times: Sequence[tuple[str, str, float]]) -> str:
    """A Markdown table of :func:`step_times`, with each step's share and the total."""
    total = sum(seconds for _, _, seconds in times)
    rows = [f"| {title} | `{command}` | {seconds:.0f} | {100 * seconds / total if total else 100:.0f} % |"
            for title, command, seconds in times]
    return "\n".join(["| step | command | s | share |", "| --- | --- | ---: | ---: |", *rows,
                      f"| total of the steps | | {total:.0f} | 100 % |"])


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


@contextmanager
def claimed_out(out: Path, settings: dict, settings_file: str, what: str) -> Iterator[None]:
    """Hold ``out`` for this process while the body runs (see :func:`locked`), prepared by :func:`prepare_out`.

    A folder that is neither empty nor a ``what`` folder is refused before anything is written to it."""
    _check_is_study_folder(out, settings_file, what)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        prepare_out(out, settings, settings_file, what)
        yield


def _check_is_study_folder(out: Path, settings_file: str, what: str) -> None:
    if not (out / settings_file).is_file() and out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not a {what} folder (no {settings_file}); choose another --out")


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """An exclusive lock on ``OUT/.lock`` (``flock``: released when this process ends, however it ends), which
    records this process's PID, host and command; ValueError naming the holder when another process has it."""
    with open(out / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise ValueError(f"{out} is in use by {_holder(lock.read())}: wait until it ends, or choose another "
                             f"--out") from None
        lock.truncate(0)
        lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv)}))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _holder(recorded: str) -> str:
    """``PID 12 on host (command)`` from a lock file's text; ``another process`` when it names none yet."""
    try:
        holder = json.loads(recorded)
        return f"PID {holder['pid']} on {holder['host']} ({holder['command']})"
    except (ValueError, TypeError, KeyError):
        return "another process"


def prepare_out(out: Path, settings: dict, settings_file: str, what: str) -> None:
    """Use ``out`` for a new study, or resume the study there with the same settings; other settings are refused
    once the folder holds work (:func:`holds_work`), else they replace the settings of the run that left nothing.

    Settings that are None are not recorded, so a setting added later with a None default matches the folders
    written before it."""
    saved = out / settings_file
    settings = _recorded(settings)
    _check_is_study_folder(out, settings_file, what)
    if saved.is_file():
        previous = read_json(saved)
        if not isinstance(previous, dict):
            raise ValueError(f"{saved}: not a {what} settings file (a JSON object)")
        changed = changed_settings(previous, settings)
        if not changed:
            return
        if holds_work(out):
            raise ValueError(f"{out} holds a {what} run with other settings ({'; '.join(changed)}); choose another "
                             f"--out")
        logger.info("%s: the run with other settings (%s) finished nothing; using the folder for these settings",
                    out, "; ".join(changed))
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings, saved)


def holds_work(out: Path) -> bool:
    """``out`` holds a finished step (its marker) or a training checkpoint to continue from."""
    done = out / DONE_FOLDER
    if done.is_dir() and any(_finished(_read_marker(marker)) for marker in done.iterdir()):
        return True
    return any(name in CHECKPOINTS for _, _, names in os.walk(out) for name in names)


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
