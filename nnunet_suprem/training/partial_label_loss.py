"""
Marginal Dice + cross-entropy loss for partially labelled cases (nnU-Net v2 label setting).

Each case of a merged dataset annotates only some classes. Following Fang & Yan (2020, "multi-organ segmentation
over partially labeled datasets") and Shi et al. (2021, "Marginal loss and exclusion loss for partially supervised
multi-organ segmentation"), the probabilities of background and of every class that is not annotated in a case are
summed into one "background or unannotated" channel before Dice and CE are computed. With every class annotated
the loss is nnU-Net's DC_and_CE_loss with MemoryEfficientSoftDiceLoss.

Label sets (``nnunet_suprem.manifest.label_sets``): a voxel holding a set's value is "one of the set's classes". Its
CE is -log of the summed probability of the set's classes; each set present adds one Dice term (prediction: the
set's summed probability; reference: the set's voxels and those of its classes), and each class of a set leaves the
set's voxels out of its own Dice term (it is unknown there). Without set voxels the loss is the one above.

Deep supervision: nnU-Net's DeepSupervisionWrapper zips its arguments, so pass the (same) masks once per output,
with the batch Dice's classes computed once per step (one collective under DDP instead of one per output):
    dice_classes = loss.batch_dice_classes(annotated, targets[0])
    wrapper(outputs, targets, [annotated] * len(outputs), [dice_classes] * len(outputs))
"""
from typing import Mapping, Optional, Sequence

import torch
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from torch import Tensor, distributed as dist, nn


def _per_voxel(mask: Tensor, ndim: int) -> Tensor:
    """[B, C] -> [B, C, 1, ..., 1] with ndim dimensions in total."""
    return mask.view(*mask.shape, *([1] * (ndim - mask.ndim)))


def _with_background(annotated: Tensor) -> Tensor:
    """A bool copy of the [B, C] annotation mask with column 0 (background) True."""
    ann = annotated.to(dtype=torch.bool, copy=True)
    ann[:, 0] = True
    return ann


def _dice_options(batch_dice: bool = False, do_bg: bool = True, smooth: float = 1., ddp: bool = True):
    """Keyword arguments (and defaults) of nnU-Net's MemoryEfficientSoftDiceLoss."""
    return batch_dice, do_bg, smooth, ddp


def merge_unannotated(logits: Tensor, annotated: Tensor) -> Tensor:
    """
    Marginal log-probabilities in the fixed C-channel layout.

    :param logits: [B, C, ...]
    :param annotated: bool [B, C]; annotated[b, c] is True if class c is annotated in case b (column 0 is ignored,
        background always belongs to the merged channel)
    :return: [B, C, ...] log-probabilities. Channel 0 is log(p_0 + sum of p_u over the classes u not annotated in
        the case), annotated classes keep their log-softmax, unannotated classes are -inf (probability 0).
    """
    group = ~annotated
    group[:, 0] = True
    group = _per_voxel(group, logits.ndim)
    logp = torch.log_softmax(logits, 1)
    merged_bg = torch.logsumexp(logp.masked_fill(~group, float('-inf')), 1, keepdim=True)
    return torch.cat((merged_bg, logp[:, 1:].masked_fill(group[:, 1:], float('-inf'))), 1)


def set_log_probabilities(logits: Tensor, set_classes: Sequence[Sequence[int]]) -> Tensor:
    """[B, S, ...]: log of the summed softmax probability of each set's classes (``set_classes``: S lists of
    channels)."""
    everything = torch.logsumexp(logits, 1)
    return torch.stack([torch.logsumexp(logits[:, list(classes)], 1) - everything for classes in set_classes], 1)


