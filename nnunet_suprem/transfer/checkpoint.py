"""Reading pre-trained weights from the checkpoint formats users bring, without unpickling code.

Every file is opened with ``torch.load(..., weights_only=True)``: tensors and plain Python
containers only, so a malicious or corrupt file cannot run code. nnU-Net's own checkpoints
also hold NumPy scalars in their training log; the few NumPy types needed for that are
allow-listed with ``torch.serialization.safe_globals`` (the mechanism torch documents for
this), nothing else.

Formats (one filter function each, as timm does):

- nnU-Net ``checkpoint_*.pth``: ``{"network_weights": state_dict, "init_args": {...}, ...}``;
  the label names come from ``init_args["dataset_json"]``, else from the model folder's ``dataset.json``
  (``<model folder>/fold_X/checkpoint_*.pth``) or a ``dataset.json`` beside the file;
- a file written by ``nnunet-suprem transfer-weights``: an nnU-Net checkpoint plus
  ``"nnunet_suprem_transfer": {"pretrained_keys": [...], "labels": {...}, "pretrained_rows": [...]}`` (only those
  keys are pre-trained; ``labels`` are its outputs', of which only the ``pretrained_rows`` classes are);
  both may hold an orientation record (``nnunet_suprem.orientation.ORIENTATION_KEY``: where left-right lies in the
  network's patches), which decides what becomes of left/right classes' output rows;
- nnssl checkpoints (MIC-DKFZ's self-supervised ResEnc-L, :mod:`~nnunet_suprem.transfer.nnssl`):
  ``{"network_weights": ..., "nnssl_adaptation_plan": {...}, ...}``; only the tensors under the plan's
  ``key_to_encoder`` / ``key_to_stem`` are pre-trained, and those module paths are mapped onto the target network's;
  nnssl SparK checkpoints (``{"network_weights": ..., "spark_weights": ..., ...}``, no plan): the same for the
  encoder and stem every SparK trainer names (their reconstruction decoder is not pre-trained for segmentation);
- SuPreM / MONAI training checkpoints: ``{"net": state_dict, ...}`` or ``{"state_dict": ...}``,
  ``{"model": ...}``;
- the released SuPreM U-Net and Swin UNETR: ``{"net": ...}`` holding the CLIP-driven Universal Model, whose
  backbone keys (``module.backbone.<name>``) become ``<name>``; its head (``organ_embedding``, ``text_to_vision.*``,
  ``controller.*``, ``precls_conv.*``, ``GAP.*``, and the backbone's own output layer ``backbone.out_tr.*`` or
  ``backbone.out.*``) keeps its names, so no network takes it and transfer reports list it as unused;
- a plain state dict ``{name: tensor}``.

Prefixes added by DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from nnunet_suprem.orientation import ORIENTATION_KEY
from nnunet_suprem.plans_safety import key_path
from nnunet_suprem.transfer.nnssl import (SPARK_ENCODER, encoder_weights, is_nnssl, is_spark_without_plan,
                                          read_adaptation_plan)

WRAPPER_KEYS = ("network_weights", "net", "state_dict", "model")
"""Keys under which training frameworks store the state dict, in the order they are tried."""
TRANSFER_METADATA_KEY = "nnunet_suprem_transfer"
STRIPPED_PREFIXES = ("module.", "_orig_mod.")

try:
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # NumPy < 1.26
    from numpy.core.multiarray import scalar as _numpy_scalar

_NUMPY_SAFE_GLOBALS = [np.dtype, _numpy_scalar,
                       *{type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")}]
"""NumPy scalars (nnU-Net's training log) and nothing else besides torch's own weights-only types."""


class UnreadableCheckpoint(ValueError):
    """The file is not a complete PyTorch checkpoint (truncated, e.g. by a kill while it was written, or another
    format), as opposed to one holding objects that ``weights_only`` refuses."""


@dataclass
class Checkpoint:
    """A state dict read from a file, with what the file says about it."""

    path: str
    state_dict: dict[str, torch.Tensor]
    format: str
    labels: dict[str, int] | None = None
    """Label names of the model's outputs, when the file records them (nnU-Net checkpoints)."""
    pretrained_keys: frozenset[str] | None = None
    """Keys that hold pre-trained values; None means all of them."""
    pretrained_rows: frozenset[str] | None = None
    """Classes of ``labels`` whose output rows hold pre-trained values; None means all of them."""
    declared_paths: dict[str, str] | None = None
    """The checkpoint's own ``key_to_encoder`` / ``key_to_stem`` (nnssl), moved onto the target network's paths."""
    orientation: dict | None = None
    """The orientation record the file holds (``nnunet_suprem.orientation.ORIENTATION_KEY``: SuPreMTrainer's
    checkpoints, transfer-weights outputs); None without one."""
    extra: dict = field(default_factory=dict)


def non_finite_tensors(content: object) -> list[str]:
    """Key paths (``network_weights.encoder.stem.weight``, ``optimizer_state.state.3.momentum_buffer``: list items
    and dict keys other than text by their repr) of the floating-point tensors in ``content`` (nested dicts, lists
    and tuples) that hold NaN or infinite values; a tensor saved under several names (aliases) by its first."""
    found, seen, stack = [], set(), [((), content)]
    while stack:  # not recursive: a weights-only pickle may nest deeper than Python's recursion limit
        where, value = stack.pop()
        if isinstance(value, torch.Tensor):
            if not (value.is_floating_point() or value.is_complex()) or value.layout != torch.strided:
                continue
            view = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape, value.stride())
            if view not in seen and not bool(torch.isfinite(value).all()):
                found.append(key_path(*where))
            seen.add(view)
        elif isinstance(value, (Mapping, list, tuple)):
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            stack.extend(((*where, key), item) for key, item in reversed(list(items)))
    return found


