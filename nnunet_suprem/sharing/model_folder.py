"""An nnU-Net model folder (``DatasetXXX_Name/Trainer__Plans__Configuration/fold_X/checkpoint_final.pth``) and
what predicting with it needs.

Judged the way nnU-Net's predictor loads a model (``nnUNetPredictor.initialize_from_trained_model_folder``): the
trainer class the checkpoint names (``trainer_name``, found by nnU-Net's lookup: its own package, then
``nnUNet_extTrainer``) builds the network from the plans (``build_network_architecture``), the checkpoint's weights
are loaded into it, and test-time mirroring uses the checkpoint's ``inference_allowed_mirroring_axes``. Nothing
else of the trainer is used for prediction.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from nnunet_suprem.fileio import check_name
from nnunet_suprem.nnunet_env import EXT_TRAINER_VARIABLE, with_ext_trainers
from nnunet_suprem.plans_safety import check_plans
from nnunet_suprem.transfer.checkpoint import load_weights_only

PLUGIN_PACKAGE = "nnunet_suprem"
DATASET_FOLDER = re.compile(r"Dataset\d{3}_[^/\\]+")
CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (every nnU-Net model folder has it)") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return content


@dataclass
class ModelFolder:
    """A model folder's names, plans, dataset.json and the folds that hold ``checkpoint_name``."""

    path: Path
    dataset: str
    trainer: str
    plans: str
    configuration: str
    plans_json: dict
    dataset_json: dict
    folds: list[str]
    checkpoint_name: str

    def checkpoint_path(self, fold: str) -> Path:
        return self.path / f"fold_{fold}" / self.checkpoint_name

    def load_checkpoint(self, fold: str) -> dict:
        """The checkpoint of ``fold`` (``weights_only``), checked to be nnU-Net's and of this folder's configuration."""
        path = self.checkpoint_path(fold)
        content = load_weights_only(path)
        if not isinstance(content, dict) or any(k not in content for k in CHECKPOINT_KEYS):
            raise ValueError(f"{path}: not an nnU-Net checkpoint (expected the keys {', '.join(CHECKPOINT_KEYS)})")
        name = content["trainer_name"]
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"{path}: trainer_name {name!r} is not a class name")
        configuration = (content["init_args"] or {}).get("configuration")
        if configuration != self.configuration:
            raise ValueError(f"{path}: trained for configuration {configuration!r}, but the folder name says "
                             f"{self.configuration!r}")
        return content


def _fold_key(fold: str) -> tuple[int, str]:
    return (1, fold) if fold == "all" else (0, f"{int(fold):09d}")


def read_model_folder(path: str | os.PathLike, folds: Sequence[str] | None = None,
                      checkpoint_name: str = "checkpoint_final.pth") -> ModelFolder:
    """Read and check a model folder (its plans name nothing nnU-Net would import or call but what
    :func:`~nnunet_suprem.plans_safety.check_plans` allows); ``folds`` None: every ``fold_X`` holding
    ``checkpoint_name`` (as nnU-Net does)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: model folder not found")
    parts = path.name.split("__")
    if len(parts) != 3:
        raise ValueError(f"{path}: not an nnU-Net model folder (its name must be Trainer__Plans__Configuration)")
    for part, what in zip(parts, ("trainer", "plans", "configuration")):
        check_name(part, what, path)
    dataset = path.resolve().parent.name
    if not DATASET_FOLDER.fullmatch(dataset):
        raise ValueError(f"{path}: lies in {dataset!r}, not in a DatasetXXX_Name folder as nnU-Net's results do")
    check_name(checkpoint_name, "checkpoint name", path)
    if folds is None:
        folds = [p.name[len("fold_"):] for p in path.glob("fold_*") if (p / checkpoint_name).is_file()]
        if not folds:
            raise FileNotFoundError(f"{path}: no fold_X folder holds {checkpoint_name}")
    for fold in folds:
        if fold != "all" and not fold.isdigit():
            raise ValueError(f"{path}: fold {fold!r} is not a number or 'all'")
        if not (path / f"fold_{fold}" / checkpoint_name).is_file():
            raise FileNotFoundError(f"{path / f'fold_{fold}' / checkpoint_name}: checkpoint not found")
    plans_json = _read_json(path / "plans.json")
    check_plans(plans_json, path / "plans.json")
    if parts[2] not in plans_json["configurations"]:
        raise ValueError(f"{path / 'plans.json'}: has no configuration {parts[2]!r}")
    return ModelFolder(path, dataset, *parts, plans_json, _read_json(path / "dataset.json"),
                       sorted(set(folds), key=_fold_key), checkpoint_name)


def _set_ext_trainer_variable(value: str | None) -> None:
    if value is None:
        os.environ.pop(EXT_TRAINER_VARIABLE, None)
    else:
        os.environ[EXT_TRAINER_VARIABLE] = value


@contextlib.contextmanager
def _ext_trainer_variable(value: str | None) -> Iterator[None]:
    """``nnUNet_extTrainer`` set to ``value`` (None: unset) in this process, restored afterwards."""
    previous = os.environ.get(EXT_TRAINER_VARIABLE)
    _set_ext_trainer_variable(value)
    try:
        yield
    finally:
        _set_ext_trainer_variable(previous)


def find_trainer_class(name: str, plugin: bool) -> type | None:
    """The trainer class nnU-Net's own lookup finds for ``name`` in this environment (its package, then
    ``nnUNet_extTrainer``), as ``nnUNetv2_predict`` does; with ``plugin`` this plugin's trainers are searched too.
    None when no class has that name."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    value = with_ext_trainers()[EXT_TRAINER_VARIABLE] if plugin else os.environ.get(EXT_TRAINER_VARIABLE)
    with _ext_trainer_variable(value), contextlib.redirect_stdout(io.StringIO()):
        try:
            return recursive_find_trainer_class_by_name(name)
        except RuntimeError:
            return None


