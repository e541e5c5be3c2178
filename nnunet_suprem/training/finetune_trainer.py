"""Fine-tuning a pre-trained network on new nnU-Net plans, datasets and classes.

``nnUNetv2_train D 3d_fullres F -tr SuPreMFinetuneTrainer -pretrained_weights FILE``

nnU-Net's ``-pretrained_weights`` calls the module function
``nnunetv2.run.run_training.load_pretrained_weights(network, file)``, not a trainer method,
and that function accepts only a complete nnU-Net checkpoint of the same architecture. A
fine-tuning trainer therefore routes that call, for its own network only, to
:meth:`SuPreMFinetuneTrainer.load_pretrained_weights`, which reads any supported format with
``weights_only=True`` and loads through :mod:`nnunet_suprem.transfer` (encoder-only,
input-channel adaptation, fresh heads, a report of every key in the training log). Every
other trainer's network still goes to nnU-Net's function. The routing is installed when a
fine-tuning trainer is constructed, i.e. in every DDP worker too.
"""
from __future__ import annotations

import weakref
from typing import Iterable

import torch
from nnunetv2.run import run_training
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_suprem.training.case_geometry import preprocessed_orientation
from nnunet_suprem.training.checkpoints import unwrap
from nnunet_suprem.training.schedules import FinetuneLRScheduler
from nnunet_suprem.training.suprem_trainer import SuPreMTrainer
from nnunet_suprem.transfer.apply import image_channel_count, pretrained_names, transfer_checkpoint
from nnunet_suprem.transfer.checkpoint import read_checkpoint
from nnunet_suprem.transfer.defaults import DEFAULT_MIN_ENCODER_FRACTION, DEFAULT_NOVEL_ROWS

_TRAINER_OF_NETWORK: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
"""id(network) -> the fine-tuning trainer that built it (entries vanish with their trainer)."""


def _route_pretrained_weights() -> None:
    """Make nnU-Net's ``-pretrained_weights`` call our trainer's loader for networks it registered."""
    stock = run_training.load_pretrained_weights
    if getattr(stock, "routes_to_finetune_trainers", False):
        return

    def load_pretrained_weights(network: nn.Module, fname: str, verbose: bool = False) -> None:
        trainer = _TRAINER_OF_NETWORK.get(id(network))
        if trainer is None:
            return stock(network, fname, verbose=verbose)
        trainer.load_pretrained_weights(fname)

    load_pretrained_weights.routes_to_finetune_trainers = True
    run_training.load_pretrained_weights = load_pretrained_weights


def set_requires_grad(network: nn.Module, parameters: Iterable[nn.Parameter], requires_grad: bool) -> nn.Module:
    """Set ``requires_grad`` of ``parameters`` (of ``network``); return the network to train from now on.

    A DDP-wrapped network is wrapped anew: DDP's reducer registers the parameters that require gradients when it
    is built, and would wait for gradients that no longer come (an error at the next step, unless
    ``find_unused_parameters``, which costs a graph traversal per step) or not average those that now do.
    """
    for parameter in parameters:
        parameter.requires_grad_(requires_grad)
    if isinstance(network, DistributedDataParallel):
        return DistributedDataParallel(network.module, device_ids=network.device_ids)
    return network


