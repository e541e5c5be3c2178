"""Fingerprint, plan, preprocess: nnU-Net's plan-and-preprocess for our planners (-pl finds only nnunetv2's)."""
from __future__ import annotations

import argparse
import logging
import re
import shlex
from typing import Callable

from nnunet_suprem.jobs import default_num_processes
from nnunet_suprem.nnunet_env import dataset_folder_name, preprocessed_root, raw_root

logger = logging.getLogger(__name__)


def plan_and_preprocess(dataset_id: int, plans_name: str, configuration: str, make_planner: Callable[[], object],
                        num_processes: int, preprocess: bool = True, overwrite: bool = False,
                        verify: bool = False) -> dict:
    """Plan ``dataset_id`` with ``make_planner()`` (fingerprint extracted if missing), preprocess ``configuration``.

    Refuses to replace an existing plans file unless ``overwrite``; without ``preprocess`` logs the
    ``nnUNetv2_preprocess`` command instead. Returns the plans.
    """
    raw_root()  # a clear error when nnUNet_raw is not set
    if not re.fullmatch(r"[A-Za-z0-9_-]+", plans_name):
        raise ValueError(f"plans name {plans_name!r} must use only letters, digits, '-' and '_' (it names a file)")
    plans_file = preprocessed_root() / dataset_folder_name(dataset_id) / f"{plans_name}.json"
    if plans_file.exists() and not overwrite:
        raise FileExistsError(f"{plans_file} already exists; pass --overwrite to replace it or choose another "
                              f"--plans-name")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset

    extract_fingerprint_dataset(dataset_id, num_processes=num_processes, check_dataset_integrity=verify, clean=False)
    plans = make_planner().plan_experiment()
    if preprocess:
        preprocess_configuration(dataset_id, plans_name, configuration, num_processes)
    else:
        command = ["nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name", plans_name, "-c", configuration,
                   "-np", str(num_processes)]
        logger.info("Not preprocessed (--no-preprocess). Preprocess with:\n  %s", shlex.join(command))
    return plans


def preprocess_configuration(dataset_id: int, plans_name: str, configuration: str, num_processes: int) -> None:
    """``nnUNetv2_preprocess -c configuration``, with :class:`CaseJobPreprocessor` where the plans name nnU-Net's
    ``DefaultPreprocessor`` (the same output; jobs that do not grow with the dataset), else the plans' preprocessor."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_suprem.planning.preprocessing import CaseJobPreprocessor

    plans_file = preprocessed_root() / dataset_folder_name(dataset_id) / f"{plans_name}.json"
    planned = PlansManager(str(plans_file)).get_configuration(configuration).preprocessor_class
    if planned is not DefaultPreprocessor:
        preprocess_dataset(dataset_id, plans_name, [configuration], [num_processes])
        return
    CaseJobPreprocessor(verbose=False).run(dataset_id, configuration, plans_name, num_processes)
    preprocess_dataset(dataset_id, plans_name, [], [])  # no configuration: only nnU-Net's copy to gt_segmentations


def describe(plans: dict, configuration: str) -> str:
    """A short summary of one configuration of the plans."""
    config = plans["configurations"][configuration]
    kwargs = config["architecture"]["arch_kwargs"]
    network = config["architecture"]["network_class_name"].rsplit(".", 1)[-1]
    return (f"{plans['dataset_name']} {plans['plans_name']} {configuration}: {network}, {kwargs['n_stages']} stages, "
            f"features {list(kwargs['features_per_stage'])}; spacing {list(config['spacing'])}, "
            f"patch {list(config['patch_size'])}, batch size {config['batch_size']}, "
            f"normalization {config['normalization_schemes']}")


def add_planning_arguments(p: argparse.ArgumentParser, default_plans_name: str | None,
                           default_described: str | None = None) -> None:
    """Options shared by the planning commands (``default_described``: the help's words for a None default)."""
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="dataset ID (raw dataset in $nnUNet_raw)")
    p.add_argument("--plans-name", default=default_plans_name,
                   help=f"plans identifier, i.e. file $nnUNet_preprocessed/DatasetXXX_NAME/<name>.json "
                        f"(default: {default_described or default_plans_name})")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("S0", "S1", "S2"),
                   help="target spacing in mm, in nnU-Net's array axis order (as nnU-Net's -overwrite_target_spacing)")
    p.add_argument("-np", dest="num_processes", type=int, default=default_num_processes(),
                   help="processes for fingerprint and preprocessing (default: nnUNet_def_n_proc or 8)")
    p.add_argument("--no-preprocess", action="store_true",
                   help="only write the plans and print the nnUNetv2_preprocess command")
    p.add_argument("--verify-dataset-integrity", action="store_true",
                   help="run nnU-Net's dataset integrity check first")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plans file of that name")
