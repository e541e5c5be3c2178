"""Plans are data: every name nnU-Net would resolve from a plans file is checked before anything is imported or run.

nnU-Net builds a network from a plans configuration's ``architecture`` block with ``pydoc.locate``: the
``network_class_name`` and every ``arch_kwargs`` entry listed in ``_kw_requires_import`` (``conv_op``, ``norm_op``,
``dropout_op``, ``nonlin``) are imported by their dotted names and called. A plans file that comes with a model
folder or an nnssl checkpoint could so name any callable (``"nonlin": "os.system"`` with ``"nonlin_kwargs":
{"command": ...}`` runs a shell command while the network is built). These names must be on an allow-list: the
network classes nnU-Net's planners and this plugin write (dynamic-network-architectures' U-Nets, the plugin's
:data:`~nnunet_suprem.architectures.ARCHITECTURES`) and the ``torch.nn`` layers of :data:`LAYERS`.

Other names in a plans file are resolved by nnU-Net's ``recursive_find_python_class``: a search of nnunetv2's own
modules (nothing outside nnunetv2 is imported) for an attribute of that name, which nnU-Net then calls. Such an
attribute may also be something those modules import (``os``, ``torch``, a SciPy function), so each name is looked
up here the same way and must give what nnU-Net calls it as (:data:`LOOKUPS`): a reader class, a label manager, a
preprocessor, a normalisation, a resampling function of nnunetv2. ``experiment_planner_used`` is not checked: no
nnU-Net command that reads a model resolves it, and this plugin only compares it with its own planners' names.
"""
from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from torch import nn

from nnunet_suprem.architectures import ARCHITECTURES

DNA_UNETS = "dynamic_network_architectures.architectures.unet."
NETWORK_CLASSES = frozenset({*(DNA_UNETS + name for name in ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")),
                             *(a.network_class_name for a in ARCHITECTURES.values())})
"""The networks a plans file may name: dynamic-network-architectures' U-Nets (nnU-Net's planners write the first
two) and this plugin's released SuPreM networks."""
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
          nn.GroupNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
          nn.LeakyReLU, nn.ReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU)
"""The convolutions, normalisations, dropouts and nonlinearities an ``arch_kwargs`` entry may name: those
dynamic-network-architectures' helpers choose for nnU-Net, and common alternatives that are plain layers."""
LAYER_NAMES = frozenset(name for layer in LAYERS for name in (f"{layer.__module__}.{layer.__name__}",
                                                                f"torch.nn.{layer.__name__}"))
CLASS_KWARGS = ("conv_op", "norm_op", "dropout_op", "nonlin")
"""``arch_kwargs`` entries nnU-Net treats as classes (its planners' ``_kw_requires_import``; nnUNetTrainerBN locates
``conv_op`` even when unlisted): checked whether listed or not."""


@dataclass(frozen=True)
class Lookup:
    """A name nnU-Net resolves with ``recursive_find_python_class`` in ``nnunetv2.<package>``, and what it must find
    there: a subclass of ``base`` (a dotted nnunetv2 class), or with ``base`` None a function of that package."""

    package: str
    base: str | None
    what: str


