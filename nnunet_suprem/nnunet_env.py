"""Where nnU-Net looks for things, and running nnU-Net's own commands with our trainers visible."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"
CANONICAL_READER = "NibabelIOWithReorient"
"""nnU-Net reader that presents every image in RAS (as SuPreM does) and writes predictions back in the
original orientation. Our datasets name it in dataset.json unless asked to keep the orientation."""


class ConfigurationError(RuntimeError):
    """The environment is not set up the way nnU-Net needs it; the message says what to do."""


def trainers_dir() -> Path:
    """The directory to put on ``nnUNet_extTrainer``: the installed ``trainers/`` folder, or the checkout's when
    this package is imported from a source checkout (``python -m nnunet_suprem...`` run in it)."""
    try:
        from nnunet_suprem import ext_trainers
    except ImportError:
        checkout = Path(__file__).resolve().parents[1] / "trainers"
        if not (checkout / "__init__.py").is_file():
            raise
        return checkout
    return Path(ext_trainers.__path__[0]).resolve()


def with_ext_trainers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: os.environ) whose ``nnUNet_extTrainer`` includes our trainers."""
    env = dict(os.environ if env is None else env)
    ours = str(trainers_dir())
    entries = [p for p in env.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep) if p]
    if not any(_same_path(p, ours) for p in entries):
        entries.append(ours)
    env[EXT_TRAINER_VARIABLE] = os.pathsep.join(entries)
    return env


def run_nnunet(command: Sequence[str], env: Mapping[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run an nnU-Net command (e.g. ``["nnUNetv2_train", "1", "3d_fullres", "0"]``) with our trainers visible.

    Raises CalledProcessError when it fails.
    """
    return subprocess.run(list(command), env=with_ext_trainers(env), check=True, **kwargs)


def raw_root() -> Path:
    """``$nnUNet_raw``, with a clear error when it is not set."""
    value = os.environ.get("nnUNet_raw")
    if not value:
        raise ConfigurationError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw "
                           "(run `nnunet-suprem doctor` to check your set-up)")
    return Path(value)


def preprocessed_root() -> Path:
    """``$nnUNet_preprocessed``, with a clear error when it is not set."""
    value = os.environ.get("nnUNet_preprocessed")
    if not value:
        raise ConfigurationError("nnUNet_preprocessed is not set: export "
                                 "nnUNet_preprocessed=/path/to/nnUNet_preprocessed "
                                 "(run `nnunet-suprem doctor` to check your set-up)")
    return Path(value)


def dataset_folder_name(dataset_id: int) -> str:
    """nnU-Net's ``DatasetXXX_NAME`` of an ID (found in the raw, preprocessed or results folder)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset_id)
    except RuntimeError:
        folders = ", ".join(f"{v}={os.environ.get(v)}" for v in NNUNET_PATH_VARIABLES)
        raise ValueError(f"dataset {dataset_id}: no dataset with this ID in {folders}") from None


def datasets_with_id(dataset_id: int) -> list[str]:
    """Names of the datasets with this ID in the raw, preprocessed and results folders."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    return [str(name) for name in find_candidate_datasets(dataset_id)]


def dataset_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetXXX_Name``; rejects IDs and names nnU-Net cannot use."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset ID must be between 1 and 999 (nnU-Net uses three digits), got {dataset_id}")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"dataset name {name!r} must be non-empty and use only letters, digits, '-' and '_'")
    return f"Dataset{dataset_id:03d}_{name}"


def new_dataset_folder(dataset_id: int, name: str, overwrite: bool, raw_folder: str | Path | None = None) -> Path:
    """Where ``DatasetXXX_name`` goes; refuses an ID another dataset uses, and an existing one without overwrite."""
    folder_name = dataset_name(dataset_id, name)
    clashes = [d for d in datasets_with_id(dataset_id) if d != folder_name]
    if clashes:
        raise FileExistsError(f"dataset ID {dataset_id} is already used by {clashes}; choose another ID "
                              f"(nnU-Net needs IDs to be unique)")
    final = (Path(raw_folder) if raw_folder is not None else raw_root()) / folder_name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to replace it")
    return final


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
