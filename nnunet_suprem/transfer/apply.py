"""Transfer into nnU-Net networks: build the target from plans, fill it, write a file nnU-Net accepts."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from nnunet_suprem.fileio import atomic_path
from nnunet_suprem.orientation import ORIENTATION_KEY, patch_orientation
from nnunet_suprem.transfer.checkpoint import TRANSFER_METADATA_KEY, Checkpoint
from nnunet_suprem.transfer.defaults import DEFAULT_MIN_ENCODER_FRACTION, DEFAULT_NOVEL_ROWS
from nnunet_suprem.transfer.head import (BACKGROUND, IGNORE_LABEL, LATERAL_EXCHANGED, HeadRows, HeadTransferRefused,
                                         lateral_rows, match_head_rows, orient_matches, same_labels)
from nnunet_suprem.transfer.nnssl import rename_modules
from nnunet_suprem.transfer.state_dict import (TransferReport, heads_without_bias, require_encoder_fraction,
                                              transfer_state)


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


def head_plan(checkpoint: Checkpoint, target_labels: dict | None, head_transfer: bool = True,
              novel_rows: str = DEFAULT_NOVEL_ROWS, target_orientation: dict | None = None) -> tuple[bool, HeadRows]:
    """(load the heads whole, which output rows to carry) for a checkpoint and the target's labels.

    Heads are taken whole when both label sets are identical (and every row of the checkpoint's head is
    pre-trained) and no left/right class changes its row; otherwise the rows of classes both know are carried
    (:func:`match_head_rows`; ``novel_rows``: how the others start, see :mod:`nnunet_suprem.transfer.head`), those
    of left/right classes as :func:`lateral_rows` decides from the checkpoint's orientation record and
    ``target_orientation`` (the target's, :func:`~nnunet_suprem.orientation.training_orientation`; None: unknown).
    With ``head_transfer`` off, or labels unknown on either side, every head is re-initialised; the note says why.
    """
    if not head_transfer:
        return False, HeadRows(note="head transfer turned off")
    if checkpoint.labels is None or target_labels is None:
        return False, HeadRows(note="the checkpoint records no labels" if checkpoint.labels is None
                               else "the target's labels are unknown")
    known = checkpoint.pretrained_rows
    left_right = lateral_rows(patch_orientation(checkpoint.orientation), patch_orientation(target_orientation))
    if same_labels(checkpoint.labels, target_labels) and (known is None or
                                               known >= {n for n in target_labels if n != IGNORE_LABEL}):
        names = [n for n in target_labels if n != IGNORE_LABEL]
        classes = {n: n for n in names if n != BACKGROUND}
        oriented, note = orient_matches(classes, classes, *left_right)
        if oriented == classes:
            return True, HeadRows(carried={n: n for n in names}, target_count=len(names), source_count=len(names),
                                  note="labels identical to the checkpoint's: heads loaded whole",
                                  left_right=left_right[0] if note else "", left_right_note=note)
    try:
        return False, match_head_rows(checkpoint.labels, target_labels, known, novel_rows, left_right)
    except HeadTransferRefused as e:
        return False, HeadRows(note=f"refused: {e}")


def transfer_checkpoint(checkpoint: Checkpoint, network: nn.Module, target_labels: dict[str, int] | None = None,
                        encoder_only: bool = False, min_encoder_fraction: float = DEFAULT_MIN_ENCODER_FRACTION,
                        head_transfer: bool = True, novel_rows: str = DEFAULT_NOVEL_ROWS,
                        target_orientation: dict | None = None,
                        image_channels: int | None = None) -> tuple[dict, TransferReport]:
    """Fill ``network``'s state from ``checkpoint`` (nothing is loaded yet; call ``load_state_dict``).

    Segmentation heads (nnU-Net's ``seg_layers``, every deep-supervision output, or a network's ``key_to_head``)
    are taken whole when both sides predict the same labels; otherwise, with ``head_transfer``, the output rows of
    the background and of every target class the checkpoint knows (same canonical name; label values may differ)
    are carried; the novel classes' rows start from the background row (``novel_rows="background"``) or keep the
    network's initialisation (``"init"``) (:func:`head_plan`). Left/right classes' rows are kept, exchanged or
    new depending on where left-right lies in the checkpoint's patches and in the target's
    (``target_orientation``, the orientation record of the target's preprocessed cases; None: unknown, so they are
    new). An
    encoder-only transfer takes no head. Raises ValueError when less than ``min_encoder_fraction`` of the encoder
    would load. ``image_channels`` (:func:`image_channel_count`): how many network inputs are image channels; a
    cascade's previous-stage segmentation channels after them start with zero first-convolution weights.
    """
    encoder, stem = encoder_prefixes(network)
    checkpoint = onto_network_paths(checkpoint, network)
    head_prefixes = module_paths(network, "key_to_head")
    biasless = heads_without_bias(network.state_dict(), head_prefixes)
    if biasless and novel_rows == "background":  # a copy of the background row could not be lowered below it
        novel_rows = "init"
    load_heads, head = head_plan(checkpoint, target_labels, head_transfer and not encoder_only, novel_rows,
                                 target_orientation)
    if encoder_only and head_transfer:
        head.note = "encoder-only transfer"
    state, report = transfer_state(checkpoint.state_dict, network, encoder_prefixes=encoder, stem_prefixes=stem,
                                   head_prefixes=head_prefixes, encoder_only=encoder_only,
                                   load_heads=load_heads, head_rows=head, pretrained_keys=checkpoint.pretrained_keys,
                                   image_channels=image_channels)
    if biasless and head.new and head.rows:
        report.head += (f" (novel rows keep the network's initialisation: the head {biasless[0]} has no bias to "
                        f"start them below the background)")
    require_encoder_fraction(report, min_encoder_fraction, checkpoint.path)
    return state, report


def image_channel_count(dataset_json: Mapping) -> int:
    """The image channels of a dataset (nnU-Net's ``channel_names``, or ``modality`` of older dataset.json files);
    a cascade's later stage has its previous stage's one-hot segmentation as further inputs."""
    return len(dataset_json["modality"] if "modality" in dataset_json else dataset_json["channel_names"])


def onto_network_paths(checkpoint: Checkpoint, network: nn.Module) -> Checkpoint:
    """The checkpoint with the module paths it declares (``declared_paths``, e.g. nnssl's ``key_to_encoder``) moved
    onto the network's paths of the same name; unchanged when it declares none."""
    if not checkpoint.declared_paths:
        return checkpoint
    renames = [(old, path) for attribute, old in checkpoint.declared_paths.items()
               for path in module_paths(network, attribute)[:1]]
    keys = checkpoint.pretrained_keys
    return dataclasses.replace(
        checkpoint, state_dict=rename_modules(checkpoint.state_dict, renames), declared_paths=None,
        pretrained_keys=None if keys is None else frozenset(rename_modules(dict.fromkeys(keys), renames)))


def pretrained_names(network: nn.Module, report: TransferReport, with_carried_rows: bool = False) -> list[str]:
    """Every state-dict name (aliases included) of the tensors the report says were loaded (and, with
    ``with_carried_rows``, of the heads with some output rows carried)."""
    state = network.state_dict(keep_vars=True)
    loaded_ids = {id(state[k]) for k in [*report.loaded, *(report.rows_carried if with_carried_rows else ())]}
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


def weights_orientation(checkpoint: Checkpoint, report: TransferReport, target_orientation: dict | None) -> dict | None:
    """The orientation record of transferred weights: the checkpoint's, or the target's when the rows of left/right
    classes were exchanged for it (they now fit the target's patches; loading the weights into that target must not
    exchange them back)."""
    return target_orientation if report.left_right == LATERAL_EXCHANGED else checkpoint.orientation


def write_nnunet_weights(path: str | os.PathLike, network: nn.Module, state: dict[str, torch.Tensor],
                         report: TransferReport, checkpoint: Checkpoint, labels: dict | None = None,
                         orientation: dict | None = None) -> Path:
    """Write ``{"network_weights": state, ...}`` (what ``nnUNetv2_train -pretrained_weights`` reads), atomically.

    The file also records which keys are pre-trained, so ``SuPreMFinetuneTrainer`` treats the
    freshly initialised rest (e.g. the decoder after an encoder-only transfer) as new layers, the
    ``labels`` of the network's outputs with the classes whose output rows are pre-trained
    (``pretrained_rows``), so that loading the file carries those rows again and no others, and the
    ``orientation`` record of its weights (:func:`weights_orientation`) as checkpoints do.
    """
    payload = {
        "network_weights": state,
        TRANSFER_METADATA_KEY: {
            "pretrained_keys": pretrained_names(network, report, with_carried_rows=True),
            "labels": labels,
            "pretrained_rows": list(report.carried_classes),
            "source": os.path.abspath(checkpoint.path),
            "source_format": checkpoint.format,
            "source_labels": checkpoint.labels,
            "report": report.as_dict(),
        },
    }
    if orientation is not None:
        payload[ORIENTATION_KEY] = orientation
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
