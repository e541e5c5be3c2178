"""The left-right orientation of every preprocessed case, read from the cases' ``.pkl`` files once per dataset.

nnU-Net's per-case ``.pkl`` holds the image geometry next to ``class_locations`` (up to 10,000 x 4
int64 per class: megabytes per case), so reading every case's ``.pkl`` at each start-up, on every
rank, costs far more than stock nnU-Net's start-up. The orientations are read once, shared out
over the DDP ranks, and kept in a small JSON summary beside nnU-Net's data folder
(``suprem_left_right_<data identifier>.json`` in the dataset's preprocessed folder: nothing is
added to the data folder, whose files nnU-Net and users' scripts enumerate). The summary records
each case's ``.pkl`` size and modification time; it is used only while they all match, so a
dataset preprocessed again is read again (a ``stat`` per case, no ``.pkl`` is opened).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Sequence

import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_suprem.fileio import source_fingerprint, write_json
from nnunet_suprem.orientation import training_orientation
from nnunet_suprem.training.laterality import lateral_label_pairs, left_right_axis

SUMMARY_FORMAT = 2

Orientations = dict[str, tuple[int, int] | None]  # case -> (array axis, sign) of left-right, None: unknown


def read_case_orientations(folder: str, cases: Sequence[str]) -> Orientations:
    """Left-right (array axis, sign) of each case from its ``.pkl`` (see ``laterality.left_right_axis``)."""
    return {case: left_right_axis(load_pickle(os.path.join(folder, f"{case}.pkl"))) for case in cases}


def summary_path(folder: str) -> str:
    """Where the summary of nnU-Net's data folder ``folder`` lives: beside it, named after it."""
    return os.path.join(os.path.dirname(os.path.abspath(folder)), f"suprem_left_right_{os.path.basename(folder)}.json")


def _pkl_fingerprint(folder: str, cases: Sequence[str]) -> dict[str, list[int]]:
    files = source_fingerprint(os.path.join(folder, f"{case}.pkl") for case in cases)
    return dict(zip(cases, files.values()))


def _is_orientation(value: object) -> bool:
    """None or an (array axis, sign) pair as ``laterality.left_right_axis`` gives."""
    return value is None or (isinstance(value, list) and len(value) == 2 and value[0] in (0, 1, 2)
                             and value[1] in (-1, 1) and not any(isinstance(v, bool) for v in value))


def read_summary(folder: str, cases: Sequence[str]) -> Orientations | None:
    """The summary if it exists, is well-formed, and its cases' ``.pkl`` files are exactly the ones it was made
    from, else None (it is then made again)."""
    try:
        with open(summary_path(folder), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("format") != SUMMARY_FORMAT or \
            summary.get("pkl") != _pkl_fingerprint(folder, cases):
        return None
    orientations = summary.get("orientations")
    if not isinstance(orientations, dict) or sorted(orientations) != sorted(cases) or \
            not all(map(_is_orientation, orientations.values())):
        return None
    return {case: None if value is None else tuple(value) for case, value in orientations.items()}


def write_summary(folder: str, orientations: Orientations, fingerprint: dict[str, list[int]]) -> None:
    """Write the summary atomically (concurrent readers see the old file or the new one)."""
    write_json({"format": SUMMARY_FORMAT, "pkl": fingerprint, "orientations": orientations}, summary_path(folder))


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
    fingerprint = _pkl_fingerprint(folder, cases) if rank == 0 else {}  # before reading: a change means read again
    mine = read_case_orientations(folder, cases[rank::world])
    shares = [mine]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, mine)
    orientations = {case: orientation for share in shares for case, orientation in share.items()}
    if rank == 0:
        try:
            write_summary(folder, orientations, fingerprint)
            log(f"Laterality: read the orientation of {len(cases)} cases from their .pkl files once; "
                f"summary written to {summary_path(folder)}")
        except OSError as error:
            log(f"Laterality: read the orientation of {len(cases)} cases from their .pkl files; could not write "
                f"the summary ({error}), so the next start reads them again")
    return orientations


def preprocessed_orientation(dataset_folder: str, plans_manager: PlansManager,
                             configuration_manager: ConfigurationManager, labels: Mapping,
                             log: Callable[[str], None]) -> dict | None:
    """The orientation record (:func:`~nnunet_suprem.orientation.training_orientation`) of a configuration's cases in
    nnU-Net's preprocessed dataset folder (``$nnUNet_preprocessed/DatasetXXX_NAME``): where left-right lies in the
    patches the network sees. None when they share no left-right orientation, there are none, or no label of
    ``labels`` names a side (nothing depends on it, and reading every case's geometry costs a pass over the
    ``.pkl`` files)."""
    folder = os.path.join(dataset_folder, configuration_manager.data_identifier)
    if not any(lateral_label_pairs(labels)) or not os.path.isdir(folder) or \
            not any(name.endswith(".pkl") for name in os.listdir(folder)):
        return None
    cases = infer_dataset_class(folder).get_identifiers(folder)
    return training_orientation(dataset_orientations(folder, cases, log).values(),
                                plans_manager.plans["image_reader_writer"], plans_manager.transpose_forward,
                                len(configuration_manager.patch_size))
