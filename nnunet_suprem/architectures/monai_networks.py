"""SuPreM's SegResNet and Swin UNETR through MONAI (the optional extra: ``pip install nnunet-suprem[monai]``).

Both are MONAI's classes with the released hyper-parameters and nnU-Net's constructor signature; their state-dict
keys are MONAI's, which are those of the released files (``supervised_suprem_segresnet_2100.pth``: MONAI's
SegResNet under ``module.``; ``supervised_suprem_swinunetr_2100.pth``: SuPreM's copy of MONAI's SwinUNETR under
``module.backbone.``). No key renaming is needed: checked with MONAI 1.6.1 (the keys of SuPreM's SwinUNETR copy,
the releases' parameter counts 4.70M and 62.19M).
"""
from __future__ import annotations

from typing import Sequence

import torch

from nnunet_suprem.architectures.base import FixedTopologyNetwork

try:
    from monai.networks.nets import SegResNet, SwinUNETR
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"SuPreM's SegResNet and Swin UNETR need MONAI: pip install 'nnunet-suprem[monai]' ({e})") from e


class MonaiNetwork(FixedTopologyNetwork):
    """The input-size check with a clear error, before MONAI's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_patch_size(x.shape[2:], "input")
        return super().forward(x)


class SuPreMSegResNet(MonaiNetwork, SegResNet):
    """MONAI's SegResNet as SuPreM pre-trained it: blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1), 16 filters.

    Head: ``conv_final.2`` (the output convolution; the GroupNorm before it belongs to the backbone).
    """

    strides = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    key_to_encoder = ("convInit", "down_layers")
    key_to_stem = "convInit"
    key_to_head = "conv_final.2"

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False,
                 strides: Sequence[Sequence[int]] = strides):
        self.check_strides(strides)
        super().__init__(spatial_dims=3, init_filters=16, in_channels=input_channels, out_channels=num_classes,
                         blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
        self.input_channels = input_channels


class SuPreMSwinUNETR(MonaiNetwork, SwinUNETR):
    """MONAI's SwinUNETR as SuPreM pre-trained it: feature size 48, no dropout, v0.9 patch merging.

    The input feeds both the Swin transformer's patch embedding and ``encoder1``, so both are stems (adapted for
    other channel counts). Head: ``out``.
    """

    strides = ((2, 2, 2),) * 5
    min_bottleneck_voxels = 2  # encoder10's instance norm in training
    key_to_encoder = ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10")
    key_to_stem = ("swinViT.patch_embed", "encoder1")
    key_to_head = "out"

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False,
                 strides: Sequence[Sequence[int]] = strides):
        self.check_strides(strides)
        super().__init__(in_channels=input_channels, out_channels=num_classes, feature_size=48)
        self.input_channels = input_channels
