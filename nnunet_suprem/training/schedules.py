"""Learning-rate schedules in nnU-Net's style: stateless in the epoch, so resuming with ``--c`` is exact; and how
often a training writes the checkpoint it resumes from."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler


def checkpoint_interval(num_epochs: int, nnunet_epochs: int, nnunet_save_every: int) -> int:
    """Epochs between ``checkpoint_latest.pth`` saves for a training of ``num_epochs``: nnU-Net's share of its
    ``nnunet_epochs`` (``save_every`` 50 of 1000), at most its ``save_every`` and at least every epoch, so that a
    short training continues with ``--c`` too (with nnU-Net's 50, a training of 40 epochs saves none before its end)."""
    return max(1, min(nnunet_save_every, num_epochs * nnunet_save_every // nnunet_epochs))


def warmup_cosine_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up from 1/(warmup_steps+1) to 1 over ``warmup_steps``, then cosine decay to 0 at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EpochLRScheduler(_LRScheduler):
    """Base of our schedulers: ``step(current_epoch)`` at each epoch start, like nnU-Net's PolyLRScheduler.

    Subclasses set the learning rates in :meth:`apply` from the epoch alone (no state).
    """

    def __init__(self, optimizer: Optimizer):
        self.ctr = 0
        super().__init__(optimizer, -1)

    def apply(self, epoch: int) -> None:
        raise NotImplementedError

    def step(self, current_step: int | None = None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        self.apply(current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class WarmupCosineLRScheduler(EpochLRScheduler):
    """Sets every parameter group's lr to ``initial_lr * group.get("lr_scale", 1) * warmup_cosine_factor(step)``."""

    def __init__(self, optimizer: Optimizer, initial_lr: float, warmup_steps: int, max_steps: int):
        self.initial_lr = initial_lr
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        super().__init__(optimizer)

    def apply(self, epoch: int) -> None:
        factor = warmup_cosine_factor(epoch, self.warmup_steps, self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.initial_lr * group.get("lr_scale", 1.0) * factor

def finetune_lr_factors(epoch: int, num_epochs: int, head_epochs: int, warmup_epochs: int,
                        pretrained_scale: float) -> tuple[float, float]:
    """(new layers, pre-trained layers) learning-rate factors for fine-tuning at ``epoch``.

    New layers follow nnU-Net's poly decay ``(1 - epoch / num_epochs) ** 0.9`` throughout.
    Pre-trained layers are frozen (factor 0) for the first ``head_epochs``, then warm up
    linearly over ``warmup_epochs`` to ``pretrained_scale`` times the new layers' rate.
    """
    poly = (1 - epoch / num_epochs) ** 0.9
    if epoch < head_epochs:
        return poly, 0.0
    ramp = min(1.0, (epoch - head_epochs + 1) / (warmup_epochs + 1))
    return poly, poly * pretrained_scale * ramp


class FinetuneLRScheduler(EpochLRScheduler):
    """Sets the lr of each parameter group from :func:`finetune_lr_factors` by its ``pretrained`` flag.

    Stateless in the epoch, so resuming with ``--c`` continues the schedule exactly. When the
    pre-trained layers are unfrozen, their optimiser state (momentum gathered while their
    learning rate was 0) is cleared.
    """

    def __init__(self, optimizer: Optimizer, initial_lr: float, num_epochs: int, head_epochs: int,
                 warmup_epochs: int, pretrained_scale: float):
        self.initial_lr = initial_lr
        self.num_epochs = num_epochs
        self.head_epochs = head_epochs
        self.warmup_epochs = warmup_epochs
        self.pretrained_scale = pretrained_scale
        super().__init__(optimizer)

    def apply(self, epoch: int) -> None:
        new, pretrained = finetune_lr_factors(epoch, self.num_epochs, self.head_epochs, self.warmup_epochs,
                                              self.pretrained_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = self.initial_lr * (pretrained if group.get("pretrained") else new)
            if group.get("pretrained") and epoch == self.head_epochs:
                for parameter in group["params"]:
                    self.optimizer.state.pop(parameter, None)
