"""Networks of the released SuPreM checkpoints, as classes nnU-Net builds from plans.

Plans name a network by import path (``architecture.network_class_name``) and nnU-Net constructs it with
``input_channels``, ``num_classes``, ``deep_supervision`` and ``arch_kwargs``. Our networks declare
``supports_deep_supervision``; the SuPreM trainers read it and switch deep supervision off when it is False.
"""
from __future__ import annotations

import importlib
import pydoc
from dataclasses import dataclass

from nnunet_suprem.nnunet_env import ConfigurationError


@dataclass(frozen=True)
class ReleasedArchitecture:
    """A released SuPreM backbone: the nnU-Net network that holds it, the released file, the network's head."""

    name: str
    network_class_name: str
    release_file: str

    def network_class(self) -> type:
        """The class (imports its module; ConfigurationError when an optional dependency is missing)."""
        module, name = self.network_class_name.rsplit(".", 1)
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as e:
            raise ConfigurationError(f"--arch {self.name}: {e}") from e

    @property
    def head(self) -> str:
        """Module path of the output layer (the class's ``key_to_head``), always new: sized for the target's classes."""
        return self.network_class().key_to_head

    def architecture_block(self) -> dict:
        """The ``architecture`` entry of an nnU-Net plans configuration."""
        return {"network_class_name": self.network_class_name,
                "arch_kwargs": self.network_class().plans_arch_kwargs(), "_kw_requires_import": []}


ARCHITECTURES = {a.name: a for a in (
    ReleasedArchitecture("unet", "nnunet_suprem.architectures.suprem_unet3d.SuPreMUNet3D",
                         "supervised_suprem_unet_2100.pth"),
    ReleasedArchitecture("segresnet", "nnunet_suprem.architectures.monai_networks.SuPreMSegResNet",
                         "supervised_suprem_segresnet_2100.pth"),
    ReleasedArchitecture("swinunetr", "nnunet_suprem.architectures.monai_networks.SuPreMSwinUNETR",
                         "supervised_suprem_swinunetr_2100.pth"),
)}
"""``import-suprem --arch`` choices."""


def supports_deep_supervision(network_class_name: str) -> bool:
    """False only for network classes that say so (``supports_deep_supervision = False``); nnU-Net's do not."""
    return bool(getattr(pydoc.locate(network_class_name), "supports_deep_supervision", True))