class SuPreMFinetuneTrainer(SuPreMTrainer):
    """Fine-tunes pre-trained weights: new heads first, then the whole network with a gentler rate for old layers.

    - ``-pretrained_weights FILE``: any format :func:`nnunet_suprem.transfer.read_checkpoint`
      reads; a different number of input channels adapts the first convolution, and less than
      ``min_encoder_fraction`` of the encoder loading is an error. The log lists every key as
      loaded, skipped or mismatched.
    - Heads (``head_transfer``, on by default): the output rows of the background and of every
      class the checkpoint knows (by canonical name: synonyms, other label values) are carried in
      every deep-supervision head; novel classes' rows start as a lowered copy of the background
      row (``novel_rows = "background"``; ``"init"``: nnU-Net's initialisation). A head with new
      rows trains as a new layer (full learning rate, never frozen); one whose rows are all
      carried is pre-trained. ``head_transfer = False`` re-initialises every head. Left/right
      classes' rows are kept, exchanged or new depending on where left-right lies in the
      checkpoint's patches (its orientation record) and in this configuration's preprocessed cases.
    - Schedule (SGD as nnU-Net, :func:`~nnunet_suprem.training.schedules.finetune_lr_factors`):
      pre-trained layers are frozen for ``head_epochs_fraction`` of the epochs (learning rate
      0 and no gradient, so nnU-Net's gradient clipping sees only the new layers; no such epochs
      when every layer is pre-trained, e.g. every head row carried), then warm up
      linearly over ``warmup_epochs_fraction`` to
      ``pretrained_lr_scale`` times the new layers' rate. New layers follow nnU-Net's poly decay.
    - Laterality, partial labels and validation as :class:`SuPreMTrainer`.
    - Without ``-pretrained_weights`` every layer is new: nnU-Net's schedule, from scratch.
    - Resuming with ``--c`` restores which layers are pre-trained from the checkpoint's optimiser
      state, and the schedule depends on the epoch only, so it continues exactly.
    """

    encoder_only: bool = False
    head_transfer: bool = True
    novel_rows: str = DEFAULT_NOVEL_ROWS
    min_encoder_fraction: float = DEFAULT_MIN_ENCODER_FRACTION
    head_epochs_fraction: float = 0.02
    warmup_epochs_fraction: float = 0.05
    pretrained_lr_scale: float = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pretrained_keys: frozenset[str] = frozenset()
        _route_pretrained_weights()

    @property
    def head_epochs(self) -> int:
        """Epochs that train only the new layers; none when every layer is pre-trained (nothing would train)."""
        names = {name for name, _ in unwrap(self.network).named_parameters()} if self.network is not None else set()
        if names and names <= self.pretrained_keys:
            return 0
        return max(1, round(self.head_epochs_fraction * self.num_epochs))

    @property
    def warmup_epochs(self) -> int:
        return max(1, round(self.warmup_epochs_fraction * self.num_epochs))

    def initialize(self):
        super().initialize()
        _TRAINER_OF_NETWORK[id(self.network)] = self

    def configure_optimizers(self):
        """nnU-Net's SGD, with the parameters split into new and pre-trained groups (flag ``pretrained``)."""
        groups = {False: [], True: []}
        names = {False: [], True: []}
        for name, parameter in unwrap(self.network).named_parameters():
            groups[name in self.pretrained_keys].append(parameter)
            names[name in self.pretrained_keys].append(name)
        optimizer = torch.optim.SGD(
            [{"params": groups[flag], "pretrained": flag, "param_names": names[flag]} for flag in (False, True)],
            self.initial_lr, weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        scheduler = FinetuneLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.head_epochs,
                                        self.warmup_epochs, self.pretrained_lr_scale)
        return optimizer, scheduler

    def load_pretrained_weights(self, fname: str) -> None:
        """Load ``fname`` through :mod:`nnunet_suprem.transfer`, log the report and regroup the optimiser."""
        checkpoint = read_checkpoint(fname)
        network = unwrap(self.network)
        orientation = preprocessed_orientation(self.preprocessed_dataset_folder_base, self.plans_manager,
                                               self.configuration_manager, self.dataset_json["labels"],
                                               self.print_to_log_file)
        state, report = transfer_checkpoint(checkpoint, network, self.dataset_json["labels"], self.encoder_only,
                                            self.min_encoder_fraction, head_transfer=self.head_transfer,
                                            novel_rows=self.novel_rows, target_orientation=orientation,
                                            image_channels=image_channel_count(self.dataset_json))
        network.load_state_dict(state)
        self.pretrained_keys = frozenset(pretrained_names(network, report))
        self.print_to_log_file(f"Pre-trained weights: {fname} ({checkpoint.format})"
                               f"{', encoder only' if self.encoder_only else ''}")
        for kind, line in report.entries():
            self.print_to_log_file(line, also_print_to_console=kind != "loaded", add_timestamp=False)
        self.optimizer, self.lr_scheduler = self.configure_optimizers()

    def restore_before_loading(self, checkpoint: dict) -> None:
        """Which parameters are pre-trained: they decide the optimiser groups that nnU-Net's resume loads into."""
        groups = checkpoint["optimizer_state"]["param_groups"]
        self.pretrained_keys = frozenset(n for g in groups if g.get("pretrained") for n in g["param_names"])
        if self.was_initialized:
            self.optimizer, self.lr_scheduler = self.configure_optimizers()

    def on_train_start(self):
        super().on_train_start()
        if not self.pretrained_keys:
            self.print_to_log_file("SuPreMFinetuneTrainer: no pre-trained weights (no -pretrained_weights): every "
                                   "layer is new and trains from scratch with nnU-Net's schedule.")
        else:
            frozen = (f"pre-trained layers frozen for {self.head_epochs} epoch(s), then" if self.head_epochs else
                      "every layer is pre-trained (no head-only epochs),")
            self.print_to_log_file(f"Fine-tuning schedule: {frozen} warmed up over {self.warmup_epochs} epoch(s) to "
                                   f"{self.pretrained_lr_scale}x the learning rate of new layers.")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.pretrained_keys:
            lr = next(g["lr"] for g in self.optimizer.param_groups if g["pretrained"])
            self._freeze_pretrained(lr == 0)
            self.print_to_log_file(f"Learning rate of pre-trained layers: {lr:.5g}"
                                   f"{' (frozen: training the new layers only)' if lr == 0 else ''}")

    def _freeze_pretrained(self, frozen: bool) -> None:
        """Pre-trained layers get no gradient while frozen: their gradients would enter nnU-Net's global gradient
        clipping (norm 12) and shrink the new layers' steps. Under DDP the network is re-wrapped when this changes
        (:func:`set_requires_grad`)."""
        parameters = [p for g in self.optimizer.param_groups if g["pretrained"] for p in g["params"]]
        if any(p.requires_grad == frozen for p in parameters):
            self.network = set_requires_grad(self.network, parameters, not frozen)


class SuPreMFinetuneTrainerNoHeadTransfer(SuPreMFinetuneTrainer):
    """Every segmentation head starts fresh, even the rows of classes the checkpoint knows."""
    head_transfer = False


class SuPreMFinetuneTrainerEncoder(SuPreMFinetuneTrainer):
    """Loads only the pre-trained encoder; the decoder starts fresh and trains as a new layer."""
    encoder_only = True


class SuPreMFinetuneTrainerFullLR(SuPreMFinetuneTrainer):
    """After the head-only epochs and the warm-up, pre-trained layers train at the new layers' learning rate."""
    pretrained_lr_scale = 1.0
