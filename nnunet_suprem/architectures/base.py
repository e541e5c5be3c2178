"""What nnU-Net needs from a network with a fixed topology, as a mixin for ``nn.Module`` classes."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from nnunet_suprem.planning.topology import downsampling_per_axis

COUNTED_LAYERS = (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)
"""Layers whose outputs nnU-Net's memory estimate counts (its U-Nets count convolution outputs)."""


class FixedTopologyNetwork:
    """Mixin for networks nnU-Net builds from plans whose topology is fixed by a released checkpoint.

    - ``strides``: downsampling per level; recorded in the plans as ``arch_kwargs.strides`` (as nnU-Net's U-Nets do)
      and checked on construction. Every input axis must be a multiple of their product.
    - ``supports_deep_supervision = False``: the SuPreM trainers switch deep supervision off; nnU-Net's own trainer
      gets a clear error where it would switch it on (``network.decoder.deep_supervision``).
    - ``input_channels``: set by the subclass' constructor (for the memory estimate).
    - ``key_to_encoder``, ``key_to_stem``, ``key_to_head``: module paths the weight transfer uses (encoder-only
      selection, input-channel adaptation, the output layer that is re-initialised for new classes).
    """
    key_to_head: str

    supports_deep_supervision = False
    strides: tuple[tuple[int, ...], ...]
    min_bottleneck_voxels = 1
    """Voxels the deepest level needs (2 when a norm there normalises over one sample's voxels in training or
    inference, which needs more than one value)."""
    input_channels: int

    @classmethod
    def plans_arch_kwargs(cls) -> dict:
        """``arch_kwargs`` of the plans' ``architecture`` block."""
        return {"strides": [list(level) for level in cls.strides]}

    @classmethod
    def check_strides(cls, strides: Sequence[Sequence[int]]) -> None:
        if [list(level) for level in strides] != [list(level) for level in cls.strides]:
            raise ValueError(f"{cls.__name__} has a fixed topology: strides must be "
                             f"{[list(level) for level in cls.strides]}, got {strides}")

    @classmethod
    def check_patch_size(cls, size: Sequence[int], what: str = "patch") -> None:
        """ValueError unless every axis is a positive multiple of the network's total downsampling."""
        divisors = downsampling_per_axis(cls.strides)
        if (len(size) != len(divisors) or any(s < d or s % d for s, d in zip(size, divisors))
                or np.prod([s // d for s, d in zip(size, divisors)]) < cls.min_bottleneck_voxels):
            deepest = f" and at least {cls.min_bottleneck_voxels} voxels at the deepest level" \
                if cls.min_bottleneck_voxels > 1 else ""
            raise ValueError(f"{cls.__name__} needs {len(divisors)}D {what} sizes that are multiples of {divisors} "
                             f"(its downsampling){deepest}, got {tuple(int(s) for s in size)}")

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """nnU-Net's memory estimate for a patch (see :func:`counted_feature_map_size`)."""
        self.check_patch_size(input_size)
        return counted_feature_map_size(self, self.input_channels, input_size)

    def __getattr__(self, name: str):
        if name == "decoder":  # nnU-Net's trainer switches deep supervision through network.decoder
            raise AttributeError(f"{type(self).__name__} has no deep supervision (and no nnU-Net decoder): train it "
                                 f"with a trainer that switches deep supervision off, e.g. -tr SuPreMFinetuneTrainer")
        return super().__getattr__(name)


def counted_feature_map_size(network: nn.Module, input_channels: int, input_size: Sequence[int]) -> np.int64:
    """Output elements of the convolutions and linear layers for one sample: nnU-Net's memory estimate for any
    network, measured by a forward pass with every tensor on the meta device (no memory, no computation, and the
    network itself is left untouched)."""
    total = []
    hooks = [m.register_forward_hook(lambda module, args, out: total.append(out.numel()))
             for m in network.modules() if isinstance(m, COUNTED_LAYERS)]
    tensors = {**dict(network.named_parameters()), **dict(network.named_buffers())}
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    try:
        with torch.no_grad():
            torch.func.functional_call(network, meta, (torch.empty(1, input_channels, *input_size, device="meta"),))
    finally:
        for hook in hooks:
            hook.remove()
    return np.int64(sum(total))
