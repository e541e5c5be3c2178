"""Class-aware head transfer: the output rows of classes the checkpoint already predicts.

A segmentation head (nnU-Net's ``seg_layers``, one 1x1 convolution per deep-supervision output) has one output row
(weight row and bias entry) per label. When the target dataset names classes the checkpoint was trained on, under
the same canonical name (:func:`nnunet_suprem.taxonomy.canonical_name`: synonyms such as ``inferior_vena_cava`` =
``postcava``, any spelling of ``right kidney``; label values may differ), their rows and the background row are
carried over; only the rows of novel classes keep the network's own initialisation. Small pure functions, as in
timm's ``load_pretrained`` / MONAI's ``copy_model_state``:

- :func:`output_rows`: class name -> output row of an nnU-Net ``labels`` entry;
- :func:`match_head_rows`: which target row comes from which checkpoint row (a :class:`HeadRows`);
- :func:`carry_rows`: a target head tensor with those rows taken from the checkpoint's, and the novel rows
  initialised;
- :func:`lateral_rows` and :func:`orient_matches`: left and right. A pre-training ties each side to a direction in
  its patches (see :mod:`nnunet_suprem.training.laterality`); when the target's patches present left-right the other
  way along the same axis, each left/right class takes the row of its other side; when left-right lies on another
  patch axis, or either side's orientation is unknown, the rows of left/right classes are not carried.

Novel rows (``NOVEL_ROWS``): ``"background"`` (the default) starts them as copies of the carried background row
with the bias lowered by ``log(k + 1)`` for ``k`` novel classes (Cermelli et al., "Modeling the Background for
Incremental Learning in Semantic Segmentation", CVPR 2020): the novel classes were background to the pre-trained
model, they start as a share of it, and since their logits stay below the background's, the argmax, i.e. the
prediction of every seen class, is exactly the pre-trained model's until fine-tuning moves them. (MiB also lowers
the background's bias, sharing its probability exactly; its logits would then tie with the novel ones, leaving the
prediction to argmax's tie-breaking: see docs/transfer.md.) ``"init"`` keeps
the network's own initialisation (nnU-Net's He init, zero bias); random rows can then win the argmax where the
pre-trained model is not confident (measured: a seen class's held-out Dice 0.81 -> 0.32 at zero iterations).

Rules (each refusal is a note in the transfer report; the heads are then re-initialised as before):

- matching is by canonical name only, so sides never cross (``kidney_left`` never fills ``kidney_right``) and an
  unsided name (``kidney``) matches nothing;
- the ``ignore`` label has no output row in nnU-Net: it is never carried nor matched;
- region-based labels (a label given as several values, nnU-Net's ``regions_class_order``) are refused: their rows
  are overlapping regions with sigmoid outputs, not classes of a softmax, so a row means something else;
- labels that are not 0, 1, ..., n-1 (besides ``ignore``) or whose canonical names collide are refused;
- the background row is carried only together with at least one class;
- heads are loaded whole only for the same labels in the same order (:func:`same_labels`): region channels follow
  the order of ``labels``;
- left/right classes as :func:`lateral_rows` decides (kept, exchanged, or new rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Mapping

import torch

from nnunet_suprem.orientation import PatchOrientation, describe_patch
from nnunet_suprem.taxonomy import canonical_name, laterality_partner, match_classes, resolve_classes
from nnunet_suprem.transfer.defaults import DEFAULT_NOVEL_ROWS, NOVEL_ROWS

IGNORE_LABEL = "ignore"
BACKGROUND = "background"
"""How novel classes' output rows start: from the background row (default) or as the network initialised them."""
LATERAL_KEPT, LATERAL_EXCHANGED, LATERAL_NEW = "kept", "exchanged", "new"
"""What becomes of the rows of left/right classes (:func:`lateral_rows`)."""


class HeadTransferRefused(ValueError):
    """The labels do not allow carrying output rows (the message says why)."""


def output_rows(labels: Mapping[str, object]) -> dict[str, int]:
    """Output row of every class of an nnU-Net ``labels`` entry, background included and ``ignore`` left out.

    nnU-Net's softmax outputs have one channel per label value, so the row is the value; values must be
    0, 1, ..., n-1. Raises :class:`HeadTransferRefused` for region-based labels and for other values.
    """
    rows: dict[str, int] = {}
    for name, value in labels.items():
        if name == IGNORE_LABEL:
            continue
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise HeadTransferRefused(f"region-based labels ({name!r}: {list(value)}): output rows are regions, "
                                          f"not classes")
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int):
            raise HeadTransferRefused(f"label {name!r} has value {value!r}, not an integer")
        rows[name] = value
    if sorted(rows.values()) != list(range(len(rows))):
        raise HeadTransferRefused(f"label values {sorted(rows.values())} are not 0, 1, ..., {len(rows) - 1}")
    return rows


