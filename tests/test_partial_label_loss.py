"""Tests of the marginal (partial-label) loss against nnU-Net v2's own losses. CPU only, small tensors."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_suprem.training.partial_label_loss import MarginalDCandCELoss, exclusion_per_case, merge_unannotated

C = 5
IGNORE = C  # nnU-Net's convention: ignore label = highest label + 1
# class 3 is annotated only in case 1, every case misses at least one class
PARTIAL = torch.tensor([[1, 1, 1, 0, 1],
                        [1, 0, 1, 1, 0],
                        [1, 1, 0, 0, 1]], dtype=torch.bool)


def dice_kwargs(batch_dice: bool, ddp: bool = False) -> dict:
    return {'batch_dice': batch_dice, 'smooth': 1e-5, 'do_bg': False, 'ddp': ddp}


def nnunet_loss(batch_dice: bool, ignore_label=None, ddp: bool = False) -> DC_and_CE_loss:
    """Exactly what nnUNetTrainer._build_loss builds for label (non-region) datasets."""
    return DC_and_CE_loss(dice_kwargs(batch_dice, ddp), {}, weight_ce=1, weight_dice=1, ignore_label=ignore_label,
                          dice_class=MemoryEfficientSoftDiceLoss)


def marginal_loss(batch_dice: bool, ignore_label=None, ddp: bool = False, **kwargs) -> MarginalDCandCELoss:
    return MarginalDCandCELoss(dice_kwargs(batch_dice, ddp), {}, weight_ce=1, weight_dice=1,
                               ignore_label=ignore_label, **kwargs)


def make_batch(b, spatial, dtype=torch.float64, ignore_label=None, seed=0, c=C):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(b, c, *spatial, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    target = torch.randint(0, c, (b, 1, *spatial), generator=g)
    target[0][target[0] == c - 1] = 0  # class c-1 is absent from case 0: a true negative for the Dice
    if ignore_label is not None:
        target[torch.rand(target.shape, generator=g) < 0.2] = ignore_label
    return logits, target.float()  # nnU-Net's targets are float label maps


def value_and_grad(loss_fn, logits, *args):
    value = loss_fn(logits, *args)
    grad, = torch.autograd.grad(value, logits)
    return value, grad


def reference_marginal_loss(logits, target, annotated, batch_dice, ignore_label=None, smooth=1e-5):
    """Plain probability-space implementation with loops (float64), independent of the module's log-space code."""
    p = torch.softmax(logits.double(), 1)
    labels = target[:, 0].long()
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore_label is None else labels != ignore_label
    nll, stats = [], []
    for b in range(p.shape[0]):
        group = [0] + [c for c in range(1, p.shape[1]) if not annotated[b, c]]
        lab = torch.where(valid[b], labels[b], 0)
        for c in group:
            lab = torch.where(lab == c, 0, lab)
        p_label = torch.where(lab == 0, p[b, group].sum(0), p[b].gather(0, lab[None])[0])
        nll.append(-torch.log(p_label)[valid[b]])
        for c in range(1, p.shape[1]):
            if annotated[b, c]:
                pc, yc = p[b, c] * valid[b], ((lab == c) & valid[b]).double()
                stats.append((c, (pc * yc).sum(), pc.sum(), yc.sum()))
    if batch_dice:
        per_class = {}
        for c, *s in stats:
            per_class[c] = [a + b for a, b in zip(per_class.get(c, [0, 0, 0]), s)]
        stats = [(c, *s) for c, s in per_class.items()]
    dice = torch.stack([(2 * tp + smooth) / (gt + pred + smooth) for _, tp, pred, gt in stats]).mean()
    return torch.cat(nll).mean() - dice


@pytest.mark.parametrize('spatial', [(12, 12), (8, 8, 8)], ids=['2d', '3d'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['f32', 'f64'])
@pytest.mark.parametrize('ignore_label', [None, IGNORE], ids=['no_ignore', 'ignore'])
@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_full_annotation_equals_nnunet(batch_dice, ignore_label, dtype, spatial):
    logits, target = make_batch(2, spatial, dtype, ignore_label)
    annotated = torch.ones(2, C, dtype=torch.bool)
    ref, ref_grad = value_and_grad(nnunet_loss(batch_dice, ignore_label), logits, target)
    ours, grad = value_and_grad(marginal_loss(batch_dice, ignore_label), logits, target, annotated)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=0)
    assert grad.dtype == dtype