def exclusion_per_case(logits: Tensor, labels: Tensor, annotated: Tensor) -> Tensor:
    """
    Exclusion term of each case (Shi et al. 2021), a function of the case and its manifest entry alone.

    Classes are mutually exclusive (one label per voxel). Where a case's target is a foreground class k that the
    case annotates, the voxel is known to be k, so no other class is there. The marginal loss cannot say so for the
    classes the case does not annotate: everywhere else they share the "background or unannotated" channel. This
    term penalises them on those voxels: it is the mean, over the case's voxels labelled with an annotated
    foreground class or with a set (whose classes the case annotates: the voxel is one of them), of
    -log(1 - sum of p_u over the classes u of the dataset that the case does not annotate), and 0 for a case that
    annotates every class or has no such voxel. It is computed exactly as
    logsumexp(all logits) - logsumexp(logits of annotated classes and background), so no clamping is needed; the
    gradient w.r.t. an excluded logit is its probability (> 0).

    :param logits: [B, C, ...]
    :param labels: [B, ...] with 0 for background, ignored voxels and classes the case does not annotate, > 0 for
        annotated classes and sets
    :param annotated: bool [B, C], column 0 True
    :return: [B], one value per case
    """
    excluded = _per_voxel(~annotated, logits.ndim)
    voxels = labels > 0
    penalty = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(excluded, float('-inf')), 1)
    axes = tuple(range(1, labels.ndim))
    return (penalty * voxels).sum(axes) / voxels.sum(axes).clamp_min(1)


