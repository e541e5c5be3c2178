"""The GPU check: the default-budget demo (pre-training, then fine-tuning against scratch), ``cuda_step.py`` and,
on a machine with two GPUs, a 2-process ``torchrun`` training, with a short summary at the end.

Run it through ``bash benchmarks/gpu_check.sh`` (which installs wheels first when asked):

    python benchmarks/gpu_check.py prepare --wheels-dir DIR   # the wheels a GPU machine with torch lacks
    python benchmarks/gpu_check.py [--cpu] [--smoke] [--work DIR] [--budget SECONDS] [--compile]

Each part runs as a child process with its output in a log (under ``$OUT`` when set, else ``WORK/logs``), is
stopped when the time budget runs out, and is reported PASS, FAIL, TIMEOUT or SKIP with its numbers: the demo's
median epoch time per training and its Dice rows, cuda_step's table, the torchrun training's epochs. ``--cpu
--smoke`` runs the same parts on the CPU at the smallest sizes (the torchrun part with two gloo processes).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "nnunet-suprem"
ON_A_TORCH_MACHINE = ("torch", "torchvision", "timm", "numpy", "scipy", "pandas", "matplotlib", "seaborn",
                      "scikit-image", "scikit-learn", "requests", "httpx", "rich", "msgpack", "tqdm", "pyyaml",
                      "einops", "tifffile")
"""What ``prepare`` expects a GPU machine with PyTorch to have, with everything they need (e.g. NVIDIA's PyTorch
images, this project's lent H100/H200): left out, so that the machine's own torch stack stays and the wheels fit a
small transfer. The check itself names any needed distribution the machine lacks."""
NEVER_IMPORTED = ("imagecodecs",)
"""Needed by nnunetv2's metadata but never imported by it (tifffile's compressed TIFF codecs; 26 MB)."""
WHEEL_TAGS = ["--only-binary=:all:", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
              "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
              "--platform", "manylinux1_x86_64"]
DEMO_BUDGET, SMOKE_BUDGET = "default", "--smoke"
TORCHRUN_TRAINER = "SuPreMTrainer_smoke"
RESERVE = {"cuda_step": 150, "torchrun": 150}
"""Seconds kept for the parts after the demo (when they run)."""
FAILURE_TAIL = 8
"""Lines of a failed part's log in the summary."""


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment(python_version: str) -> dict[str, str]:
    """Marker values of CPython ``python_version`` on Linux x86-64 (the GPU machine)."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython"}


def requirement_closure(root: str, environment: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The installed distributions ``root`` needs, recursively, without extras (markers evaluated for
    ``environment``, default this Python's): normalised name -> version; and the needed ones not installed here,
    as ``name (needed by parent)``. Requirements named like a standard-library module (unittest2's ``argparse``)
    are the standard library's: its PyPI twin would shadow it."""
    from packaging.requirements import Requirement

    environment = {**(environment or {}), "extra": ""}
    found, missing, todo = {}, [], [(root, "you")]
    while todo:
        name, parent = todo.pop()
        if normalized(name) in found or name in NEVER_IMPORTED or name in sys.stdlib_module_names:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{name} (needed by {parent})")
            continue
        found[normalized(name)] = distribution.version
        todo += [(r.name, name) for r in map(Requirement, distribution.requires or [])
                 if r.marker is None or r.marker.evaluate(environment)]
    return found, missing


def prepare(folder: Path, python_version: str) -> None:
    """Wheels of this project and of every distribution it needs beyond :data:`ON_A_TORCH_MACHINE`, at the versions
    installed here, for CPython ``python_version`` on manylinux x86-64: downloaded where PyPI has a binary wheel, else built
    here (pure-Python sdists)."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(folder), str(ROOT)], check=True)
    environment = target_environment(python_version)
    closure, missing = requirement_closure(PROJECT, environment)
    if missing:
        raise SystemExit(f"not installed here: {', '.join(missing)}; install {PROJECT} first")
    there = {name for root in ON_A_TORCH_MACHINE for name in requirement_closure(root, environment)[0]}
    needed = {name: version for name, version in closure.items() if name not in there and name != PROJECT}
    for name, version in sorted(needed.items()):
        pinned = f"{name}=={version}"
        download = [*pip, "download", "--no-deps", "--python-version", python_version, *WHEEL_TAGS, "-d", str(folder)]
        if subprocess.run([*download, pinned], capture_output=True).returncode != 0:
            subprocess.run([*pip, "wheel", "--no-deps", "--no-binary", ":all:", "-w", str(folder), pinned],
                           check=True)
    impure = [w.name for w in folder.glob("*.whl") if w.name.endswith("-linux_x86_64.whl")]
    if impure:
        raise SystemExit(f"built here, not portable: {', '.join(impure)}; find a manylinux wheel of the same version")
    for wheel in folder.glob("*.whl"):
        if wheel.stat().st_size > 2 ** 20:
            repack_lzma(wheel)
    size = sum(w.stat().st_size for w in folder.glob("*.whl")) / 2 ** 20
    print(f"{len(needed) + 1} wheels in {folder} ({size:.1f} MiB): {', '.join(sorted(needed))}, {PROJECT}")


def repack_lzma(wheel: Path) -> None:
    """Rewrite ``wheel`` with LZMA-compressed members (same files, names and RECORD; pip reads them with zipfile): a
    smaller transfer (SimpleITK's 53 MB wheel becomes 29 MB)."""
    packed = wheel.with_suffix(".lzma")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_LZMA) as target:
        for member in source.infolist():
            target.writestr(member, source.read(member), compress_type=zipfile.ZIP_LZMA)
    packed.replace(wheel)


