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
  initialised.

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
  the order of ``labels``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Mapping

import torch

from nnunet_suprem.taxonomy import match_classes
from nnunet_suprem.transfer.defaults import DEFAULT_NOVEL_ROWS, NOVEL_ROWS

IGNORE_LABEL = "ignore"
BACKGROUND = "background"
"""How novel classes' output rows start: from the background row (default) or as the network initialised them."""


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


def match_head_rows(source_labels: Mapping[str, object], target_labels: Mapping[str, object],
                    source_known: Collection[str] | None = None, novel_rows: str = DEFAULT_NOVEL_ROWS) -> HeadRows:
    """Match the target's output rows to the checkpoint's by canonical class name.

    ``source_known``: checkpoint classes whose rows hold pre-trained values (None: all); the others are not
    carried (a weights file written by ``transfer-weights`` whose head has new rows). ``novel_rows``: how the new
    rows start (``NOVEL_ROWS``). Raises
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
    result = HeadRows(source_count=len(source_rows), target_count=len(target_rows), novel_rows=novel_rows)
    background_known = BACKGROUND in source_rows and (source_known is None or BACKGROUND in source_known)
    if BACKGROUND not in target_rows or not background_known or not any(matches.values()):
        result.new = sorted(target_rows, key=target_rows.get)
        result.note = ("no target class is a class of the checkpoint" if BACKGROUND in target_rows and
                       background_known else "no background label")
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

