"""Copying pre-trained weights into a new network: small functions on state dicts (timm/MONAI style).

:func:`transfer_state` fills a target network's state dict from a checkpoint's and returns a
:class:`TransferReport` that accounts for every tensor: loaded, adapted, skipped (and why),
shape-mismatched, and checkpoint keys nothing used. nnU-Net's U-Nets register some tensors
under several names (``encoder.*`` again as ``decoder.encoder.*``, ``convs.0.conv`` as
``convs.0.all_modules.0``); names of one tensor are grouped by identity and reported once
under the first name, so a selection such as "encoder only" covers every alias.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from nnunet_suprem.transfer.head import HeadRows, carry_rows, describe

HEAD_MARKERS = (".seg_layers.",)
"""Key fragments of segmentation heads (nnU-Net's 1x1 output convolutions), re-initialised by default."""
DECODER_STAGE = re.compile(r"^decoder\.(stages|transpconvs|seg_layers)\.(\d+)\.")
"""Per-stage modules of nnU-Net's UNetDecoder (``decoder.encoder.*`` is the encoder); index 0 is the deepest."""
NOT_PRETRAINED = "in the checkpoint but not pre-trained there: initialised fresh"
NOT_IN_CHECKPOINT = "not in the checkpoint"
LISTED_PROBLEMS = 10
"""Problems an error message lists before saying how many more there are."""
TRANSPOSED_CONV = re.compile(r"^decoder\.transpconvs\.(\d+)\.weight$")


def not_in_checkpoint(key: str, why: str) -> bool:
    """Whether a tensor was skipped because the checkpoint lacks it (a :meth:`TransferReport.problems` filter)."""
    return why == NOT_IN_CHECKPOINT


@dataclass
class TransferReport:
    """What :func:`transfer_state` did with each tensor of the target network (first name of each tensor)."""

    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    """Loaded after changing the number of input channels: key -> rule applied."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Kept as initialised: key -> reason."""
    mismatched: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    """Same name, incompatible shape: key -> (checkpoint shape, target shape)."""
    unused: list[str] = field(default_factory=list)
    """Checkpoint keys that no target tensor took."""
    encoder_loaded_fraction: float = 0.0
    """Share of the encoder's parameters (by element count) that were loaded."""
    rows_carried: dict[str, str] = field(default_factory=dict)
    """Segmentation heads with some output rows carried and the others new: key -> which rows. Not in ``loaded``:
    for the fine-tuning schedule such a head is a new layer."""
    head: str = ""
    """Class-aware head transfer: which classes' output rows were carried, which are new, or why none were."""
    carried_classes: dict[str, str] = field(default_factory=dict)
    """Target class -> checkpoint class whose output rows it took (background included)."""
    new_classes: list[str] = field(default_factory=list)
    """Target classes whose output rows are freshly initialised."""
    left_right: str = ""
    """What became of the rows of left/right classes: kept, exchanged or new (``transfer.head.lateral_rows``); empty
    when no carried row is lateral."""
    left_right_note: str = ""
    """Which left/right classes that concerns, and why."""

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        rows = f", {len(self.rows_carried)} with output rows carried" if self.rows_carried else ""
        return (f"{len(self.loaded)} tensors loaded ({len(self.adapted)} adapted){rows}, {len(self.skipped)} skipped, "
                f"{len(self.mismatched)} shape-mismatched, {len(self.unused)} checkpoint keys unused; "
                f"{self.encoder_loaded_fraction:.1%} of the encoder loaded")

    def entries(self) -> list[tuple[str, str]]:
        """``(kind, line)`` for the log: the summary (kind ``"summary"``), the head transfer and what became of
        left/right rows (``"head"``), then every key with its fate (kind ``"loaded"``, ``"rows"``, ``"skipped"``,
        ``"mismatched"`` or ``"unused"``)."""
        out = [("summary", f"Weight transfer: {self.summary()}")]
        if self.head:
            out.append(("head", f"Head transfer: {self.head}"))
        if self.left_right_note:
            out.append(("head", f"Left and right: {self.left_right_note}"))
        out += [("loaded", f"  loaded      {k}" + (f"  [{self.adapted[k]}]" if k in self.adapted else ""))
                for k in self.loaded]
        out += [("rows", f"  rows        {k}  ({rows})") for k, rows in self.rows_carried.items()]
        out += [("skipped", f"  skipped     {k}  ({why})") for k, why in self.skipped.items()]
        out += [("mismatched", f"  mismatched  {k}  checkpoint {tuple(a)} vs network {tuple(b)}")
                for k, (a, b) in self.mismatched.items()]
        out += [("unused", f"  unused      {k}") for k in self.unused]
        return out

    def lines(self, loaded: bool = True) -> list[str]:
        """Every key with its fate, for logs; without ``loaded`` the keys that loaded are left out."""
        return [line for kind, line in self.entries() if loaded or kind != "loaded"]

    def problems(self, skipped: Callable[[str, str], bool] = not_in_checkpoint) -> list[str]:
        """``key: what is wrong`` for each shape-mismatched tensor, then for each skipped one that ``skipped(key,
        reason)`` selects (by default those the checkpoint lacks)."""
        return ([f"{k}: checkpoint {tuple(a)} vs network {tuple(b)}" for k, (a, b) in self.mismatched.items()]
                + [f"{k}: {why}" for k, why in self.skipped.items() if skipped(k, why)])

    def problem_listing(self, skipped: Callable[[str, str], bool] = not_in_checkpoint) -> str:
        """The first :data:`LISTED_PROBLEMS` of :meth:`problems`, an indented line each, and how many more."""
        problems = self.problems(skipped)
        listed = "\n".join(f"  {p}" for p in problems[:LISTED_PROBLEMS])
        more = len(problems) - LISTED_PROBLEMS
        return listed + (f"\n  ... and {more} more" if more > 0 else "")


def tensor_names(state_dict: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Names grouped by tensor identity, in state-dict order (pass ``module.state_dict(keep_vars=True)``)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in state_dict.items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def adapt_input_conv(weight: torch.Tensor, in_channels: int, image_channels: int | None = None) -> torch.Tensor:
    """First-convolution weights ``[out, c, *k]`` for ``in_channels`` inputs instead of ``c``.

    Rule: when ``in_channels`` is a multiple of ``c``, the weights are repeated and scaled by
    ``c / in_channels`` (each input channel keeps its own filters); otherwise every new channel
    gets the sum over the old channels divided by ``in_channels`` (to 1 channel: the sum).
    Both keep the layer's response to an image fed identically to every channel, so the
    pre-trained features start where they were.

    ``image_channels`` below ``in_channels`` (a cascade's later stage: the image channels, then the previous
    stage's one-hot segmentation): the rule applies to the image channels and the segmentation channels start
    at zero, so the layer's response to the image is the pre-trained one.
    """
    if image_channels is not None and image_channels < in_channels:
        zeros = weight.new_zeros(weight.shape[0], in_channels - image_channels, *weight.shape[2:])
        return torch.cat([adapt_input_conv(weight, image_channels), zeros], dim=1)
    source_channels = weight.shape[1]
    if source_channels == in_channels:
        return weight
    if in_channels % source_channels == 0:
        repeats = in_channels // source_channels
        return weight.repeat(1, repeats, *[1] * (weight.ndim - 2)) / repeats
    shape = list(weight.shape)
    shape[1] = in_channels
    return (weight.sum(dim=1, keepdim=True) / in_channels).expand(shape).clone()


def input_conv_rule(source_channels: int, in_channels: int, image_channels: int | None = None) -> str:
    """How :func:`adapt_input_conv` maps ``source_channels`` onto ``in_channels``, for the transfer report."""
    images = in_channels if image_channels is None else min(image_channels, in_channels)
    rule = "" if images == source_channels else \
        " (repeated and rescaled)" if images % source_channels == 0 else " (summed and spread)"
    if images == in_channels:
        return f"input channels {source_channels} -> {in_channels}{rule}"
    return (f"input channels {source_channels} -> {images} image{rule} + {in_channels - images} previous-stage "
            f"segmentation channels starting at zero")


def decoder_upsampling(state: Mapping[str, torch.Tensor]) -> list[tuple[int, ...]]:
    """Upsampling strides of an nnU-Net decoder's stages counted from the full-resolution end (entry ``l``: into
    level ``l``, 0 = full resolution), read from its transposed convolutions (kernel = stride); [] without one."""
    strides = {int(m.group(1)): tuple(v.shape[2:]) for k, v in state.items() if (m := TRANSPOSED_CONV.match(k))}
    return [strides[i] for i in sorted(strides, reverse=True)]


def decoder_source_key(key: str, source_up: list[tuple[int, ...]],
                       target_up: list[tuple[int, ...]]) -> tuple[str | None, str]:
    """The checkpoint key to fill target ``key`` from: ``(key, "")`` outside nnU-Net's decoder stages, else the
    same module of the checkpoint's decoder stage at the same resolution level, counted from full resolution
    (indices count from the deepest stage, so they differ between depths), or ``(None, reason)`` when the
    checkpoint has no stage there or the upsampling strides from full resolution to that level differ."""
    match = DECODER_STAGE.match(key)
    if match is None or not target_up:
        return key, ""
    level = len(target_up) - 1 - int(match.group(2))
    if level >= len(source_up):
        return None, f"decoder stage at resolution level {level}: the checkpoint's decoder has no such level"
    if source_up[:level + 1] != target_up[:level + 1]:
        return None, (f"decoder stage at resolution level {level}: upsampling strides from full resolution "
                      f"{source_up[:level + 1]} in the checkpoint, {target_up[:level + 1]} here")
    index = len(source_up) - 1 - level
    return f"decoder.{match.group(1)}.{index}.{key[match.end():]}", ""


def under_any(key: str, prefixes: Iterable[str]) -> bool:
    """Whether ``key`` is one of the module paths ``prefixes`` or inside one."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_head_key(key: str, head_prefixes: tuple[str, ...] = ()) -> bool:
    """Whether a state-dict key belongs to a segmentation head (``HEAD_MARKERS``, or under ``head_prefixes``)."""
    return any(m in key for m in HEAD_MARKERS) or under_any(key, head_prefixes)


def heads_without_bias(state_dict: Mapping[str, torch.Tensor], head_prefixes: tuple[str, ...] = ()) -> list[str]:
    """The head modules (``<module>.weight`` keys) that have no ``<module>.bias``."""
    return [key[:-len(".weight")] for key in state_dict
            if key.endswith(".weight") and is_head_key(key, head_prefixes) and key[:-len("weight")] + "bias"
            not in state_dict]


def transfer_state(source: Mapping[str, torch.Tensor], target: nn.Module, *, encoder_prefixes: tuple[str, ...],
                   stem_prefixes: tuple[str, ...] = (), head_prefixes: tuple[str, ...] = (),
                   encoder_only: bool = False, load_heads: bool = False, head_rows: HeadRows | None = None,
                   pretrained_keys: Iterable[str] | None = None,
                   image_channels: int | None = None) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """The target's full state dict with tensors taken from ``source`` where names and shapes allow.

    - ``encoder_prefixes``: module paths of the encoder (e.g. nnU-Net's ``key_to_encoder``);
      with ``encoder_only`` nothing else is taken.
    - ``stem_prefixes``: where the first convolution lives; its weight is adapted with
      :func:`adapt_input_conv` when only the number of input channels differs (``image_channels``: how many of the
      target's inputs are image channels, the rest being a cascade's previous-stage segmentation; None: all).
    - segmentation heads (``HEAD_MARKERS``, or under ``head_prefixes``) keep their fresh initialisation
      unless ``load_heads`` (taken whole) or ``head_rows`` (class-aware: :func:`carry_head_rows`).
    - ``pretrained_keys``: only these source keys count as pre-trained (None: all).
    - nnU-Net decoder stages are matched by resolution level and structure (:func:`decoder_source_key`), not by
      index.

    Returns the state dict (every name of the target, aliases included, so
    ``target.load_state_dict(state)`` is strict) and the report. Nothing is modified in place.
    """
    source_up = decoder_upsampling(source)
    not_pretrained: set[str] = set()
    if pretrained_keys is not None:
        keep = set(pretrained_keys)
        not_pretrained = set(source) - keep
        source = {k: v for k, v in source.items() if k in keep}
    target_state = target.state_dict(keep_vars=True)
    target_up = decoder_upsampling(target_state)
    state = {name: tensor.detach().clone() for name, tensor in target_state.items()}
    report = TransferReport()
    used: set[str] = set()
    encoder_total = encoder_loaded = 0
    head_keys: list[str] = []
    for names in tensor_names(target_state):
        key, wanted = names[0], target_state[names[0]]
        in_encoder = under_any(key, encoder_prefixes)
        if in_encoder and wanted.is_floating_point():
            encoder_total += wanted.numel()
        candidates = [decoder_source_key(n, source_up, target_up) for n in names]
        present = [k for k, _ in candidates if k in source]
        found = present[0] if present else None
        is_head = any(is_head_key(n, head_prefixes) for n in names)
        if is_head:
            head_keys.append(key)
        if is_head and not load_heads:
            if head_rows is None or not head_rows.rows:
                report.skipped[key] = "segmentation head: re-initialised for the new classes"
            elif found is None:
                report.skipped[key] = "segmentation head: not in the checkpoint, re-initialised"
            elif carry_head_rows(key, names, source[found], wanted, head_rows, state, report):
                used.update(present)
            continue
        if encoder_only and not in_encoder:
            report.skipped[key] = "outside the encoder (encoder-only transfer)"
            continue
        if found is None:
            report.skipped[key] = next((why for k, why in candidates if k is None),
                                       NOT_PRETRAINED if any(k in not_pretrained for k, _ in candidates)
                                       else NOT_IN_CHECKPOINT)
            continue
        value = source[found]
        if value.shape != wanted.shape:
            if (under_any(key, stem_prefixes) and value.ndim == wanted.ndim >= 3 and value.shape[0] ==
                    wanted.shape[0] and value.shape[2:] == wanted.shape[2:]):
                report.adapted[key] = input_conv_rule(value.shape[1], wanted.shape[1], image_channels)
                value = adapt_input_conv(value, wanted.shape[1], image_channels)
            else:
                report.mismatched[key] = (list(value.shape), list(wanted.shape))
                continue
        for name in names:
            state[name] = value.detach().to(device=wanted.device, dtype=wanted.dtype).clone()
        report.loaded.append(key)
        used.update(present)
        if in_encoder and wanted.is_floating_point():
            encoder_loaded += wanted.numel()
    report.unused = [k for k in source if k not in used]
    if head_rows is not None:
        report_head(report, head_rows, head_keys, whole=load_heads)
    report.encoder_loaded_fraction = encoder_loaded / encoder_total if encoder_total else 0.0
    return state, report


def report_head(report: TransferReport, head: HeadRows, head_keys: list[str], whole: bool) -> None:
    """Record in ``report`` which classes' output rows the head tensors ``head_keys`` took from the checkpoint."""
    carried = [k for k in head_keys if k in report.loaded or k in report.rows_carried]
    if (head.rows or whole) and not carried:
        report.head = "output rows not carried (no head tensor of the checkpoint fits); every row initialised fresh"
        return
    report.left_right, report.left_right_note = head.left_right, head.left_right_note
    if head.rows or whole:
        report.carried_classes, report.new_classes = dict(head.carried), list(head.new)
        report.head = head.note if whole else describe(head)
        if len(carried) < len(head_keys):
            report.head += f" ({len(head_keys) - len(carried)} of {len(head_keys)} head tensors re-initialised)"
    else:
        report.head = describe(head)


def carry_head_rows(key: str, names: list[str], value: torch.Tensor, wanted: torch.Tensor, head: HeadRows,
                    state: dict[str, torch.Tensor], report: TransferReport) -> bool:
    """Fill the head tensor ``key`` (and its aliases ``names``) in ``state`` with the rows ``head`` carries from the
    checkpoint's ``value``; record it in ``report``. A head whose every row is carried counts as loaded
    (pre-trained); one with new rows is listed under ``rows_carried``. False (kept fresh, reason in ``skipped``)
    when the tensor does not have the rows the labels describe."""
    if value.shape[0] != head.source_count or wanted.shape[0] != head.target_count:
        report.skipped[key] = (f"segmentation head: {value.shape[0]} output rows in the checkpoint and "
                               f"{wanted.shape[0]} here, but the labels describe {head.source_count} and "
                               f"{head.target_count}; re-initialised")
        return False
    try:
        rows = carry_rows(value, wanted, head.rows, head.background_row)
    except ValueError:  # the rows themselves differ (another number of features): not this head's checkpoint
        report.mismatched[key] = (list(value.shape), list(wanted.shape))
        return False
    for name in names:
        state[name] = rows.clone()
    identity = value.shape == wanted.shape and all(t == s for t, s in head.rows.items())
    if head.complete:
        report.loaded.append(key)
        if not identity:
            report.adapted[key] = f"output rows {[head.rows[t] for t in sorted(head.rows)]} of the checkpoint's " \
                                  f"{value.shape[0]}, for the target's classes"
    else:
        new = sorted(set(range(wanted.shape[0])) - set(head.rows))
        report.rows_carried[key] = f"rows {sorted(head.rows)} from checkpoint rows " \
                                   f"{[head.rows[t] for t in sorted(head.rows)]}, rows {new} new"
    return True


def require_encoder_fraction(report: TransferReport, minimum: float, source: str = "checkpoint") -> None:
    """Refuse a transfer that would load less than ``minimum`` of the encoder; the error lists the first problems."""
    if report.encoder_loaded_fraction >= minimum:
        return
    unused = f"\nunused checkpoint keys, e.g.: {', '.join(report.unused[:5])}" if report.unused else ""
    raise ValueError(f"{source}: only {report.encoder_loaded_fraction:.1%} of the target network's encoder would "
                     f"load (required: {minimum:.0%}); the architectures differ. First problems:\n"
                     f"{report.problem_listing()}{unused}\n"
                     f"Plan the target with `nnunet-suprem plan-transfer` so that its topology equals the "
                     f"pre-trained model's.")