@dataclass
class Part:
    """One part's outcome for the summary."""
    name: str
    status: str
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    log: Path | None = None

    def summary(self) -> list[str]:
        """Its status line and numbers; the last lines of its log when it neither passed nor was skipped."""
        lines = [f"{self.name}: {self.status} ({self.seconds:.0f} s)", *(f"  {line}" for line in self.lines)]
        if self.log is not None and self.status != "PASS" and not self.status.startswith("SKIP"):
            tail = self.log.read_text(errors="replace").splitlines()[-FAILURE_TAIL:]
            lines += [f"  last lines of {self.log}:", *(f"    {line}" for line in tail)]
        return lines


class Clock:
    """The time left of the whole check's budget."""

    def __init__(self, budget: float):
        self.end = time.monotonic() + budget

    def left(self) -> float:
        return self.end - time.monotonic()


def run_part(command: list[str], log: Path, env: dict[str, str], timeout: float) -> tuple[str, float]:
    """Run ``command`` in its own process group with its output in ``log``: PASS, FAIL (exit code) or TIMEOUT (the
    group is sent SIGTERM, then SIGKILL after 20 s). It runs in the log's folder, not in this checkout, whose
    uninstalled ``nnunet_suprem`` would shadow the installed package for ``python -m``."""
    start = time.monotonic()
    with open(log, "w") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return "TIMEOUT", time.monotonic() - start
    return ("PASS" if code == 0 else f"FAIL (exit {code})"), time.monotonic() - start


def epoch_line(label: str, log: Path) -> str | None:
    """``label: E epochs, median epoch time T s`` from an nnU-Net training log, or None without epochs."""
    times = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text(errors="replace"))]
    return f"{label}: {len(times)} epochs, median epoch {statistics.median(times):.2f} s" if times else None


def training_lines(results: Path) -> list[str]:
    """One epoch line per training under an nnUNet_results folder (its latest log per fold)."""
    lines = []
    for fold in sorted(results.glob("*/*/fold_*")):
        logs = sorted(fold.glob("training_log_*.txt"))
        label = f"{fold.parents[1].name} {fold.parent.name.split('__')[0]} {fold.name}"  # dataset trainer fold
        line = epoch_line(label, logs[-1]) if logs else None
        if line:
            lines.append(line)
    return lines


def dice_rows(summary: Path) -> list[str]:
    """The class-group means of a few-shot summary table (``| N | mean, seen | ...``)."""
    if not summary.is_file():
        return []
    return [line for line in summary.read_text().splitlines() if re.match(r"\| \d+ \| mean, ", line)]


def demo(args: argparse.Namespace, work: Path, logs: Path, env: dict[str, str], timeout: float) -> Part:
    out = work / "demo"
    command = [sys.executable, "-m", "nnunet_suprem.cli", "demo", "--out", str(out), "-device", args.device]
    status, seconds = run_part(command + ([SMOKE_BUDGET] if args.smoke else []), logs / "demo.log", env, timeout)
    lines = training_lines(out / "nnUNet_results") + training_lines(out / "fewshot" / "nnUNet_results")
    summary = out / "fewshot" / "summary.md"
    if summary.is_file():
        shutil.copyfile(summary, logs / "demo_summary.md")
    return Part("demo" + ("" if not args.smoke else " --smoke"), status, seconds, lines + dice_rows(summary),
                logs / "demo.log")


def cuda_step(args: argparse.Namespace, logs: Path, env: dict[str, str], timeout: float) -> Part:
    sizes = ["--steps", "1", "--warmup", "1", "--batches", "1", "--shape", "16", "16", "16"] if args.smoke else \
        ["--steps", "20"]
    log = logs / "cuda_step.log"
    status, seconds = run_part([sys.executable, str(ROOT / "benchmarks" / "cuda_step.py"), "--device", args.device,
                                *sizes], log, env, timeout)
    text = log.read_text(errors="replace")
    table = text[text.find("Mean train_step time"):].splitlines()[:5] if "Mean train_step time" in text else []
    return Part("cuda_step", status, seconds, table, log)