def same_labels(first: Mapping[str, object], second: Mapping[str, object]) -> bool:
    """The same label names with the same values in the same order.

    Order matters: with region-based labels nnU-Net's output channels follow the order of the ``labels`` entry
    (a BraTS-style dict in another key order swaps its region channels). A region's values are compared as a list.
    """
    def entries(labels: Mapping[str, object]) -> list[tuple[str, object]]:
        return [(name, list(value) if isinstance(value, (list, tuple)) else value) for name, value in labels.items()]
    return entries(first) == entries(second)


@dataclass
class HeadRows:
    """Which output rows of the target head come from which rows of the checkpoint's head."""

    rows: dict[int, int] = field(default_factory=dict)
    """Target row -> checkpoint row, background included; empty when nothing is carried."""
    carried: dict[str, str] = field(default_factory=dict)
    """Target class -> checkpoint class whose row it takes (in target row order)."""
    new: list[str] = field(default_factory=list)
    """Target classes whose rows keep the network's initialisation (in target row order)."""
    source_count: int = 0
    """Rows of the checkpoint's head (what its labels describe)."""
    target_count: int = 0
    note: str = ""
    """How it was decided (why nothing is carried, when nothing is)."""
    novel_rows: str = DEFAULT_NOVEL_ROWS
    """How the new rows start (``NOVEL_ROWS``)."""
    left_right: str = ""
    """What became of the rows of left/right classes (``LATERAL_*``); empty when no carried row is lateral."""
    left_right_note: str = ""
    """Which left/right classes that concerns, and why."""

    @property
    def background_row(self) -> int | None:
        """Target row the new rows start from (``novel_rows="background"``), or None (network initialisation)."""
        if self.novel_rows != "background" or BACKGROUND not in self.carried:
            return None
        return next(t for t, name in zip(sorted(self.rows), self.carried) if name == BACKGROUND)

    @property
    def complete(self) -> bool:
        """Every target row is carried: the head is wholly pre-trained."""
        return bool(self.rows) and len(self.rows) == self.target_count


def lateral_rows(source: PatchOrientation | None, target: PatchOrientation | None) -> tuple[str, str]:
    """What becomes of the rows of left/right classes, and why, given where left-right lies in the checkpoint's
    patches and in the target's (:func:`nnunet_suprem.orientation.patch_orientation`; None: unknown).

    ``LATERAL_KEPT`` when both present it alike (or both slice 2D patches along it), ``LATERAL_EXCHANGED`` when it
    points the other way along the same patch axis (each class takes its other side's row), else ``LATERAL_NEW``:
    the rows are not carried.
    """
    if source is None:
        return LATERAL_NEW, ("the checkpoint records no left-right orientation of its patches (trained by stock "
                             "nnU-Net or an older nnunet-suprem, or on cases of mixed orientation)")
    if target is None:
        return LATERAL_NEW, ("the target's preprocessed cases share no left-right orientation (mixed orientations, "
                             "a reader that stores no image geometry, or no preprocessed cases)")
    sides = f"checkpoint: {describe_patch(source)}; target: {describe_patch(target)}"
    if source[0] != target[0]:
        return LATERAL_NEW, f"left-right lies on another patch axis ({sides})"
    if source[0] is None or source[1] == target[1]:
        return LATERAL_KEPT, f"the checkpoint's and the target's patches present left-right alike ({sides})"
    return LATERAL_EXCHANGED, f"left-right points the other way in the target's patches ({sides})"


def orient_matches(matches: Mapping[str, str | None], source_names: Collection[str], left_right: str,
                   why: str) -> tuple[dict[str, str | None], str]:
    """``(target class -> checkpoint class, note)``: the class matches with left and right accounted for.

    A lateral target class (one whose canonical name has a side) keeps its match (``LATERAL_KEPT``), takes the
    checkpoint class of its other side among ``source_names`` (``LATERAL_EXCHANGED``; none if the checkpoint has
    no such class) or none (``LATERAL_NEW``). The note lists the lateral classes concerned and ``why``; it is empty
    when no lateral class is carried before or after.
    """
    other_side = resolve_classes(source_names, "checkpoint labels")
    oriented, concerned = {}, []
    for name, match in matches.items():
        partner = laterality_partner(canonical_name(name))
        if partner is None or left_right == LATERAL_KEPT:
            oriented[name] = match
        else:
            oriented[name] = other_side.get(partner) if left_right == LATERAL_EXCHANGED else None
        if partner is not None and (match or oriented[name]):
            concerned.append(name)
    if not concerned:
        return oriented, ""
    if left_right == LATERAL_NEW:
        return oriented, f"rows of {', '.join(concerned)} not carried (they start as new rows): {why}"
    moves = ", ".join(f"{name} <- {oriented[name] or 'new'}" for name in concerned)
    return oriented, f"rows {left_right} ({moves}): {why}"


