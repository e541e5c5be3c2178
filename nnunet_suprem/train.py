"""nnU-Net training on one node or many, launched by ``torchrun``::

    torchrun [--nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT] \\
        -m nnunet_suprem.train DATASET CONFIGURATION FOLD [the options of nnUNetv2_train]

Each process joins the process group torchrun describes in its environment (``env://``): NCCL on
``-device cuda``, with ``LOCAL_RANK`` choosing the GPU, gloo on ``-device cpu``. Then nnU-Net's own
``nnUNetv2_train`` runs in it (``run_training_entry``: its options, checkpoint loading, training and
validation); nnU-Net's trainer sees the process group and trains under DDP as with ``-num_gpus``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Sequence

import torch
import torch.distributed as dist
from nnunetv2.run.run_training import run_training_entry
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
USAGE = ("torchrun [--nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT] "
         "-m nnunet_suprem.train DATASET CONFIGURATION FOLD [options of nnUNetv2_train]")


def launcher_options(argv: Sequence[str]) -> argparse.Namespace:
    """The options of nnUNetv2_train the launcher needs before nnU-Net parses them all (same names and defaults)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-tr", default="nnUNetTrainer")
    parser.add_argument("-device", default="cuda")
    parser.add_argument("-num_gpus", type=int)
    return parser.parse_known_args(argv)[0]


def torchrun_environment(environ: Mapping[str, str]) -> dict[str, int]:
    """RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE as torchrun sets them; an error when it did not launch us."""
    missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
    if missing:
        raise ValueError(f"no rendezvous: {', '.join(missing)} not set, so torchrun did not start this process; "
                         f"run {USAGE} (one process: nnUNetv2_train)")
    return {name: int(environ[name]) for name in TORCHRUN_VARIABLES[:4]}


def check_launch(options: argparse.Namespace, ranks: Mapping[str, int], trainer: type) -> None:
    """The launch's own errors, the same on every rank so that all of them stop."""
    if options.num_gpus is not None:
        raise ValueError("-num_gpus starts nnU-Net's own processes on one node; under torchrun the processes are "
                         "torchrun's: give --nproc-per-node (and --nnodes) to torchrun, not -num_gpus")
    if options.device not in ("cuda", "cpu"):
        raise ValueError(f"-device {options.device}: torchrun training runs on cuda (NCCL) or cpu (gloo)")
    if not issubclass(trainer, SuPreMTrainer) and \
            (options.device == "cpu" or ranks["WORLD_SIZE"] != ranks["LOCAL_WORLD_SIZE"]):
        raise ValueError(f"{trainer.__name__} is nnU-Net's: nnunetv2 puts DDP rank r on cuda:r and wraps its network "
                         f"for that GPU, so it trains under torchrun only on GPUs of one node; across nodes or on "
                         f"the CPU use a SuPreM trainer (they choose this process's device) or train on one node")


def main(argv: Sequence[str] | None = None) -> None:
    """Join torchrun's process group, then run nnUNetv2_train in it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(f"usage: {USAGE}\n\nnnU-Net's options (without -num_gpus):")
        sys.argv = [sys.argv[0], "--help"]
        run_training_entry()
    options = launcher_options(argv)
    try:
        ranks = torchrun_environment(os.environ)
        check_launch(options, ranks, recursive_find_trainer_class_by_name(options.tr))
    except ValueError as error:
        raise SystemExit(f"nnunet_suprem.train: error: {error}") from None
    if options.device == "cuda":
        torch.cuda.set_device(ranks["LOCAL_RANK"])
    dist.init_process_group("nccl" if options.device == "cuda" else "gloo", init_method="env://")
    try:
        sys.argv = [sys.argv[0], *argv]
        run_training_entry()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