@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_full_annotation_equals_nnunet_with_background_dice(batch_dice):
    """do_bg=True (not used by nnU-Net for labels) also matches, the ignore mask included."""
    logits, target = make_batch(2, (8, 8, 8), ignore_label=IGNORE)
    kwargs = {**dice_kwargs(batch_dice), 'do_bg': True}
    ref, ref_grad = value_and_grad(DC_and_CE_loss(kwargs, {}, ignore_label=IGNORE,
                                                  dice_class=MemoryEfficientSoftDiceLoss), logits, target)
    ours, grad = value_and_grad(MarginalDCandCELoss(kwargs, {}, ignore_label=IGNORE), logits, target,
                                torch.ones(2, C, dtype=torch.bool))
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize('ignore_label', [None, IGNORE], ids=['no_ignore', 'ignore'])
@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_single_case_equals_nnunet_on_merged_classes(batch_dice, ignore_label):
    """One case = nnU-Net's loss on the reduced problem [logsumexp(background, unannotated), annotated classes]."""
    logits, target = make_batch(1, (8, 8, 8), ignore_label=ignore_label)
    annotated = torch.tensor([[1, 0, 1, 0, 1]], dtype=torch.bool)
    kept, group = [2, 4], [0, 1, 3]
    reduced = torch.cat((torch.logsumexp(logits[:, group], 1, keepdim=True), logits[:, kept]), 1)
    lut = torch.zeros(C + 1, dtype=torch.long)
    lut[kept] = torch.arange(1, len(kept) + 1)
    lut[IGNORE] = len(kept) + 1
    reduced_target = lut[target.long()].float()
    reduced_ignore = None if ignore_label is None else len(kept) + 1

    ref = nnunet_loss(batch_dice, reduced_ignore)(reduced, reduced_target)
    ref_grad, = torch.autograd.grad(ref, logits)
    ours, grad = value_and_grad(marginal_loss(batch_dice, ignore_label), logits, target, annotated)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize('ignore_label', [None, IGNORE], ids=['no_ignore', 'ignore'])
@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_partial_annotation_matches_probability_space_reference(batch_dice, ignore_label):
    logits, target = make_batch(3, (8, 8, 8), ignore_label=ignore_label, seed=1)
    ours = marginal_loss(batch_dice, ignore_label)(logits, target, PARTIAL)
    ref = reference_marginal_loss(logits, target, PARTIAL, batch_dice, ignore_label)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)


def test_merge_unannotated_layout():
    logits, _ = make_batch(3, (4, 4))
    merged = merge_unannotated(logits, PARTIAL)
    p = torch.softmax(logits, 1)
    assert torch.allclose(merged.exp().sum(1), torch.ones(()).double())
    assert torch.allclose(merged[1, 0].exp(), p[1, [0, 1, 4]].sum(0))
    assert torch.isneginf(merged[1, [1, 4]]).all() and torch.allclose(merged[1, [2, 3]], p[1, [2, 3]].log())