def stock_ancestor(trainer_class: type) -> type:
    """The nearest class in ``trainer_class``'s MRO that stock nnU-Net defines (``nnUNetTrainer`` at the latest)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return next(c for c in trainer_class.__mro__
                if issubclass(c, nnUNetTrainer) and c.__module__.split(".")[0] == "nnunetv2")


def _managers(model: ModelFolder):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(model.plans_json)
    return plans_manager, plans_manager.get_configuration(model.configuration)


def build_network(trainer_class: type, model: ModelFolder) -> nn.Module:
    """The network ``trainer_class`` builds for the model's plans at inference (no deep supervision), as nnU-Net's
    predictor calls it, on the meta device (no memory, no initialisation cost)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    if "plans_manager" not in inspect.signature(trainer_class.build_network_architecture).parameters:
        raise ValueError(f"{model.path}: trainer {trainer_class.__name__} has nnU-Net's old build_network_architecture "
                         f"signature; only trainers with nnunetv2 2.6+'s signature are supported")
    plans_manager, configuration_manager = _managers(model)
    try:
        with torch.device("meta"):
            return trainer_class.build_network_architecture(
                plans_manager, configuration_manager,
                determine_num_input_channels(plans_manager, configuration_manager, model.dataset_json),
                plans_manager.get_label_manager(model.dataset_json).num_segmentation_heads,
                enable_deep_supervision=False)
    except ImportError as e:
        raise ValueError(f"{model.path / 'plans.json'}: network {configuration_manager.network_arch_class_name} "
                         f"cannot be built here: {e}") from e


def network_signature(network: nn.Module) -> tuple:
    """What makes two networks compute the same function from the same weights: every module's class and settings
    (``extra_repr``: kernel sizes, strides, eps, slopes, ...) and every state-dict entry's shape and dtype."""
    modules = tuple((name, f"{type(m).__module__}.{type(m).__qualname__}", m.extra_repr())
                    for name, m in network.named_modules())
    tensors = tuple((key, tuple(value.shape), value.dtype) for key, value in network.state_dict().items())
    return modules, tensors


def check_weights(network: nn.Module, checkpoint: dict, path: Path) -> None:
    """ValueError naming ``path`` unless the checkpoint's weights load into ``network`` (same keys and shapes)."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint["network_weights"].items()}
    if found != expected:
        missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        shapes = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
        raise ValueError(f"{path}: the weights do not fit the network the plans build (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, other shapes {shapes[:3]})")


@dataclass(frozen=True)
class Portability:
    """What running a model needs: a stock trainer that builds the same network, and imports from this plugin."""

    trainer_name: str
    trainer_module: str
    plugin_trainer: str | None
    """The nearest of this plugin's trainers the trainer is or derives from (None: it does not)."""
    stock_trainer: str | None
    """The stock nnU-Net trainer that builds the identical network (None: none does, the trainer is needed)."""
    network_class: str
    plugin_imports: tuple[str, ...]
    """What the plans' network needs from this plugin (its class, classes in its arguments)."""

    @property
    def needs_plugin(self) -> bool:
        return self.stock_trainer is None or bool(self.plugin_imports)

    @property
    def exported_trainer(self) -> str:
        return self.stock_trainer or self.trainer_name

    def requirement(self) -> str:
        if not self.needs_plugin:
            return f"stock nnU-Net runs it (trainer {self.stock_trainer}): no plugin, no nnUNet_extTrainer"
        if self.stock_trainer is not None:
            return (f"needs nnunet-suprem installed (pip install nnunet-suprem): the plans' network "
                    f"{', '.join(self.plugin_imports)} is the plugin's; nnUNet_extTrainer is not needed")
        return (f"needs nnunet-suprem installed and nnUNet_extTrainer=$(nnunet-suprem trainers-dir): trainer "
                f"{self.trainer_name} builds a network no stock nnU-Net trainer builds")


def portability(model: ModelFolder, checkpoint: dict) -> Portability:
    """Find the checkpoint's trainer (with this plugin's trainers), check that its weights fit the network it
    builds, and compare that network with the one its nearest stock ancestor builds."""
    name, path = checkpoint["trainer_name"], model.checkpoint_path(model.folds[0])
    trainer_class = find_trainer_class(name, plugin=True)
    if trainer_class is None:
        raise ValueError(f"{path}: trainer {name} not found in nnU-Net, in this plugin or on "
                         f"{EXT_TRAINER_VARIABLE}={os.environ.get(EXT_TRAINER_VARIABLE, '')}")
    network = build_network(trainer_class, model)
    check_weights(network, checkpoint, path)
    stock = stock_ancestor(trainer_class)
    same = stock is trainer_class or (find_trainer_class(stock.__name__, plugin=False) is stock and
                                      network_signature(build_network(stock, model)) == network_signature(network))
    _, configuration_manager = _managers(model)
    kwargs = configuration_manager.network_arch_init_kwargs
    imports = {configuration_manager.network_arch_class_name,
               *(kwargs[k] for k in configuration_manager.network_arch_init_kwargs_req_import if kwargs.get(k)),
               f"{type(network).__module__}.{type(network).__qualname__}"}
    plugin_trainer = next((c.__name__ for c in trainer_class.__mro__ if c.__module__.split(".")[0] == PLUGIN_PACKAGE),
                          None)
    return Portability(name, trainer_class.__module__, plugin_trainer, stock.__name__ if same else None,
                       configuration_manager.network_arch_class_name,
                       tuple(sorted(i for i in imports if i.split(".")[0] == PLUGIN_PACKAGE)))