class MarginalDCandCELoss(nn.Module):
    def __init__(self, soft_dice_kwargs: dict, ce_kwargs: dict, weight_ce: float = 1, weight_dice: float = 1,
                 ignore_label: Optional[int] = None, exclusion_weight: float = 0.0,
                 label_sets: Optional[Mapping[int, Sequence[int]]] = None):
        """
        Drop-in counterpart of nnU-Net's DC_and_CE_loss(..., dice_class=MemoryEfficientSoftDiceLoss) taking a
        per-case mask of annotated classes.

        :param soft_dice_kwargs: MemoryEfficientSoftDiceLoss kwargs (batch_dice, do_bg, smooth, ddp)
        :param ce_kwargs: nn.CrossEntropyLoss kwargs that also exist for nn.NLLLoss (weight, reduction); the CE is
            computed as NLL on the marginal log-probabilities (and one channel per label set: a class ``weight``
            then needs one more entry per set). Ignored voxels are left out as ignore_label says.
        :param ignore_label: voxels with this label are excluded from CE and Dice (as in nnU-Net)
        :param exclusion_weight: weight of the exclusion term (:func:`exclusion_per_case`, averaged over the
            cases of the batch as nnU-Net's CE averages over voxels); 0 disables it
        :param label_sets: ``{set's label value: its classes' label values}``; set values lie above every class
            value and the ignore label
        """
        super().__init__()
        self.set_values = list(label_sets or {})
        self.set_classes = [sorted(classes) for classes in (label_sets or {}).values()]
        self.batch_dice, self.do_bg, self.smooth, self.ddp = _dice_options(**soft_dice_kwargs)
        self.nll = nn.NLLLoss(**ce_kwargs)
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.ignore_label = ignore_label
        self.exclusion_weight = exclusion_weight

    def sets_present(self, target: Tensor) -> Tensor:
        """Bool [B, S]: which sets each case's label map [B, 1, ...] holds."""
        return torch.stack([(target[:, 0] == value).flatten(1).any(1) for value in self.set_values], 1) \
            if self.set_values else torch.zeros(len(target), 0, dtype=torch.bool, device=target.device)

    def batch_dice_classes(self, annotated: Tensor, target: Optional[Tensor] = None) -> Optional[Tensor]:
        """
        With batch Dice, bool [C + S]: the classes some case of the batch annotates and the sets some case's
        ``target`` (label map [B, 1, ...], needed with sets) holds, of every rank's batch under DDP: one all-reduce;
        None otherwise. Depends on the batch only: compute it once per step (from the full-resolution target).
        """
        if not self.batch_dice:
            return None
        present = _with_background(annotated).any(0)
        if self.set_values:
            present = torch.cat((present, self.sets_present(target.to(present.device)).any(0)))
        present = present.int()
        if self.ddp:
            dist.all_reduce(present, op=dist.ReduceOp.MAX)
        return present.bool()

    def forward(self, net_output: Tensor, target: Tensor, annotated: Tensor,
                dice_classes: Optional[Tensor] = None) -> Tensor:
        """
        :param net_output: logits [B, C, ...] (float16 is computed in float32)
        :param target: label map [B, 1, ...]. Labels of classes not annotated in a case count as merged background;
            a set's value stands for "one of the set's classes".
        :param annotated: bool [B, C], annotated[b, c] = class c is annotated in case b (column 0 is treated as True)
        :param dice_classes: :meth:`batch_dice_classes` of ``annotated`` and ``target``, computed here when None
        """
        x = net_output.to(torch.promote_types(net_output.dtype, torch.float32))
        ann = _with_background(annotated.to(x.device))
        if self.batch_dice and dice_classes is None:
            dice_classes = self.batch_dice_classes(ann, target)

        labels = target[:, 0].long()
        valid = None if self.ignore_label is None else labels != self.ignore_label
        if valid is not None:
            labels = torch.where(valid, labels, 0)
        channels = x.shape[1]
        for index, value in enumerate(self.set_values):  # set s -> channel C + s of the log-probabilities below
            labels = torch.where(labels == value, channels + index, labels)
        kept = torch.cat((ann, ann.new_ones(len(ann), len(self.set_values))), 1)  # annotated classes and every set
        labels = torch.where(kept.gather(1, labels.flatten(1)).view_as(labels), labels, 0)

        logp = merge_unannotated(x, ann)
        if self.set_values:
            logp = torch.cat((logp, set_log_probabilities(x, self.set_classes)), 1)
        dc_loss = self._dice(logp, labels, ann, dice_classes, valid) if self.weight_dice != 0 else 0
        if self.weight_ce != 0 and (valid is None or valid.any()):
            ce_loss = self.nll(logp, labels if valid is None else torch.where(valid, labels, self.nll.ignore_index))
        else:
            ce_loss = 0
        result = self.weight_ce * ce_loss + self.weight_dice * dc_loss
        if self.exclusion_weight > 0:
            result = result + self.exclusion_weight * exclusion_per_case(x, labels, ann).mean()
        return result

    def _dice(self, logp: Tensor, labels: Tensor, ann: Tensor, dice_classes: Optional[Tensor],
              valid: Optional[Tensor]) -> Tensor:
        """
        nnU-Net's MemoryEfficientSoftDiceLoss on the marginal probabilities (channels C + s: set s). Unannotated
        (case, class) pairs have zero prediction and reference, so they add nothing to the batch sums; they are left
        out of the mean: per case (mean over annotated pairs and sets present) or, with batch_dice, a class or set
        counts if it is in ``dice_classes``. A set's reference is its voxels and its classes' voxels; a class's
        prediction leaves out the voxels of the sets holding it.
        """
        first = 0 if self.do_bg else 1
        axes = tuple(range(2, logp.ndim))
        channels = ann.shape[1]
        x = logp.exp()
        with torch.no_grad():
            y_onehot = torch.zeros_like(logp, dtype=torch.float32).scatter_(1, labels[:, None], 1)
            counted = dice_classes if self.batch_dice else ann
            if self.set_values:
                members = torch.zeros(len(self.set_values), channels, device=logp.device)
                for index, classes in enumerate(self.set_classes):
                    members[index, classes] = 1
                in_sets = y_onehot[:, channels:]
                if not self.batch_dice:
                    counted = torch.cat((ann, in_sets.flatten(2).any(2)), 1)
                unknown = torch.einsum('sc,bs...->bc...', members, in_sets) > 0
                y_onehot[:, channels:] += torch.einsum('sc,bc...->bs...', members, y_onehot[:, :channels])
        if self.set_values:
            x = torch.cat((x[:, :channels].masked_fill(unknown, 0), x[:, channels:]), 1)
        x, y_onehot, counted = x[:, first:], y_onehot[:, first:], counted[..., first:].float()
        with torch.no_grad():
            if valid is not None:
                y_onehot *= valid[:, None]
            sum_gt = y_onehot.sum(axes, dtype=torch.float32)
        if valid is not None:
            x = x * valid[:, None]
        intersect = (x * y_onehot).sum(axes, dtype=torch.float32)
        sum_pred = x.sum(axes, dtype=torch.float32)

        if self.batch_dice:
            if self.ddp:
                intersect = AllGatherGrad.apply(intersect).sum(0, dtype=torch.float32)
                sum_pred = AllGatherGrad.apply(sum_pred).sum(0, dtype=torch.float32)
                sum_gt = AllGatherGrad.apply(sum_gt).sum(0, dtype=torch.float32)
            intersect = intersect.sum(0, dtype=torch.float32)
            sum_pred = sum_pred.sum(0, dtype=torch.float32)
            sum_gt = sum_gt.sum(0, dtype=torch.float32)

        dc = (2 * intersect + self.smooth) / (sum_gt + sum_pred + float(self.smooth)).clamp_min(1e-8)
        return -(dc * counted).sum() / counted.sum().clamp_min(1)