@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_invariant_to_split_of_merged_mass(batch_dice):
    logits, target = make_batch(2, (8, 8, 8))
    annotated = torch.tensor([[1, 0, 1, 0, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    groups = {0: [0, 1, 3], 1: [0, 4]}
    loss = marginal_loss(batch_dice, exclusion_weight=0.)
    base, grad = value_and_grad(loss, logits, target, annotated)

    g = torch.Generator().manual_seed(5)
    resplit = logits.detach().clone()
    for b, group in groups.items():
        # the gradient w.r.t. the merged logits is the gradient of their logsumexp: proportional to their softmax
        within = torch.softmax(logits[b, group].detach(), 0)
        assert torch.allclose(grad[b, group], within * grad[b, group].sum(0, keepdim=True), atol=1e-12)
        # redistribute the merged mass arbitrarily, keeping its logsumexp
        r = 3 * torch.randn(len(group), 8, 8, 8, generator=g, dtype=torch.float64)
        resplit[b, group] = r - torch.logsumexp(r, 0) + torch.logsumexp(logits[b, group].detach(), 0)
    assert not torch.allclose(resplit, logits)
    assert torch.allclose(loss(resplit, target, annotated), base, atol=1e-10, rtol=0)


def test_unannotated_class_predicted_in_background_is_not_penalised():
    """Class 3 is present but unannotated (labelled 0); predicting 3 there costs the same as predicting 0."""
    target = torch.zeros(1, 1, 8, 8, 8)
    target[..., 4:6, :] = 1
    target[..., 6:, :] = 2
    truth = target.clone()
    truth[..., :4, :] = 3  # what the image really shows
    predict_truth = (10 * torch.nn.functional.one_hot(truth[:, 0].long(), 4).movedim(-1, 1)).double()
    predict_truth.requires_grad_()
    predict_target = (10 * torch.nn.functional.one_hot(target[:, 0].long(), 4).movedim(-1, 1)).double()
    annotated = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    for batch_dice in (True, False):
        ours = marginal_loss(batch_dice)(predict_truth, target, annotated)
        naive = nnunet_loss(batch_dice)(predict_truth, target)
        assert ours < naive - 1
        assert torch.allclose(ours, marginal_loss(batch_dice)(predict_target, target, annotated))


def test_deep_supervision_with_nnunet_wrapper():
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, C, (3, 1, 16, 16, 16), generator=g).float()
    targets = [target, target[..., ::2, ::2, ::2], target[..., ::4, ::4, ::4]]
    outputs = [torch.randn(3, C, *t.shape[2:], generator=g, dtype=torch.float64).requires_grad_() for t in targets]
    weights = np.array([1 / 2 ** i for i in range(len(outputs))])
    weights[-1] = 0  # as in nnUNetTrainer._build_loss
    weights = weights / weights.sum()

    loss = marginal_loss(True, exclusion_weight=0.5)
    wrapped = DeepSupervisionWrapper(loss, weights)
    # the wrapper zips its arguments: pass the annotated mask once per output
    value = wrapped(outputs, targets, [PARTIAL] * len(outputs))
    expected = sum(w * loss(o, t, PARTIAL) for w, o, t in zip(weights, outputs, targets))
    assert torch.allclose(value, expected, atol=1e-12, rtol=0)
    value.backward()
    assert outputs[0].grad.abs().sum() > 0 and outputs[-1].grad is None

    full = torch.ones(3, C, dtype=torch.bool)
    reference = DeepSupervisionWrapper(nnunet_loss(True), weights)(outputs, targets)
    ours = DeepSupervisionWrapper(marginal_loss(True), weights)(outputs, targets, [full] * len(outputs))
    assert torch.allclose(ours, reference, atol=1e-6, rtol=0)


def test_exclusion_term_off():
    logits, target = make_batch(3, (8, 8, 8), seed=4)
    base = marginal_loss(True)(logits, target, PARTIAL)
    assert torch.equal(marginal_loss(True, exclusion_weight=0.)(logits, target, PARTIAL), base)
    # every class annotated in every case: no class is excluded, the term vanishes
    full = torch.ones_like(PARTIAL)
    assert torch.equal(marginal_loss(True, exclusion_weight=1.)(logits, target, full),
                       marginal_loss(True)(logits, target, full))


def exclusion_term(logits, target, annotated, ignore_label=None, batch_dice=False):
    """The exclusion term's contribution to the loss (weight 1)."""
    return (marginal_loss(batch_dice, ignore_label, exclusion_weight=1.)(logits, target, annotated)
            - marginal_loss(batch_dice, ignore_label)(logits, target, annotated))


@pytest.mark.parametrize('ignore_label', [None, IGNORE], ids=['no_ignore', 'ignore'])
def test_exclusion_term_value_and_direction(ignore_label):
    logits, target = make_batch(3, (8, 8, 8), ignore_label=ignore_label, seed=4)
    term = exclusion_term(logits, target, PARTIAL, ignore_label)

    labels = target[:, 0].long()
    p = torch.softmax(logits.detach(), 1)
    selected, per_case = [], []
    for b in range(3):
        excluded = ~PARTIAL[b]  # every class of the dataset that case b does not annotate
        lab = torch.where(labels[b] == IGNORE, 0, labels[b])
        sel = (lab > 0) & PARTIAL[b][lab]  # voxels labelled with a class annotated in case b
        selected.append(sel)
        per_case.append(-torch.log(1 - p[b, excluded].sum(0))[sel].mean())
    expected = torch.stack(per_case).mean()  # each case counts once, whatever its foreground volume
    assert expected > 0
    assert torch.allclose(term, expected, atol=1e-10, rtol=0)

    grad, = torch.autograd.grad(term, logits)
    for b in range(3):
        g_ex = grad[b, ~PARTIAL[b]]
        assert (g_ex[:, selected[b]] > 0).all()  # gradient descent lowers the excluded logits ...
        assert (g_ex[:, ~selected[b]] == 0).all()  # ... only where a mutually exclusive class is annotated
        assert (grad[b, PARTIAL[b]] <= 0).all()  # ... and raises the others
    stepped = torch.softmax(logits.detach() - 50 * grad, 1)
    for b in range(3):
        assert (stepped[b, ~PARTIAL[b]].sum(0)[selected[b]] < p[b, ~PARTIAL[b]].sum(0)[selected[b]]).all()


@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_exclusion_term_of_a_case_does_not_depend_on_its_batch(batch_dice):
    """Case 0 alone, or with a partner that annotates other classes: the same value (the mean over the cases)."""
    logits, target = make_batch(2, (8, 8, 8), seed=7)
    annotated = PARTIAL[[0, 1]]
    alone = [exclusion_term(logits[[b]], target[[b]], annotated[[b]], batch_dice=batch_dice) for b in (0, 1)]
    assert alone[0] > 0 and alone[1] > 0
    together = exclusion_term(logits, target, annotated, batch_dice=batch_dice)
    assert torch.allclose(together, (alone[0] + alone[1]) / 2, atol=1e-10, rtol=0)
    labels = torch.where(annotated.gather(1, target[:, 0].long().flatten(1)).view(2, 8, 8, 8), target[:, 0].long(), 0)
    per_case = exclusion_per_case(logits, labels, annotated)
    assert torch.allclose(per_case, torch.stack(alone), atol=1e-10, rtol=0)


def test_float16_logits_and_annotated_mask_conversion():
    logits, target = make_batch(3, (8, 8, 8), ignore_label=IGNORE, seed=6)
    half = (100 * logits.detach()).half().requires_grad_()  # exp() of these overflows in float16
    loss = marginal_loss(True, IGNORE, exclusion_weight=0.1)
    value = loss(half, target, PARTIAL.int())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.allclose(value, loss(half.detach().float(), target, PARTIAL), atol=1e-5)
    value.backward()
    assert half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()
    # column 0 (background) is always treated as annotated
    no_bg = PARTIAL.clone()
    no_bg[:, 0] = False
    assert torch.equal(loss(half, target, no_bg), value)


# ---------------------------------------------------------------- label sets ("one of these")
SETS = {IGNORE + 1: [1, 2], IGNORE + 2: [3, 4]}  # set values lie above the labels and the ignore label


def with_set_voxels(target, seed=0, value=IGNORE + 1, share=0.3, cases=(0,)):
    """A copy of ``target`` in which a share of the voxels of ``cases`` hold a set's value."""
    g = torch.Generator().manual_seed(seed)
    target = target.clone()
    for b in cases:
        target[b][torch.rand(target[b].shape, generator=g) < share] = value
    return target


def reference_set_loss(logits, target, batch_dice, smooth=1e-5):
    """Probability-space loss with loops (float64), every class annotated: CE -log p(label) or -log p(set); Dice over
    classes (each leaving out the voxels of the sets holding it) and over the sets present (reference: the set's
    voxels and its classes' voxels)."""
    p = torch.softmax(logits.double(), 1)
    labels = target[:, 0].long()
    nll, stats = [], []
    for b in range(p.shape[0]):
        lab = labels[b]
        prob = torch.ones_like(p[b, 0])
        for c in range(C):
            prob = torch.where(lab == c, p[b, c], prob)
        for value, classes in SETS.items():
            prob = torch.where(lab == value, p[b, classes].sum(0), prob)
        nll.append(-torch.log(prob).flatten())
        for c in range(1, C):
            known = torch.ones_like(lab, dtype=torch.bool)
            for value, classes in SETS.items():
                known &= ~((lab == value) & (c in classes))
            pc, yc = p[b, c] * known, (lab == c).double()
            stats.append((c, (pc * yc).sum(), pc.sum(), yc.sum()))
        for value, classes in SETS.items():  # batch Dice: every case's sums, for a set some case holds
            if (lab == value).any() or (batch_dice and (labels == value).any()):
                ps, ys = p[b, classes].sum(0), ((lab == value) | torch.isin(lab, torch.tensor(classes))).double()
                stats.append((value, (ps * ys).sum(), ps.sum(), ys.sum()))
    if batch_dice:
        per_class = {}
        for c, *s in stats:
            per_class[c] = [a + b for a, b in zip(per_class.get(c, [0, 0, 0]), s)]
        stats = [(c, *s) for c, s in per_class.items()]
    dice = torch.stack([(2 * tp + smooth) / (gt + pred + smooth) for _, tp, pred, gt in stats]).mean()
    return torch.cat(nll).mean() - dice


@pytest.mark.parametrize('ignore_label', [None, IGNORE], ids=['no_ignore', 'ignore'])
@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_sets_without_set_voxels_equal_nnunet(batch_dice, ignore_label):
    """A dataset with sets, a batch without set voxels: nnU-Net's loss (full annotation), value and gradient."""
    logits, target = make_batch(2, (8, 8, 8), ignore_label=ignore_label)
    ref, ref_grad = value_and_grad(nnunet_loss(batch_dice, ignore_label), logits, target)
    ours, grad = value_and_grad(marginal_loss(batch_dice, ignore_label, label_sets=SETS), logits, target,
                                torch.ones(2, C, dtype=torch.bool))
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0) and torch.allclose(grad, ref_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_sets_match_probability_space_reference(batch_dice):
    logits, target = make_batch(3, (8, 8, 8), seed=1)
    target = with_set_voxels(with_set_voxels(target, cases=(0, 1)), seed=1, value=IGNORE + 2, share=0.1, cases=(1,))
    ours = marginal_loss(batch_dice, IGNORE, label_sets=SETS)(logits, target, torch.ones(3, C, dtype=torch.bool))
    assert torch.allclose(ours, reference_set_loss(logits, target, batch_dice), atol=1e-6, rtol=0)


def test_set_voxel_cross_entropy_and_its_gradient():
    """Every voxel holds set {1, 2}: the CE is the mean of -log(p_1 + p_2); its gradient is p_c outside the set and
    p_c - p_c / (p_1 + p_2) inside (the set's classes share the push up by their probabilities)."""
    logits, target = make_batch(2, (4, 4, 4), seed=2)
    target = torch.full_like(target, IGNORE + 1)
    ce = MarginalDCandCELoss(dice_kwargs(True), {}, weight_dice=0, ignore_label=IGNORE, label_sets=SETS)
    value, grad = value_and_grad(ce, logits, target, PARTIAL[:2] | torch.tensor([[0, 1, 1, 0, 0]], dtype=torch.bool))
    p = torch.softmax(logits.detach(), 1)
    p_set = p[:, [1, 2]].sum(1)
    assert torch.allclose(value, -torch.log(p_set).mean(), atol=1e-12, rtol=0)
    expected = p.clone()
    expected[:, [1, 2]] -= p[:, [1, 2]] / p_set[:, None]
    assert torch.allclose(grad, expected / p_set.numel(), atol=1e-12, rtol=0)


@pytest.mark.parametrize('batch_dice', [True, False], ids=['batch_dice', 'case_dice'])
def test_split_of_a_set_between_its_classes_is_free_on_set_voxels(batch_dice):
    """Where a voxel holds set {1, 2}, how the probability splits between 1 and 2 changes nothing."""
    logits, target = make_batch(1, (8, 8, 8), seed=3)
    target[target == 1] = 0
    target[target == 2] = 0
    target = with_set_voxels(target, share=0.4)
    loss = marginal_loss(batch_dice, IGNORE, label_sets=SETS)
    base = loss(logits, target, torch.ones(1, C, dtype=torch.bool))
    resplit = logits.detach().clone()
    on_set = target[:, 0] == IGNORE + 1
    pair = resplit[:, [1, 2]]
    swapped = torch.where(on_set[:, None], pair.flip(1), pair)
    resplit[:, [1, 2]] = swapped
    assert not torch.equal(resplit, logits)
    assert torch.allclose(loss(resplit, target, torch.ones(1, C, dtype=torch.bool)), base, atol=1e-10, rtol=0)


def test_exclusion_term_counts_set_voxels():
    """A set voxel is one of the set's (annotated) classes, so the classes the case does not annotate are not there."""
    logits, target = make_batch(1, (6, 6, 6), seed=5)
    target = torch.full_like(target, IGNORE + 1)
    annotated = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    term = (marginal_loss(False, IGNORE, exclusion_weight=1., label_sets=SETS)(logits, target, annotated)
            - marginal_loss(False, IGNORE, label_sets=SETS)(logits, target, annotated))
    p = torch.softmax(logits.detach(), 1)
    assert torch.allclose(term, -torch.log(1 - p[0, [3, 4]].sum(0)).mean(), atol=1e-10, rtol=0)


def test_set_values_survive_nnunets_deep_supervision_downsampling():
    """nnU-Net downsamples targets by nearest neighbour: a set's value stays a set's value at every scale, and the
    deep-supervised loss is the weighted sum of the per-scale losses."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    g = torch.Generator().manual_seed(4)
    seg = torch.randint(0, C, (1, 16, 16, 16), generator=g, dtype=torch.int16)
    seg[:, :8] = IGNORE + 1
    targets = DownsampleSegForDSTransform([[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])(segmentation=seg)
    targets = [t[None].float().expand(2, -1, -1, -1, -1) for t in targets['segmentation']]
    for t in targets:
        assert (t[:, :, :t.shape[2] // 2] == IGNORE + 1).all() and set(t.unique().tolist()) <= set(range(C + 2))
    outputs = [torch.randn(2, C, *t.shape[2:], generator=g, dtype=torch.float64).requires_grad_() for t in targets]
    weights = [4 / 7, 2 / 7, 1 / 7]
    loss = marginal_loss(True, IGNORE, label_sets=SETS)
    annotated = torch.ones(2, C, dtype=torch.bool)
    dice_classes = loss.batch_dice_classes(annotated, targets[0])
    value = DeepSupervisionWrapper(loss, weights)(outputs, targets, [annotated] * 3, [dice_classes] * 3)
    expected = sum(w * loss(o, t, annotated, dice_classes) for w, o, t in zip(weights, outputs, targets))
    assert torch.allclose(value, expected, atol=1e-12, rtol=0) and dice_classes.tolist() == [True] * C + [True, False]


# ---------------------------------------------------------------- DDP (2 CPU processes, gloo)
# class 1 is annotated only on rank 0's cases, class 3 only on rank 1's
DDP_ANNOTATED = torch.tensor([[1, 1, 1, 0, 1],
                              [1, 1, 0, 0, 1],
                              [1, 0, 1, 1, 0],
                              [1, 0, 0, 1, 1]], dtype=torch.bool)


def _ddp_worker(rank: int, world: int, init_file: str):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        logits, target = make_batch(4, (8, 8, 8), seed=3)
        part = slice(2 * rank, 2 * rank + 2)
        local = logits.detach()[part].clone().requires_grad_()
        with_set = with_set_voxels(target, cases=(3,))  # a set on rank 1 only: its Dice term counts on both ranks
        for weight_ce, target, sets in ((0, target, None), (1, target, None), (0, with_set, SETS), (1, with_set, SETS)):
            kwargs = dict(weight_ce=weight_ce, weight_dice=1, ignore_label=IGNORE, label_sets=sets)
            full, full_grad = value_and_grad(MarginalDCandCELoss(dice_kwargs(True, ddp=False), {}, **kwargs),
                                             logits, target, DDP_ANNOTATED)
            mine, grad = value_and_grad(MarginalDCandCELoss(dice_kwargs(True, ddp=True), {}, **kwargs),
                                        local, target[part], DDP_ANNOTATED[part])
            # Dice: tp/fp/fn and the annotated mask are gathered, so every rank computes the full-batch Dice
            # (including class 3 on rank 0 and class 1 on rank 1, which they do not annotate locally).
            # CE: a per-rank mean; with equal voxel counts per rank its mean over ranks is the full-batch CE.
            mean = mine.detach().clone()
            dist.all_reduce(mean)
            assert torch.allclose(mean / world, full, atol=1e-6, rtol=0)
            if weight_ce == 0:
                assert torch.allclose(mine, full, atol=1e-6, rtol=0)
            # AllGatherGrad's backward sums the identical Dice gradient of all ranks and dCE_full/dx = dCE_rank/dx /
            # world, so each rank's gradient is world * the full-batch gradient (DDP then averages over ranks).
            assert torch.allclose(grad, world * full_grad[part], atol=1e-6, rtol=0)

        # full annotation under DDP: identical to nnU-Net's DDP loss, value and gradient
        target = make_batch(4, (8, 8, 8), seed=3)[1]
        full_ann = torch.ones(2, C, dtype=torch.bool)
        ref, ref_grad = value_and_grad(nnunet_loss(True, ddp=True), local, target[part])
        mine, grad = value_and_grad(marginal_loss(True, ddp=True), local, target[part], full_ann)
        assert torch.allclose(mine, ref, atol=1e-6, rtol=0) and torch.allclose(grad, ref_grad, atol=1e-6, rtol=0)
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_ddp_batch_dice_gathers_across_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'dist_init')), nprocs=2, join=True)


def _exclusion_worker(rank: int, world: int, init_file: str):
    """One case per rank: each rank's exclusion term is its case's value, as in a batch of 1 or 2."""
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        logits, target = make_batch(2, (8, 8, 8), seed=7)
        annotated = PARTIAL[[0, 1]]
        alone = exclusion_term(logits[[rank]], target[[rank]], annotated[[rank]], batch_dice=True)
        weighted = marginal_loss(True, ddp=True, exclusion_weight=1.)(logits[[rank]], target[[rank]],
                                                                      annotated[[rank]])
        mine = weighted - marginal_loss(True, ddp=True)(logits[[rank]], target[[rank]], annotated[[rank]])
        assert alone > 0 and torch.allclose(mine, alone, atol=1e-10, rtol=0)
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_ddp_exclusion_term_is_per_case(tmp_path):
    mp.spawn(_exclusion_worker, args=(2, str(tmp_path / 'dist_init')), nprocs=2, join=True)


def _collectives_per_step(loss, *args) -> int:
    """all_gather and all_reduce calls of one forward and backward pass of ``loss(*args)``."""
    calls = []
    originals = dist.all_gather, dist.all_reduce
    dist.all_gather = lambda *a, **k: calls.append('all_gather') or originals[0](*a, **k)
    dist.all_reduce = lambda *a, **k: calls.append('all_reduce') or originals[1](*a, **k)
    try:
        loss(*args).backward()
    finally:
        dist.all_gather, dist.all_reduce = originals
    return len(calls)


def _collectives_worker(rank: int, world: int, init_file: str):
    """Deep supervision under DDP: one collective per step more than nnU-Net's loss (the batch's annotated classes
    and label sets)."""
    from nnunet_suprem.training.suprem_trainer import BatchAnnotatedLoss

    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        target = torch.randint(0, C, (2, 1, 16, 16, 16), generator=g).float()
        targets = [target, target[..., ::2, ::2, ::2], target[..., ::4, ::4, ::4]]
        with_set = target.clone()
        with_set[0, :, :4] = IGNORE + 1 + rank  # each rank holds one label set
        set_targets = [with_set, with_set[..., ::2, ::2, ::2], with_set[..., ::4, ::4, ::4]]
        outputs = [torch.randn(2, C, *t.shape[2:], generator=g).requires_grad_() for t in targets]
        weights = [4 / 7, 2 / 7, 1e-6]  # nnU-Net's weights under DDP without torch.compile: every output is used
        for batch_dice in (True, False):
            stock = _collectives_per_step(DeepSupervisionWrapper(nnunet_loss(batch_dice, ddp=True), weights),
                                          outputs, targets)
            ours = BatchAnnotatedLoss(DeepSupervisionWrapper(marginal_loss(batch_dice, IGNORE, ddp=True,
                                                                           label_sets=SETS), weights), True)
            ours.annotated = DDP_ANNOTATED[2 * rank:2 * rank + 2]
            assert _collectives_per_step(ours, outputs, set_targets) == stock + batch_dice
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_ddp_annotation_mask_is_gathered_once_per_step(tmp_path):
    mp.spawn(_collectives_worker, args=(2, str(tmp_path / 'dist_init')), nprocs=2, join=True)
