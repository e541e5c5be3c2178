"""Running independent per-case jobs with a progress bar, in parallel when asked (as nnU-Net does)."""
from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_num_processes(unset: int = 8) -> int:
    """nnU-Net's default worker count: ``nnUNet_def_n_proc``, else ``unset`` (nnU-Net's 8)."""
    return int(os.environ.get("nnUNet_def_n_proc", unset))


def map_with_progress(function: Callable[[T], R], items: Iterable[T], num_processes: int, desc: str) -> list[R]:
    """``[function(item) for item in items]`` with a tqdm bar; a process pool when ``num_processes > 1``.

    ``function`` must be picklable (a module-level function or a functools.partial of one).
    Results keep the order of ``items``.
    """
    items = list(items)
    if num_processes <= 1 or len(items) <= 1:
        return [function(item) for item in tqdm(items, desc=desc, unit="case")]
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(items))) as pool:
        return list(tqdm(pool.imap(function, items), total=len(items), desc=desc, unit="case"))
