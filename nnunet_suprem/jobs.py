"""Running independent per-case jobs with a progress bar, in parallel when asked (as nnU-Net does)."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_num_processes(unset: int = 8) -> int:
    """nnU-Net's default worker count: ``nnUNet_def_n_proc``, else ``unset`` (nnU-Net's 8)."""
    return int(os.environ.get("nnUNet_def_n_proc", unset))


def map_with_progress(function: Callable[[T], R], items: Iterable[T], num_processes: int, desc: str) -> list[R]:
    """``[function(item) for item in items]`` with a tqdm bar; a process pool when ``num_processes > 1``.

    ``function`` must be picklable (a module-level function or a functools.partial of one); it is pickled with every
    item, so it should not carry what grows with the number of items. Results keep the order of ``items``. A worker
    that dies without an error (killed for lack of memory) stops the run with a RuntimeError instead of a hang.
    """
    items = list(items)
    if num_processes <= 1 or len(items) <= 1:
        return [function(item) for item in tqdm(items, desc=desc, unit="case")]
    workers = min(num_processes, len(items))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return list(tqdm(pool.map(function, items), total=len(items), desc=desc, unit="case"))
        except BrokenProcessPool as error:
            raise RuntimeError(f"{desc}: a worker process died without an error, probably killed for lack of memory; "
                               f"try fewer processes (now {workers})") from error
