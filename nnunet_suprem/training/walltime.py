"""Stopping a training cleanly before its wall time: SLURM's ``#SBATCH --signal=USR1@600`` warning, or SIGTERM.

While a trainer's training loop runs, :class:`StopSignals` turns SIGUSR1 and SIGTERM in the training process into
a request (instead of death); the trainer acts on it after the current iteration, when every rank agrees
(:func:`stop_agreed`), by writing ``checkpoint_latest.pth`` and exiting with :data:`REQUEUE_EXIT_CODE`. Child
processes forked meanwhile (nnU-Net's data-augmentation workers, which SLURM signals too) ignore SIGUSR1 and keep
SIGTERM's previous action, with which nnU-Net and ``multiprocessing`` stop them.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
REQUEUE_EXIT_CODE = 124
"""Exit status of a training stopped by a stop signal after writing ``checkpoint_latest.pth`` (GNU ``timeout``'s
"timed out"): a job script requeues it, and the same command with ``--c`` continues."""

_installed: StopSignals | None = None  # the one installed in this process, if any
_fork_hook_registered = False


def _reset_in_forked_child() -> None:
    """In a child forked while signals are caught: ignore SIGUSR1, SIGTERM as before the parent caught it."""
    global _installed
    if _installed is not None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _installed.previous[signal.SIGTERM])
        _installed = None


class StopSignals:
    """Catches :data:`STOP_SIGNALS` in this process between :meth:`install` and :meth:`uninstall`;
    ``received`` is the last one caught (None: none)."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.previous: dict[int, object] = {}

    def install(self) -> bool:
        """Catch the stop signals (False, nothing changed, outside the main thread where Python cannot)."""
        global _installed, _fork_hook_registered
        if threading.current_thread() is not threading.main_thread():
            return False
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_reset_in_forked_child)
            _fork_hook_registered = True
        self.previous = {s: signal.signal(s, self._catch) for s in STOP_SIGNALS}
        _installed = self
        return True

    def uninstall(self) -> None:
        """Give the stop signals their previous actions back."""
        global _installed
        for s, action in self.previous.items():
            signal.signal(s, action)
        self.previous = {}
        if _installed is self:
            _installed = None

    def _catch(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum)


@contextmanager
def warning_ignored() -> Iterator[None]:
    """SIGUSR1 ignored in this process and the workers it starts meanwhile (nnU-Net's export workers are spawned:
    they inherit an ignored signal, not a handler), e.g. in the final validation, which cannot resume midway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def stop_agreed(requested: bool, device: torch.device) -> bool:
    """Whether this rank or any other requested a stop: one all_reduce of a flag under torch.distributed, so that
    every rank stops after the same iteration."""
    if not (dist.is_available() and dist.is_initialized()):
        return requested
    flag = torch.tensor([int(requested)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
