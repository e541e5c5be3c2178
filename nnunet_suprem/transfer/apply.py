"""Transfer into nnU-Net networks: build the target from plans, fill it, write a file nnU-Net accepts."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from nnunet_suprem.fileio import atomic_path
from nnunet_suprem.transfer.checkpoint import TRANSFER_METADATA_KEY, Checkpoint
from nnunet_suprem.transfer.command import DEFAULT_MIN_ENCODER_FRACTION
from nnunet_suprem.transfer.state_dict import TransferReport, require_encoder_fraction, transfer_state


def module_paths(network: nn.Module, attribute: str) -> tuple[str, ...]:
    """A network's ``key_to_encoder``/``key_to_stem``/``key_to_head`` (dynamic-network-architectures and our
    architectures declare them), each a module path or a tuple of paths; () when absent."""
    value = getattr(network, attribute, None)
    return (value,) if isinstance(value, str) else tuple(value or ())


def encoder_prefixes(network: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(encoder, stem) module paths; the encoder includes the stem and defaults to ``encoder``."""
    stem = module_paths(network, "key_to_stem")
    encoder = module_paths(network, "key_to_encoder") or ("encoder",)
    return encoder + tuple(p for p in stem if p not in encoder), stem


def transfer_checkpoint(checkpoint: Checkpoint, network: nn.Module, target_labels: dict[str, int] | None = None,
                        encoder_only: bool = False,
                        min_encoder_fraction: float = DEFAULT_MIN_ENCODER_FRACTION) -> tuple[dict, TransferReport]:
    """Fill ``network``'s state from ``checkpoint`` (nothing is loaded yet; call ``load_state_dict``).

    Segmentation heads (nnU-Net's ``seg_layers``, a network's ``key_to_head``) are taken over only when
    both sides are known to predict the same labels; otherwise they keep their fresh initialisation. Raises ValueError when less than
    ``min_encoder_fraction`` of the encoder would load.
    """
    encoder, stem = encoder_prefixes(network)
    same_labels = checkpoint.labels is not None and target_labels is not None and checkpoint.labels == target_labels
    state, report = transfer_state(checkpoint.state_dict, network, encoder_prefixes=encoder, stem_prefixes=stem,
                                   head_prefixes=module_paths(network, "key_to_head"), encoder_only=encoder_only,
                                   load_heads=same_labels, pretrained_keys=checkpoint.pretrained_keys)
    require_encoder_fraction(report, min_encoder_fraction, checkpoint.path)
    return state, report


def pretrained_names(network: nn.Module, report: TransferReport) -> list[str]:
    """Every state-dict name (aliases included) of the tensors the report says were loaded."""
    state = network.state_dict(keep_vars=True)
    loaded_ids = {id(state[k]) for k in report.loaded}
    return [name for name, tensor in state.items() if id(tensor) in loaded_ids]


def build_network_from_plans(plans: dict, dataset_json: dict, configuration: str) -> nn.Module:
    """The network nnU-Net's trainer builds for these plans and dataset (with deep supervision)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    if configuration not in plans["configurations"]:
        raise ValueError(f"configuration {configuration!r} is not in plans {plans.get('plans_name')!r}; "
                         f"available: {sorted(plans['configurations'])}")
    configuration_manager = plans_manager.get_configuration(configuration)
    return nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=True)


def write_nnunet_weights(path: str | os.PathLike, network: nn.Module, state: dict[str, torch.Tensor],
                         report: TransferReport, checkpoint: Checkpoint) -> Path:
    """Write ``{"network_weights": state, ...}`` (what ``nnUNetv2_train -pretrained_weights`` reads), atomically.

    The file also records which keys are pre-trained, so ``SuPreMFinetuneTrainer`` treats the
    freshly initialised rest (e.g. the decoder after an encoder-only transfer) as new layers.
    """
    payload = {
        "network_weights": state,
        TRANSFER_METADATA_KEY: {
            "pretrained_keys": pretrained_names(network, report),
            "source": os.path.abspath(checkpoint.path),
            "source_format": checkpoint.format,
            "source_labels": checkpoint.labels,
            "report": report.as_dict(),
        },
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
