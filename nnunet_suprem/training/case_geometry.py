"""The left-right orientation of every preprocessed case, read from the cases' ``.pkl`` files once per dataset.

nnU-Net's per-case ``.pkl`` holds the image geometry next to ``class_locations`` (up to 10,000 x 4
int64 per class: megabytes per case), so reading every case's ``.pkl`` at each start-up, on every
rank, costs far more than stock nnU-Net's start-up. The orientations are read once, shared out
over the DDP ranks, and kept in a small summary file in the preprocessed data folder, which
nnU-Net's preprocessing deletes with the folder whenever it preprocesses the dataset again. The
summary is a ``.pkl`` because nnU-Net tells its dataset format from the other file endings there.
"""
from __future__ import annotations

import os
import pickle
from typing import Callable, Sequence

import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import load_pickle

from nnunet_suprem.fileio import atomic_path
from nnunet_suprem.training.laterality import left_right_axis

SUMMARY_FILE = "suprem_left_right.pkl"
SUMMARY_FORMAT = 1

Orientations = dict[str, tuple[int, int] | None]  # case -> (array axis, sign) of left-right, None: unknown


def read_case_orientations(folder: str, cases: Sequence[str]) -> Orientations:
    """Left-right (array axis, sign) of each case from its ``.pkl`` (see ``laterality.left_right_axis``)."""
    return {case: left_right_axis(load_pickle(os.path.join(folder, f"{case}.pkl"))) for case in cases}


def read_summary(folder: str, cases: Sequence[str]) -> Orientations | None:
    """The folder's summary if it exists and lists exactly ``cases``, else None."""
    path = os.path.join(folder, SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    summary = load_pickle(path)
    if summary.get("format") != SUMMARY_FORMAT or summary["orientations"].keys() != set(cases):
        return None
    return summary["orientations"]


def write_summary(folder: str, orientations: Orientations) -> None:
    """Write the summary atomically (concurrent readers see the old file or the new one)."""
    with atomic_path(os.path.join(folder, SUMMARY_FILE)) as tmp, open(tmp, "wb") as f:
        pickle.dump({"format": SUMMARY_FORMAT, "orientations": orientations}, f)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def dataset_orientations(folder: str, cases: Sequence[str], log: Callable[[str], None]) -> Orientations:
    """Left-right orientation of every case: from the summary, else read once and summarised.

    Under DDP, rank 0 checks the summary and broadcasts it; without one, each rank reads its share
    of the ``.pkl`` files, the shares are gathered and rank 0 writes the summary (a read-only
    folder only costs the reading again next time).
    """
    rank, world = _rank_and_world()
    cases = sorted(cases)
    found = [read_summary(folder, cases) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(found, src=0)
    if found[0] is not None:
        return found[0]
    mine = read_case_orientations(folder, cases[rank::world])
    shares = [mine]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, mine)
    orientations = {case: orientation for share in shares for case, orientation in share.items()}
    if rank == 0:
        try:
            write_summary(folder, orientations)
            log(f"Laterality: read the orientation of {len(cases)} cases from their .pkl files once; "
                f"summary written to {os.path.join(folder, SUMMARY_FILE)}")
        except OSError as error:
            log(f"Laterality: read the orientation of {len(cases)} cases from their .pkl files; could not write "
                f"the summary ({error}), so the next start reads them again")
    return orientations
