"""SuPreM's U-Net (the Models Genesis "UNet3D") as a network nnU-Net builds from plans.

Module paths, and so state-dict keys, are those of the released backbone
(``supervised_suprem_unet_2100.pth`` without its ``module.backbone.`` prefix), e.g.
``down_tr64.ops.0.conv1.weight`` or ``up_tr64.up_conv.weight``:

- ``LUConv``: Conv3d (k 3, padding 1, bias) -> :class:`BatchStatisticsNorm3d` -> ReLU;
- encoder ``down_tr64/128/256/512``: two LUConvs each (1 -> 32 -> 64, 64 -> 64 -> 128, 128 -> 128 -> 256,
  256 -> 256 -> 512), max-pooling by 2 after each but the last;
- decoder ``up_tr256/128/64``: ConvTranspose3d(c, c, 2, stride 2), concatenation with the skip, two LUConvs
  (c + c/2 -> c/2 -> c/2);
- head ``out_tr.final_conv``: Conv3d(64, classes, 1), the only layer that depends on the target's classes.

Plans name it with ``network_class_name`` ``nnunet_suprem.architectures.suprem_unet3d.SuPreMUNet3D``; the topology
is fixed, and ``arch_kwargs`` only record its ``strides`` (as nnU-Net's U-Nets do, for tools that read them). Every
spatial size must be divisible by 8 (three poolings).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from nnunet_suprem.architectures.base import FixedTopologyNetwork


class BatchStatisticsNorm3d(_NormBase):
    """BatchNorm3d that always normalises with the statistics of the current batch, also in ``eval()``.

    This is SuPreM's (and Models Genesis') ``ContBatchNorm3d``: the released U-Net was trained and is used for
    inference this way, so its running statistics were never what normalised its features; swapping in
    running-statistics BatchNorm would change what the pre-trained layers compute. The running statistics are
    still updated in training (and kept under BatchNorm3d's key names, so the released keys load), but not in
    ``eval()``, so inference does not modify the network.

    It derives from ``_NormBase`` (BatchNorm's parameters, buffers and state-dict versioning), not from
    ``_BatchNorm``, so that ``SyncBatchNorm.convert_sync_batchnorm``, which nnU-Net applies before wrapping the
    network in DDP, leaves it alone: under DDP each rank normalises with its own batch, as one GPU does.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        track = self.training and self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, True, self.momentum, self.eps)


class LUConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = BatchStatisticsNorm3d(out_channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn1(self.conv1(x)))


class DownTransition(nn.Module):
    """Two LUConvs (``in -> 32 * 2^depth -> 64 * 2^depth``), then max-pooling unless ``pool`` is False."""

    def __init__(self, in_channels: int, depth: int, pool: bool = True):
        super().__init__()
        middle = 32 * 2 ** depth
        self.ops = nn.Sequential(LUConv(in_channels, middle), LUConv(middle, 2 * middle))
        self.maxpool = nn.MaxPool3d(2) if pool else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output for the next level, skip connection)."""
        skip = self.ops(x)
        return (self.maxpool(skip) if self.maxpool is not None else skip), skip


class UpTransition(nn.Module):
    """Transposed convolution ``c -> c`` (x2), concatenation with the skip (``c / 2``), two LUConvs to ``c / 2``."""

    def __init__(self, channels: int):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(channels, channels, kernel_size=2, stride=2)
        self.ops = nn.Sequential(LUConv(channels + channels // 2, channels // 2),
                                 LUConv(channels // 2, channels // 2))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), 1))


class OutputTransition(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.final_conv = nn.Conv3d(in_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


class SuPreMUNet3D(FixedTopologyNetwork, nn.Module):
    """SuPreM's U-Net (see module doc), with nnU-Net's constructor signature.

    ``input_channels`` other than 1 change only the first convolution (the weight transfer adapts the released
    one-channel weights). There is no deep supervision (:class:`FixedTopologyNetwork`); ``deep_supervision`` is
    accepted because nnU-Net passes it when building any network, and the network still returns one output.
    """

    strides = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    min_bottleneck_voxels = 2  # batch statistics of one patch (nnU-Net predicts one at a time)
    key_to_encoder = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
    key_to_stem = "down_tr64.ops.0"
    key_to_head = "out_tr"

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False,
                 strides: Sequence[Sequence[int]] = strides):
        self.check_strides(strides)
        super().__init__()
        self.down_tr64 = DownTransition(input_channels, 0)
        self.down_tr128 = DownTransition(64, 1)
        self.down_tr256 = DownTransition(128, 2)
        self.down_tr512 = DownTransition(256, 3, pool=False)
        self.up_tr256 = UpTransition(512)
        self.up_tr128 = UpTransition(256)
        self.up_tr64 = UpTransition(128)
        self.out_tr = OutputTransition(64, num_classes)
        self.input_channels = input_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_patch_size(x.shape[2:], "input")
        x, skip64 = self.down_tr64(x)
        x, skip128 = self.down_tr128(x)
        x, skip256 = self.down_tr256(x)
        x, _ = self.down_tr512(x)
        x = self.up_tr256(x, skip256)
        x = self.up_tr128(x, skip128)
        x = self.up_tr64(x, skip64)
        return self.out_tr(x)