def _require_finite(path: str, content: object) -> object:
    bad = non_finite_tensors(content)
    if bad:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(f"{path}: refusing to load: {len(bad)} tensor(s) hold NaN or infinite values ({listed}); "
                         f"the weights are damaged (a diverged training or a corrupted file)")
    return content


def load_weights_only(path: str | os.PathLike) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors naming the file; a file whose
    tensors hold NaN or infinite values is refused too (no loader, report or training should take them)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        objects = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if not objects:  # not a pickle of objects: random bytes, another format
            raise UnreadableCheckpoint(f"{path}: not a readable PyTorch checkpoint (truncated or not a .pth "
                                       f"file?)") from e
        raise ValueError(f"{path}: refusing to load: the file holds Python objects other than weights, so it cannot "
                         f"be read with torch.load(weights_only=True) ({objects[0].split(' was not')[0]}). Re-save "
                         f"only the state dict (torch.save(model.state_dict(), ...)) from a trusted environment.") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:  # OSError: e.g. a zip cut mid-record
        raise UnreadableCheckpoint(f"{path}: not a readable PyTorch checkpoint (truncated or not a .pth file?): "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return _require_finite(path, content)


def strip_prefixes(state_dict: Mapping[str, torch.Tensor],
                   prefixes: tuple[str, ...] = STRIPPED_PREFIXES) -> dict[str, torch.Tensor]:
    """Remove DDP/``torch.compile`` prefixes (repeatedly, in any order) from every key."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _labels_beside(path: str) -> tuple[dict | None, str | None]:
    """(labels, file) of the ``dataset.json`` of the model folder a checkpoint is in (nnU-Net writes
    ``<model folder>/dataset.json`` and ``<model folder>/fold_X/checkpoint_*.pth``), or beside the file."""
    folder = os.path.dirname(os.path.abspath(path))
    for candidate in (os.path.join(folder, "dataset.json"), os.path.join(os.path.dirname(folder), "dataset.json")):
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as f:
                    labels = json.load(f).get("labels")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(labels, dict) and labels:
                return labels, candidate
    return None, None


def _filter_nnunet(path: str, content: Mapping) -> Checkpoint:
    dataset_json = (content.get("init_args") or {}).get("dataset_json") or {}
    metadata = content.get(TRANSFER_METADATA_KEY) or {}
    keys = metadata.get("pretrained_keys")
    rows = None
    if dataset_json.get("labels"):
        labels, labels_from = dataset_json["labels"], "the checkpoint's init_args"
    elif "labels" in metadata:  # written by transfer-weights: its own outputs, some rows pre-trained
        labels, labels_from = metadata["labels"], "the transfer metadata"
        rows = frozenset(metadata.get("pretrained_rows") or ())
    elif metadata:  # written by an older transfer-weights: heads were pre-trained only for identical labels
        labels, labels_from = metadata.get("source_labels"), "the transfer metadata"
    else:
        labels, labels_from = _labels_beside(path)
    return Checkpoint(path, strip_prefixes(content["network_weights"]), "nnU-Net checkpoint",
                      labels=labels, pretrained_keys=frozenset(keys) if keys is not None else None,
                      pretrained_rows=rows, orientation=content.get(ORIENTATION_KEY),
                      extra={"trainer_name": content.get("trainer_name"), "labels_from": labels_from, **metadata})


def _filter_wrapped(key: str) -> Callable[[str, Mapping], Checkpoint]:
    def read(path: str, content: Mapping) -> Checkpoint:
        return Checkpoint(path, strip_prefixes(content[key]), f"training checkpoint with weights under {key!r}",
                          extra={k: content[k] for k in ("epoch",) if k in content})
    return read


RELEASE_BACKBONE_PREFIX = "backbone."
RELEASE_OUTPUT_LAYERS = ("backbone.out_tr.", "backbone.out.")  # U-Net, Swin UNETR


def _filter_suprem_release(path: str, content: Mapping) -> Checkpoint:
    state, head = {}, []
    for key, value in strip_prefixes(content["net"]).items():
        if key.startswith(RELEASE_BACKBONE_PREFIX) and not key.startswith(RELEASE_OUTPUT_LAYERS):
            key = key[len(RELEASE_BACKBONE_PREFIX):]
        else:
            head.append(key)
        state[key] = value
    return Checkpoint(path, state, "SuPreM release (Universal Model under 'net')",
                      extra={"universal_model_head": head, **{k: content[k] for k in ("epoch",) if k in content}})


def _is_suprem_release(content: Mapping) -> bool:
    return any(k.startswith(RELEASE_BACKBONE_PREFIX) for k in strip_prefixes(content["net"]))


def _filter_nnssl(path: str, content: Mapping) -> Checkpoint:
    plan = read_adaptation_plan(path, content)
    weights = strip_prefixes(content["network_weights"])
    return Checkpoint(path, weights, f"nnssl checkpoint ({plan.arch_class_name}, encoder and stem)",
                      pretrained_keys=frozenset(encoder_weights(path, weights, plan.key_to_encoder, plan.key_to_stem)),
                      declared_paths={"key_to_encoder": plan.key_to_encoder, "key_to_stem": plan.key_to_stem},
                      extra={"nnssl_plan": plan, "trainer_name": content.get("trainer_name")})


def _filter_spark(path: str, content: Mapping) -> Checkpoint:
    weights = strip_prefixes(content["network_weights"])
    return Checkpoint(path, weights, "nnssl SparK checkpoint without adaptation plan (ResEncL: encoder and stem "
                                     "pre-trained; its reconstruction decoder is not loaded)",
                      pretrained_keys=frozenset(encoder_weights(path, weights, **SPARK_ENCODER)),
                      declared_paths=dict(SPARK_ENCODER),
                      extra={"nnssl_spark": True, "trainer_name": content.get("trainer_name")})


def _network_weights_filter(content: Mapping) -> Callable[[str, Mapping], Checkpoint]:
    """The reader of a file with ``network_weights``: nnssl's (with a plan, or SparK's), else nnU-Net's."""
    if is_nnssl(content):
        return _filter_nnssl
    return _filter_spark if is_spark_without_plan(content) else _filter_nnunet


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a state dict from any supported format (see module doc); a clear error for anything else."""
    path = os.fspath(path)
    content = load_weights_only(path)
    if _is_state_dict(content):
        return Checkpoint(path, strip_prefixes(content), "plain state dict")
    if isinstance(content, Mapping):
        for key in WRAPPER_KEYS:
            if key in content:
                if not _is_state_dict(content[key]):
                    raise ValueError(f"{path}: {key!r} does not hold a state dict ({{name: tensor}})")
                if key == "network_weights":
                    return _network_weights_filter(content)(path, content)
                if key == "net" and _is_suprem_release(content):
                    return _filter_suprem_release(path, content)
                return _filter_wrapped(key)(path, content)
        found = ", ".join(repr(k) for k in list(content)[:8])
        raise ValueError(f"{path}: no weights found: expected a state dict or a dict with one of "
                         f"{', '.join(map(repr, WRAPPER_KEYS))}; the file has keys {found}")
    raise ValueError(f"{path}: no weights found: the file holds a {type(content).__name__}, not a state dict")
