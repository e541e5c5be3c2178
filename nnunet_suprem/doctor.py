"""``nnunet-suprem doctor``: check that nnU-Net and this plugin are set up, and say what to fix."""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from nnunet_suprem.nnunet_env import EXT_TRAINER_VARIABLE, NNUNET_PATH_VARIABLES, trainers_dir

MIN_NNUNET = (2, 8)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for token in text.split(".")[:3]:
        digits = "".join(c for c in token if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_nnunet_version() -> Check:
    try:
        installed = version("nnunetv2")
    except PackageNotFoundError:
        return Check("nnunetv2", False, "not installed", "pip install 'nnunetv2>=2.8'")
    ok = _version_tuple(installed) >= MIN_NNUNET
    return Check("nnunetv2", ok, installed, "" if ok else "pip install -U 'nnunetv2>=2.8' (needed for nnUNet_extTrainer)")


def check_path_variable(name: str) -> Check:
    value = os.environ.get(name)
    if not value:
        return Check(name, False, "not set", f"export {name}=/path/to/{name}")
    if not os.path.isdir(value):
        return Check(name, False, f"{value} does not exist", f"mkdir -p {value}")
    if not os.access(value, os.W_OK):
        return Check(name, False, f"{value} is not writable", f"make {value} writable or point {name} elsewhere")
    return Check(name, True, value)


def check_ext_trainer() -> Check:
    """Resolve SuPreMTrainer exactly as nnUNetv2_train does (nnU-Net's own lookup)."""
    fix = f"export {EXT_TRAINER_VARIABLE}={trainers_dir()}"
    value = os.environ.get(EXT_TRAINER_VARIABLE)
    if not value:
        return Check(EXT_TRAINER_VARIABLE, False, "not set: nnUNetv2_train/predict cannot find -tr SuPreMTrainer", fix)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = recursive_find_trainer_class_by_name("SuPreMTrainer")
    except RuntimeError:
        return Check(EXT_TRAINER_VARIABLE, False, f"{value} does not contain the nnunet-suprem trainers", fix)
    return Check(EXT_TRAINER_VARIABLE, True, f"{value} (SuPreMTrainer from {trainer.__module__})")


def check_torch() -> Check:
    try:
        import torch
    except ImportError:
        return Check("torch", False, "not installed", "install PyTorch first: https://pytorch.org")
    if torch.cuda.is_available():
        detail = f"{torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): " \
                 f"{torch.cuda.get_device_name(0)}"
    else:
        detail = f"{torch.__version__}, no CUDA GPU: use -device cpu with nnUNetv2_train/predict (slow)"
    return Check("torch", True, detail)


def run_checks() -> list[Check]:
    return [check_nnunet_version(), *(check_path_variable(v) for v in NNUNET_PATH_VARIABLES),
            check_ext_trainer(), check_torch()]


def check_model_folder(path: str) -> list[Check]:
    """Can ``nnUNetv2_predict`` run this model folder here, as the environment is now, and does it need the plugin?"""
    from nnunet_suprem.sharing.model_folder import (build_network, check_weights, find_trainer_class, portability,
                                                     read_model_folder)

    folder_fix = "give --model-folder a DatasetXXX_Name/Trainer__Plans__Configuration folder with fold_X/" \
                 "checkpoint_final.pth (a damaged checkpoint: copy or train that fold again)"
    try:
        model = read_model_folder(path)
        first = model.load_checkpoint(model.folds[0])
    except (ValueError, OSError) as e:
        return [Check("model folder", False, str(e), folder_fix)]
    name = first["trainer_name"]
    checks = [Check("model folder", True, f"{model.dataset}/{model.path.name}, folds {' '.join(model.folds)}, "
                                          f"test-time mirroring axes {first.get('inference_allowed_mirroring_axes')}")]
    trainer = find_trainer_class(name, plugin=False)
    if trainer is None:
        fix = f"export {EXT_TRAINER_VARIABLE}={trainers_dir()}" if find_trainer_class(name, plugin=True) \
            else f"install the package that defines trainer {name} and put its folder on {EXT_TRAINER_VARIABLE}"
        return [*checks, Check("trainer", False, f"nnU-Net's lookup does not find {name} here", fix)]
    checks.append(Check("trainer", True, f"{name} from {trainer.__module__}"))
    try:
        needs = portability(model, first)
        network = build_network(trainer, model)
    except ValueError as e:
        return [*checks, Check("network", False, str(e), "install what the plans' network needs")]
    for fold in model.folds[1:]:  # one more checkpoint in memory at a time
        try:
            check_weights(network, model.load_checkpoint(fold), model.checkpoint_path(fold))
        except (ValueError, OSError) as e:
            return [*checks, Check("model folder", False, str(e), folder_fix)]
    return [*checks, Check("network", True, f"{type(network).__name__}: the weights of every fold fit"),
            Check("plugin", True, needs.requirement())]


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="check nnU-Net, its path variables, nnUNet_extTrainer and torch/CUDA",
        description="Check the nnunetv2 version, nnUNet_raw/nnUNet_preprocessed/nnUNet_results, "
                    "nnUNet_extTrainer (by resolving SuPreMTrainer with nnU-Net's own lookup) and torch/CUDA, "
                    "and print what to fix. With --model-folder: whether nnUNetv2_predict can run that model here "
                    "and whether it needs this plugin. Exits 1 when something must be fixed.")
    p.add_argument("--model-folder", metavar="DIR", default=None,
                   help="check a trained or installed model folder (DatasetXXX_Name/Trainer__Plans__Configuration)")
    p.set_defaults(func=run)


def run(args) -> int:
    checks = run_checks() if args.model_folder is None else check_model_folder(args.model_folder)
    for c in checks:
        print(f"[{'ok' if c.ok else 'FIX'}] {c.name}: {c.detail}")
    fixes = [c.fix for c in checks if not c.ok and c.fix]
    if fixes:
        print("\nTo fix:")
        for fix in fixes:
            print(f"  {fix}")
        return 1
    print("\nAll good: nnUNetv2_predict can run this model here." if args.model_folder else
          "\nAll good: nnUNetv2_train ... -tr SuPreMTrainer will find the nnunet-suprem trainers.")
    return 0