def torchrun(args: argparse.Namespace, work: Path, logs: Path, env: dict[str, str], timeout: float) -> Part:
    """Two processes (NCCL on two GPUs, gloo on the CPU) train the demo's pre-training dataset, results apart."""
    demo_folders = {name: str(work / "demo" / name) for name in ("nnUNet_raw", "nnUNet_preprocessed")}
    results = work / "torchrun_results"
    shutil.rmtree(results, ignore_errors=True)
    from nnunet_suprem.demo import PRETRAIN_ID
    from nnunet_suprem.nnunet_env import with_ext_trainers

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "nnunet_suprem.train", str(PRETRAIN_ID), "3d_fullres", "all", "-tr", TORCHRUN_TRAINER,
               "-p", pretraining_plans(args), "-device", args.device]

    env = {**with_ext_trainers(env), **demo_folders, "nnUNet_results": str(results)}
    if args.device == "cpu":  # as the torchrun tests: no augmentation workers or threads competing for the cores
        env.update(nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1")
    status, seconds = run_part(command, logs / "torchrun.log", env, timeout)
    final = list(results.glob("*/*/fold_all/checkpoint_final.pth"))
    if status == "PASS" and not final:
        status = "FAIL (no checkpoint_final.pth)"
    return Part("torchrun 2 processes", status, seconds, training_lines(results), logs / "torchrun.log")


def pretraining_plans(args: argparse.Namespace) -> str:
    """The plans the demo's budget pre-trains with."""
    from nnunet_suprem.demo import FULL, SMOKE

    return (SMOKE if args.smoke else FULL).plans


def pretraining_planned(args: argparse.Namespace, work: Path) -> bool:
    from nnunet_suprem.demo import DATASET_FOLDERS, PRETRAIN_ID

    plans = pretraining_plans(args)
    return (work / "demo" / "nnUNet_preprocessed" / DATASET_FOLDERS[PRETRAIN_ID] / f"{plans}.json").is_file()


def environment_line(device: str) -> str:
    import torch

    if device == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"torch {torch.__version__}, CUDA {torch.version.cuda}, {len(names)} GPU(s): {', '.join(names)}"
    return f"torch {torch.__version__}, CPU ({os.cpu_count()} cores)"


def check(args: argparse.Namespace) -> int:
    clock = Clock(args.budget)
    missing = requirement_closure(PROJECT)[1]
    if missing:
        raise SystemExit(f"gpu_check: this Python lacks {', '.join(missing)}: add their wheels (prepare) or install "
                         f"them")
    import torch

    args.device = "cpu" if args.cpu else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu (and --smoke) to check the parts on the CPU")
    two_processes = args.cpu or torch.cuda.device_count() >= 2
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = Path(os.environ["OUT"]) if os.environ.get("OUT") else work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "nnUNet_compile": "1" if args.compile else "0"}
    env.pop("nnUNet_extTrainer", None)
    header = [f"GPU check ({'CPU, ' if args.cpu else ''}{'smoke' if args.smoke else 'default'} budget, "
              f"nnUNet_compile={env['nnUNet_compile']}): {environment_line(args.device)}"]
    print(header[0], flush=True)

    reserve = RESERVE["cuda_step"] + (RESERVE["torchrun"] if two_processes else 0)
    parts = [demo(args, work, logs, env, clock.left() - reserve)]
    print(f"{parts[-1].name}: {parts[-1].status}", flush=True)
    parts.append(cuda_step(args, logs, env, clock.left() - (RESERVE["torchrun"] if two_processes else 0)))
    print(f"{parts[-1].name}: {parts[-1].status}", flush=True)
    if not two_processes:
        parts.append(Part("torchrun 2 processes", "SKIP (one GPU)"))
    elif not pretraining_planned(args, work):
        parts.append(Part("torchrun 2 processes", "SKIP (the demo did not plan its pre-training dataset)"))
    else:
        parts.append(torchrun(args, work, logs, env, clock.left()))

    summary = header + [line for part in parts for line in part.summary()]
    summary.append(f"logs: {logs}")
    (logs / "summary.txt").write_text("\n".join(summary) + "\n")
    print("\n" + "\n".join(summary))
    return 0 if all(p.status == "PASS" or p.status.startswith("SKIP") for p in parts) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepare", nargs="?", choices=["prepare"], help="write the wheels into --wheels-dir instead")
    parser.add_argument("--wheels-dir", help="prepare: the folder for the wheels")
    parser.add_argument("--python-version", default="3.12", help="prepare: the GPU machine's Python (default 3.12)")
    parser.add_argument("--cpu", action="store_true", help="run every part on the CPU (torchrun with gloo)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest sizes: demo --smoke, cuda_step at 16^3 for one step (the numbers mean "
                             "nothing)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "nnunet_suprem_gpu_check"),
                        help="folder for the demo and the other parts' data; a demo there resumes (default: "
                             "%(default)s)")
    parser.add_argument("--budget", type=float, default=570,
                        help="seconds for all parts together; a part still running when its share ends is stopped "
                             "(default: %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="nnUNet_compile=1 for the demo and torchrun (default 0: compilation would take most of "
                             "the budget; cuda_step times both anyway)")
    args = parser.parse_args()
    if args.prepare:
        if not args.wheels_dir:
            parser.error("prepare needs --wheels-dir")
        prepare(Path(args.wheels_dir), args.python_version)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
