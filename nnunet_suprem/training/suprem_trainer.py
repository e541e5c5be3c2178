"""SuPreMTrainer and its training-length variants.

The classes live here (an importable, installed module); the thin modules in ``trainers/``
expose them to nnU-Net's ``nnUNet_extTrainer`` lookup.
"""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class SuPreMTrainer(nnUNetTrainer):
    """nnU-Net trainer for SuPreM-style supervised pre-training.

    Variants change the training length through the class attributes below (None keeps
    nnU-Net's value), so each variant is a one-line subclass with nnU-Net's naming habit.
    """

    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.epochs is not None:
            self.num_epochs = self.epochs
        if self.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.iterations_per_epoch
        if self.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.val_iterations_per_epoch


class SuPreMTrainer_5epochs(SuPreMTrainer):
    epochs = 5


class SuPreMTrainer_50epochs(SuPreMTrainer):
    epochs = 50


class SuPreMTrainer_250epochs(SuPreMTrainer):
    epochs = 250


class SuPreMTrainer_1000epochs(SuPreMTrainer):
    epochs = 1000


class SuPreMTrainer_smoke(SuPreMTrainer):
    """Checks a pipeline end to end in about a minute on a CPU: 1 epoch of 2 iterations. Not for real training."""
    epochs = 1
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1
