"""Training-length variants of our trainers (as nnU-Net's ``variants/training_length``): only the number of epochs
and of training and validation iterations per epoch change. A name says its budget:
``<trainer>_<E>epochs[_<I>iterations]``; ``_smoke`` is a pipeline check.
"""
from __future__ import annotations

from typing import TypeVar

from nnunet_suprem.training.finetune_trainer import (SuPreMFinetuneTrainer, SuPreMFinetuneTrainerEncoder,
                                                     SuPreMFinetuneTrainerFullLR)
from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

Trainer = TypeVar("Trainer", bound=type)

SMOKE = (2, 2, 1)
"""(epochs, iterations, validation iterations) of the ``_smoke`` trainers: about a minute on a CPU."""
DEMO_FAST_PRETRAIN = (30, 50, 4)
"""Pre-training budget of ``nnunet-suprem demo --fast`` (1,500 iterations on 16^3 phantoms)."""
DEMO_FAST_FINETUNE = (12, 40, 3)
"""Fine-tuning budget of ``nnunet-suprem demo --fast``, and of its from-scratch baseline."""
DEMO_FINETUNE = (40, 25, 6)
"""Fine-tuning budget of ``nnunet-suprem demo``, and of its from-scratch baseline."""


def training_length(base: Trainer, epochs: int, iterations: int | None = None, val_iterations: int | None = None,
                    suffix: str | None = None, doc: str = "") -> Trainer:
    """A subclass of ``base`` with ``epochs`` epochs of ``iterations`` training and ``val_iterations`` validation
    iterations (None: nnU-Net's), named ``<base>_<suffix>``; the suffix defaults to the budget,
    ``<epochs>epochs[_<iterations>iterations]``."""
    suffix = suffix or f"{epochs}epochs" + (f"_{iterations}iterations" if iterations is not None else "")
    name = f"{base.__name__}_{suffix}"
    budget = f"{epochs} epochs" + (f" of {iterations} iterations" if iterations is not None else "")
    return type(name, (base,), {"__module__": __name__, "__qualname__": name,
                                "__doc__": f"{base.__name__}, {budget}. {doc}".strip(), "epochs": epochs,
                                "iterations_per_epoch": iterations, "val_iterations_per_epoch": val_iterations})


SuPreMTrainer_5epochs = training_length(SuPreMTrainer, 5)
SuPreMTrainer_50epochs = training_length(SuPreMTrainer, 50)
SuPreMTrainer_250epochs = training_length(SuPreMTrainer, 250)
SuPreMTrainer_1000epochs = training_length(SuPreMTrainer, 1000)
SuPreMTrainer_smoke = training_length(SuPreMTrainer, *SMOKE, suffix="smoke",
                                      doc="Checks a pipeline end to end in about a minute on a CPU (the budget of "
                                          "SuPreMFinetuneTrainer_smoke). Not for real training.")
SuPreMTrainer_30epochs_50iterations = training_length(
    SuPreMTrainer, *DEMO_FAST_PRETRAIN, doc="Pre-training budget of ``nnunet-suprem demo --fast`` (minutes on a CPU).")
SuPreMTrainer_12epochs_40iterations = training_length(
    SuPreMTrainer, *DEMO_FAST_FINETUNE, doc="From-scratch baseline of ``nnunet-suprem demo --fast``.")
SuPreMTrainer_100epochs_25iterations = training_length(
    SuPreMTrainer, 100, 25, 6, doc="Pre-training budget of ``nnunet-suprem demo``.")
SuPreMTrainer_40epochs_25iterations = training_length(
    SuPreMTrainer, *DEMO_FINETUNE, doc="From-scratch baseline of ``nnunet-suprem demo``.")

SuPreMFinetuneTrainer_50epochs = training_length(SuPreMFinetuneTrainer, 50)
SuPreMFinetuneTrainer_100epochs = training_length(SuPreMFinetuneTrainer, 100)
SuPreMFinetuneTrainer_250epochs = training_length(SuPreMFinetuneTrainer, 250)
SuPreMFinetuneTrainer_smoke = training_length(SuPreMFinetuneTrainer, *SMOKE, suffix="smoke",
                                              doc="A pipeline check: 1 head-only epoch, 1 of the whole network.")
SuPreMFinetuneTrainer_12epochs_40iterations = training_length(
    SuPreMFinetuneTrainer, *DEMO_FAST_FINETUNE, doc="Fine-tuning budget of ``nnunet-suprem demo --fast``.")
SuPreMFinetuneTrainer_40epochs_25iterations = training_length(
    SuPreMFinetuneTrainer, *DEMO_FINETUNE, doc="Fine-tuning budget of ``nnunet-suprem demo``.")
SuPreMFinetuneTrainerEncoder_100epochs = training_length(SuPreMFinetuneTrainerEncoder, 100)
SuPreMFinetuneTrainerEncoder_40epochs_25iterations = training_length(
    SuPreMFinetuneTrainerEncoder, *DEMO_FINETUNE, doc="A recipe ablation at the demo's budget (benchmarks/transfer.py).")
SuPreMFinetuneTrainerFullLR_40epochs_25iterations = training_length(
    SuPreMFinetuneTrainerFullLR, *DEMO_FINETUNE, doc="A recipe ablation at the demo's budget (benchmarks/transfer.py).")
