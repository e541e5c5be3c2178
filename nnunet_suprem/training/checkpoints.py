"""Our trainers' checkpoints: nnU-Net's dict, written in one atomic write, and read back for ``--c`` even when a
kill left a damaged file behind (a version before atomic writes truncated ``checkpoint_latest.pth`` that way)."""
from __future__ import annotations

import os
from typing import Callable

from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_suprem.transfer.checkpoint import UnreadableCheckpoint, load_weights_only

CONTINUE_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
"""The checkpoints nnU-Net's ``--c`` continues from, the first that exists (``run_training.maybe_load_checkpoint``)."""


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and ``torch.compile`` wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def finished_epochs_only(logging: dict[str, list], epochs: int) -> dict[str, list]:
    """nnU-Net's log (one value per epoch and key) without the entries of epochs from ``epochs`` on."""
    return {key: values[:epochs] for key, values in logging.items()}


def read_checkpoint_to_continue(path: str, log: Callable[[str], None]) -> tuple[str, dict]:
    """The checkpoint file ``--c`` continues from and its contents: ``path``, nnU-Net's choice, or when that is
    damaged (truncated by a kill) the next readable one in :data:`CONTINUE_ORDER`; each damaged file is logged.
    RuntimeError naming the files to delete when none is readable."""
    folder, name = os.path.split(path)
    if name not in CONTINUE_ORDER:
        return path, load_weights_only(path)
    damaged = []
    for candidate in (os.path.join(folder, n) for n in CONTINUE_ORDER[CONTINUE_ORDER.index(name):]):
        if not os.path.isfile(candidate):
            continue
        try:
            checkpoint = load_weights_only(candidate)
        except UnreadableCheckpoint as error:
            log(f"{error}: skipped")
            damaged.append(candidate)
            continue
        if damaged:
            log(f"Continuing from {candidate} instead (an older state of this training).")
        return candidate, checkpoint
    raise RuntimeError(f"cannot continue the training: no readable checkpoint in {folder} ({', '.join(damaged)} "
                       f"damaged). Delete {' and '.join(damaged)} to start this training anew with the same command.")