def match_head_rows(source_labels: Mapping[str, object], target_labels: Mapping[str, object],
                    source_known: Collection[str] | None = None, novel_rows: str = DEFAULT_NOVEL_ROWS,
                    left_right: tuple[str, str] | None = None) -> HeadRows:
    """Match the target's output rows to the checkpoint's by canonical class name.

    ``source_known``: checkpoint classes whose rows hold pre-trained values (None: all); the others are not
    carried (a weights file written by ``transfer-weights`` whose head has new rows). ``novel_rows``: how the new
    rows start (``NOVEL_ROWS``). ``left_right``: what becomes of left/right classes and why (:func:`lateral_rows`,
    applied by :func:`orient_matches`; None: matched by name alone). Raises
    :class:`HeadTransferRefused` when either label set cannot be matched (see the module doc).
    """
    if novel_rows not in NOVEL_ROWS:
        raise ValueError(f"novel_rows must be one of {NOVEL_ROWS}, not {novel_rows!r}")
    source_rows, target_rows = output_rows(source_labels), output_rows(target_labels)
    source_names = [n for n in source_rows if n != BACKGROUND and (source_known is None or n in source_known)]
    target_names = [n for n in target_rows if n != BACKGROUND]
    try:
        matches = match_classes(target_names, source_names, names_source="target labels",
                                targets_source="checkpoint labels")
    except ValueError as e:
        raise HeadTransferRefused(str(e)) from None
    known = any(matches.values())
    matches, note = orient_matches(matches, source_names, *left_right) if left_right else (matches, "")
    result = HeadRows(source_count=len(source_rows), target_count=len(target_rows), novel_rows=novel_rows,
                      left_right=left_right[0] if note else "", left_right_note=note)
    background_known = BACKGROUND in source_rows and (source_known is None or BACKGROUND in source_known)
    if BACKGROUND not in target_rows or not background_known or not any(matches.values()):
        result.new = sorted(target_rows, key=target_rows.get)
        result.note = ("no background label" if BACKGROUND not in target_rows or not background_known else
                       "no target class is a class of the checkpoint" if not known else
                       "no target class keeps a row of the checkpoint once left and right are accounted for")
        return result
    for name in sorted(target_rows, key=target_rows.get):
        source = BACKGROUND if name == BACKGROUND else matches[name]
        if source is None:
            result.new.append(name)
        else:
            result.carried[name] = source
            result.rows[target_rows[name]] = source_rows[source]
    result.note = f"{len(result.rows)} of {len(target_rows)} output rows carried"
    return result


def carry_rows(source: torch.Tensor, target: torch.Tensor, rows: Mapping[int, int],
               background_row: int | None = None) -> torch.Tensor:
    """``target`` (not modified) with ``target[t] = source[s]`` for every ``t: s`` of ``rows``.

    With ``background_row`` (a carried target row) every other row starts as a copy of it, and for a bias (a 1-D
    tensor) lowered by ``log(k + 1)``, ``k`` the number of those rows; without, they stay as in ``target``. Works
    for any per-output-row tensor (convolution weights ``[out, in, *k]``, biases ``[out]``); raises ValueError
    when the rows' shapes differ or a row is out of range.
    """
    if source.shape[1:] != target.shape[1:]:
        raise ValueError(f"rows of shape {tuple(source.shape[1:])} in the checkpoint, {tuple(target.shape[1:])} here")
    if rows and (max(rows) >= target.shape[0] or max(rows.values()) >= source.shape[0]):
        raise ValueError(f"rows {dict(rows)} do not fit {source.shape[0]} checkpoint rows and "
                         f"{target.shape[0]} target rows")
    out = target.detach().clone()
    if rows:
        index_t, index_s = zip(*sorted(rows.items()))
        out[list(index_t)] = source.detach()[list(index_s)].to(device=out.device, dtype=out.dtype)
    novel = [r for r in range(out.shape[0]) if r not in rows]
    if background_row is not None and novel:
        if background_row not in rows:
            raise ValueError(f"background row {background_row} is not carried")
        out[novel] = out[background_row].clone()
        if out.ndim == 1:
            out[novel] -= math.log(len(novel) + 1)
    return out


def describe(head: HeadRows) -> str:
    """One line for reports: carried rows with their origin, then the new ones."""
    if not head.rows:
        return f"output rows not carried ({head.note}); every row initialised fresh"
    carried = ", ".join(name if name == source else f"{name} <- {source}" for name, source in head.carried.items())
    start = ("the background row, bias - log(k+1)" if head.background_row is not None
             else "the network's initialisation")
    new = f"; new (from {start}): {', '.join(head.new)}" if head.new else "; no new rows"
    return f"{len(head.rows)} of {head.target_count} output rows carried: {carried}{new}"