LOOKUPS = {
    "image_reader_writer": Lookup("imageio", "nnunetv2.imageio.base_reader_writer.BaseReaderWriter",
                                  "image reader"),
    "label_manager": Lookup("utilities.label_handling", "nnunetv2.utilities.label_handling.label_handling.LabelManager",
                            "label manager"),
    "preprocessor_name": Lookup("preprocessing",
                                "nnunetv2.preprocessing.preprocessors.default_preprocessor.DefaultPreprocessor",
                                "preprocessor"),
    "normalization_schemes": Lookup(
        "preprocessing.normalization",
        "nnunetv2.preprocessing.normalization.default_normalization_schemes.ImageNormalization", "normalisation"),
    **{key: Lookup("preprocessing.resampling", None, "resampling function")
       for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")},
}
"""Plans entries that nnU-Net resolves by its lookup."""
PLANS_LOOKUPS = ("image_reader_writer", "label_manager")
"""The entries of :data:`LOOKUPS` at a plans file's top level; the others are in each configuration."""
CONFIGURATION_LOOKUPS = tuple(key for key in LOOKUPS if key not in PLANS_LOOKUPS)


def key_path(*parts: object) -> str:
    """``configurations.3d_fullres.architecture.nonlin``: parts joined by dots, any odd part as its repr (one line)."""
    return ".".join(p if isinstance(p, str) and p.isprintable() and p else repr(p) for p in parts)


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse(source: str | os.PathLike, where: str, name: object, allowed: str) -> ValueError:
    return ValueError(f"{os.fspath(source)}: {where} = {_shown(name)} is not {allowed}; refusing the file, because "
                      f"nnU-Net would import or call whatever that name is (plans are data, not code)")


def imported_names(architecture: Mapping, source: str | os.PathLike, where: str) -> Iterator[tuple[str, object, bool]]:
    """(key path, name, is the network class) of every entry nnU-Net's ``get_network_from_plans`` would import."""
    kwargs, listed = architecture.get("arch_kwargs", {}), architecture.get("_kw_requires_import", ())
    if not isinstance(kwargs, Mapping) or not isinstance(listed, (list, tuple)) \
            or not all(isinstance(k, str) for k in listed):
        raise ValueError(f"{os.fspath(source)}: {where} is not an nnU-Net architecture block (arch_kwargs must map "
                         f"names to values, _kw_requires_import list names of them)")
    yield key_path(where, "network_class_name"), architecture.get("network_class_name"), True
    for key in dict.fromkeys([*listed, *CLASS_KWARGS]):
        if kwargs.get(key) is not None:
            yield key_path(where, "arch_kwargs", key), kwargs[key], False


def check_architecture(architecture: object, source: str | os.PathLike, where: str) -> None:
    """ValueError naming ``source``, the key path and the name unless every name the ``architecture`` block (at
    ``where`` in ``source``) makes nnU-Net import is an allowed network class or ``torch.nn`` layer."""
    if not isinstance(architecture, Mapping):
        raise ValueError(f"{os.fspath(source)}: {where} is not an nnU-Net architecture block")
    for path, name, network in imported_names(architecture, source, where):
        allowed = NETWORK_CLASSES if network else LAYER_NAMES
        if not isinstance(name, str) or name not in allowed:
            raise _refuse(source, path, name, "a network of nnU-Net, dynamic-network-architectures or nnunet-suprem"
                          if network else "a torch.nn convolution, normalisation, dropout or nonlinearity")


def _found_by_nnunet(lookup: Lookup, name: str) -> object:
    """What nnU-Net's lookup finds for ``name`` (it imports nnunetv2's own modules only), or None."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    return recursive_find_python_class(os.path.join(nnunetv2.__path__[0], *lookup.package.split(".")), name,
                                       f"nnunetv2.{lookup.package}")


def check_lookup(key: str, name: object, source: str | os.PathLike, where: str) -> None:
    """ValueError naming ``source``, ``where`` and the name unless nnU-Net's lookup for plans entry ``key`` finds
    what nnU-Net calls it as (:data:`LOOKUPS`)."""
    lookup = LOOKUPS[key]
    found = _found_by_nnunet(lookup, name) if isinstance(name, str) and name.isidentifier() else None
    if lookup.base is None:
        ok = inspect.isfunction(found) and found.__module__.startswith(f"nnunetv2.{lookup.package}.")
    else:
        module, _, cls = lookup.base.rpartition(".")
        ok = isinstance(found, type) and issubclass(found, getattr(importlib.import_module(module), cls))
    if not ok:
        raise _refuse(source, where, name, f"one of nnU-Net's {lookup.what}s")


def check_lookups(entries: Mapping, keys: Iterable[str], source: str | os.PathLike, *where: object) -> None:
    """:func:`check_lookup` for each of ``keys`` in ``entries`` (found at key path ``where`` in ``source``); the
    normalisation schemes are a list of names."""
    for key in (k for k in keys if k in entries):
        names = entries[key]
        if key == "normalization_schemes":
            if not isinstance(names, (list, tuple)):
                raise _refuse(source, key_path(*where, key), names, "a list of nnU-Net's normalisations")
            for i, name in enumerate(names):
                check_lookup(key, name, source, f"{key_path(*where, key)}[{i}]")
        else:
            check_lookup(key, names, source, key_path(*where, key))


def check_plans(plans: object, source: str | os.PathLike) -> None:
    """Check every name nnU-Net would resolve from a plans file (``source``) before anything uses it: the
    architecture block of every configuration (inherited ones included) and the entries of :data:`LOOKUPS`.
    A ValueError names the file, the key path and the name."""
    configurations = plans.get("configurations") if isinstance(plans, Mapping) else None
    if not isinstance(configurations, Mapping):
        raise ValueError(f"{os.fspath(source)}: not an nnU-Net plans file (no 'configurations')")
    check_lookups(plans, PLANS_LOOKUPS, source)
    for name, configuration in configurations.items():
        if not isinstance(configuration, Mapping):
            raise ValueError(f"{os.fspath(source)}: {key_path('configurations', name)} is not a configuration")
        if "architecture" in configuration:
            check_architecture(configuration["architecture"], source, key_path("configurations", name, "architecture"))
        check_lookups(configuration, CONFIGURATION_LOOKUPS, source, "configurations", name)
