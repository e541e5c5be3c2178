"""SuPreMTrainer and its variants with other behaviour (training lengths: :mod:`nnunet_suprem.training.variants`).

The classes live here (an importable, installed module); the thin modules in ``trainers/``
expose them to nnU-Net's ``nnUNet_extTrainer`` lookup.
"""
from __future__ import annotations

from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_suprem.architectures import supports_deep_supervision
from nnunet_suprem.fileio import atomic_path
from nnunet_suprem.manifest import annotated_classes_by_case, foreground_labels, group_of_case, label_sets
from nnunet_suprem.orientation import ORIENTATION_KEY, describe, needs_check, training_orientation
from nnunet_suprem.transfer.checkpoint import load_weights_only
from nnunet_suprem.training.case_geometry import dataset_orientations
from nnunet_suprem.training.checkpoints import finished_epochs_only, read_checkpoint_to_continue, unwrap
from nnunet_suprem.training.laterality import (LateralMirrorTransform, describe_pairs, lateral_directions,
                                               lateral_label_pairs, lateral_mirroring_blocker, lateral_rotation,
                                               lateral_set_pairs, rotation_planes)
from nnunet_suprem.training.partial_label_loss import MarginalDCandCELoss
from nnunet_suprem.training.partial_validation import hard_counts_per_case, restrict_summary_file
from nnunet_suprem.training.sampling import source_repeats, source_shares, with_set_locations
from nnunet_suprem.training.schedules import WarmupCosineLRScheduler, checkpoint_interval
from nnunet_suprem.training.walltime import REQUEUE_EXIT_CODE, StopSignals, stop_agreed, warning_ignored


class BatchAnnotatedLoss(nn.Module):
    """Adapts :class:`MarginalDCandCELoss` (alone or in nnU-Net's DeepSupervisionWrapper) to nnU-Net's
    ``loss(output, target)`` call.

    The trainer sets ``annotated`` (bool [B, C]) for the current batch before each step, so
    nnU-Net's own ``train_step``/``validation_step`` run unchanged. The batch Dice's classes (and the
    label sets the full-resolution target holds) are derived from it once per step (one collective under
    DDP), not once per deep-supervision output.
    """

    def __init__(self, loss: nn.Module, deep_supervision: bool):
        super().__init__()
        self.loss = loss
        self.deep_supervision = deep_supervision
        self.annotated: torch.Tensor | None = None

    def forward(self, output, target):
        if self.annotated is None:
            raise RuntimeError("BatchAnnotatedLoss: the trainer did not set the batch's annotated classes")
        marginal = self.loss.loss if self.deep_supervision else self.loss
        full_resolution = target[0] if self.deep_supervision else target
        masks = (self.annotated, marginal.batch_dice_classes(self.annotated, full_resolution))
        if self.deep_supervision:
            return self.loss(output, target, *([mask] * len(output) for mask in masks))
        return self.loss(output, target, *masks)


class SuPreMTrainer(nnUNetTrainer):
    """nnU-Net trainer for partially labelled multi-organ pre-training (SuPreM style).

    Reads the partial-label manifest of the dataset.json (``nnunet_suprem.manifest``) and
    trains with the marginal Dice + CE loss: per case, background and every class the case
    does not annotate share one "background or unannotated" channel, so the network is not
    punished for finding an organ that simply was not labelled there. Cases annotating every
    class get exactly nnU-Net's ``DC_and_CE_loss``; without a manifest this is nnU-Net.

    Variants set the class attributes below (None keeps nnU-Net's value); ``epochs`` also scales how often
    ``checkpoint_latest.pth`` is written (:func:`~nnunet_suprem.training.schedules.checkpoint_interval`).

    Checkpoints are written atomically; ``--c`` passes over a damaged one (:meth:`read_checkpoint`). SIGUSR1 or
    SIGTERM during the training loop stops it after the current iteration with ``checkpoint_latest.pth`` and exit
    code :data:`~nnunet_suprem.training.walltime.REQUEUE_EXIT_CODE` (:mod:`~nnunet_suprem.training.walltime`).
    """

    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    exclusion_weight: float = 0.0
    source_balance: float = 0.5  # sampling weight of a case ~ size_of_its_source ** -source_balance (see sampling)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        continuing = bool(plans.get("continue_training"))  # nnU-Net's --c (nnU-Net's __init__ removes the key)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.continuing = continuing
        self.stop_signals = StopSignals()
        self.epoch_iterations_done = 0
        if self.is_ddp:
            self.device = self._process_device(device)
            self.grad_scaler = self.grad_scaler if self.device.type == "cuda" else None
        if self.epochs is not None:
            self.save_every = checkpoint_interval(self.epochs, self.num_epochs, self.save_every)  # nnU-Net's values
            self.num_epochs = self.epochs
        if self.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.iterations_per_epoch
        if self.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        self.annotated_rows = self._annotated_rows(dataset_json)
        self.set_classes = {value: [dataset_json["labels"][c] for c in classes]
                            for value, (_, classes) in label_sets(dataset_json).items()}  # {set value: class values}
        self.network_has_deep_supervision = supports_deep_supervision(
            self.configuration_manager.network_arch_class_name)
        if not self.network_has_deep_supervision:
            self.enable_deep_supervision = False
            self.print_to_log_file(f"{self.configuration_manager.network_arch_class_name} has no deep supervision: "
                                   f"training its single output.")
        self.left_right_axes: tuple[int, ...] = ()  # patch axes along left-right in any case (all: geometry unknown)
        self.lateral_swap: tuple[int, list[tuple[int, int]]] | None = None  # (axis, label pairs) to swap on flips
        self.training_orientation: dict | None = None  # recorded in checkpoints (see nnunet_suprem.orientation)

    @staticmethod
    def _process_device(requested: torch.device) -> torch.device:
        """This DDP process's device. nnU-Net's constructor puts rank r on ``cuda:r``, right on the first node only;
        the launcher has made this process's GPU the current one (torchrun: ``LOCAL_RANK``), and a CPU stays the CPU."""
        return requested if requested.type != "cuda" else torch.device("cuda", torch.cuda.current_device())

    def initialize(self):
        """nnU-Net's initialize. Under DDP nnU-Net would wrap the network for ``cuda:<global rank>`` (a device that
        does not exist on a second node, nor on a CPU), so it is built unwrapped, then wrapped as nnU-Net wraps it
        (SyncBatchNorm, DDP) for this process's device; batch size and loss are the DDP ones."""
        if not self.is_ddp:
            return super().initialize()
        self.is_ddp = False
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self._set_batch_size_and_oversample()
        self.network = DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(self.network),
                                               device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.loss = self._build_loss()

    def _set_batch_size_and_oversample(self):
        """nnU-Net's split of the batch over the DDP ranks, which must be equal: DDP averages the ranks' gradients, so
        unequal shares would weigh samples unequally and not compute what one process computes."""
        world = dist.get_world_size() if self.is_ddp else 1
        if self.configuration_manager.batch_size % world:
            raise ValueError(f"{self.__class__.__name__}: the batch size {self.configuration_manager.batch_size} of "
                             f"configuration {self.configuration_name!r} does not divide over {world} DDP processes; "
                             f"use a number of processes that divides it, or plans with another batch size")
        super()._set_batch_size_and_oversample()

    def set_deep_supervision_enabled(self, enabled: bool):
        """nnU-Net's switch (``network.decoder.deep_supervision``), for networks that have deep supervision."""
        if self.network_has_deep_supervision:
            super().set_deep_supervision_enabled(enabled)

    def _annotated_rows(self, dataset_json: dict) -> dict[str, np.ndarray] | None:
        """``{case: bool [num_heads]}`` for the cases the manifest lists (others annotate everything)."""
        by_case = annotated_classes_by_case(dataset_json)
        if by_case is None:
            return None
        if self.label_manager.has_regions:
            raise ValueError("SuPreMTrainer: partial-label manifests need label (not region) training")
        labels = dataset_json["labels"]
        rows = {}
        for case, classes in by_case.items():
            row = np.zeros(self.label_manager.num_segmentation_heads, dtype=bool)
            row[0] = True
            row[[labels[c] for c in classes]] = True
            rows[case] = row
        return rows

    def annotated_mask(self, keys) -> torch.Tensor:
        """Bool [B, C] mask of the classes each case of a batch annotates."""
        everything = np.ones(self.label_manager.num_segmentation_heads, dtype=bool)
        rows = [self.annotated_rows.get(k, everything) for k in keys]
        return torch.from_numpy(np.stack(rows)).to(self.device)

    def _build_loss(self):
        loss = super()._build_loss()
        if self.annotated_rows is None:
            self._log_loss_choice("SuPreMTrainer: dataset.json has no 'partial_labels' manifest, so every case "
                                  "annotates every class: training with nnU-Net's standard loss.")
            return loss
        marginal = MarginalDCandCELoss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                                        "do_bg": False, "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1,
                                       ignore_label=self.label_manager.ignore_label,
                                       exclusion_weight=self.exclusion_weight, label_sets=self.set_classes)
        if self._do_i_compile():  # as nnU-Net compiles its Dice loss
            marginal = torch.compile(marginal)
        partial = sum(1 for row in self.annotated_rows.values() if not row.all())
        sets = ", ".join(f"{name} ({value}: {' + '.join(sorted(classes))})"
                         for value, (name, classes) in label_sets(self.dataset_json).items())
        self._log_loss_choice(f"SuPreMTrainer: partial-label manifest found, {partial} case(s) annotate only some "
                              f"classes; training with the marginal Dice + CE loss"
                              f"{f' and exclusion weight {self.exclusion_weight}' if self.exclusion_weight else ''}"
                              f"{f'; label sets (one of their classes): {sets}' if sets else ''}.")
        if isinstance(loss, DeepSupervisionWrapper):
            loss.loss = marginal  # keep nnU-Net's deep-supervision weights
            return BatchAnnotatedLoss(loss, deep_supervision=True)
        return BatchAnnotatedLoss(marginal, deep_supervision=False)

    def _annotated_values(self, row: np.ndarray) -> set[int]:
        """The label values a case with annotation ``row`` annotates: its classes and the sets of them."""
        classes = set(np.flatnonzero(row).tolist())
        return classes | {value for value, members in self.set_classes.items() if classes.issuperset(members)}

    def _log_loss_choice(self, message: str) -> None:
        """Log which loss trains when it is first built (under DDP, :meth:`initialize` builds it again)."""
        if not self.was_initialized:
            self.print_to_log_file(message)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self._configure_laterality(mirror_axes or ())
        rotation, initial_patch_size = self._limit_lateral_rotation(rotation, dummy_2d, initial_patch_size)
        # nnU-Net stores None, not (), when no axis may be mirrored: its predictor takes max() of the axes
        self.inference_allowed_mirroring_axes = tuple(a for a in mirror_axes or ()
                                                      if a not in self.left_right_axes) or None
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def _configure_laterality(self, mirror_axes: tuple[int, ...]) -> None:
        """Find the left-right patch axis and decide how mirroring along it keeps laterality (see ``laterality``)."""
        labels = foreground_labels(self.dataset_json)
        pairs, unpaired = lateral_label_pairs(labels)
        if not pairs and not unpaired:
            self.print_to_log_file("Laterality: no label names a side of the body (left/right), so mirroring and "
                                   "rotation are nnU-Net's.")
            return
        self.print_to_log_file(f"Laterality: left/right label pairs {describe_pairs(labels, pairs) or 'none'}"
                               f"{f'; lateral labels that cannot be swapped: {unpaired}' if unpaired else ''}.")
        folder = self.preprocessed_dataset_folder
        cases = infer_dataset_class(folder).get_identifiers(folder)
        orientations = dataset_orientations(folder, cases, self.print_to_log_file)
        self._record_orientation(orientations.values())
        patch_dim = len(self.configuration_manager.patch_size)
        directions = lateral_directions(orientations.values(), self.plans_manager.transpose_forward, patch_dim)
        self.left_right_axes = tuple(range(patch_dim)) if directions is None \
            else tuple(sorted({axis for axis, _ in directions if axis is not None}))
        mirrored = None if directions is None \
            else {(axis, sign) for axis, sign in directions if axis is None or axis in mirror_axes}
        if mirrored is not None and all(axis is None for axis, _ in mirrored):
            return
        symmetric = self.annotated_rows is None or all(row[a] == row[b] for row in self.annotated_rows.values()
                                                        for a, b in pairs)
        set_pairs, unswappable_sets = lateral_set_pairs(label_sets(self.dataset_json), labels, pairs)
        pairs, unpaired = pairs + set_pairs, unpaired + [f"set {name}" for name in unswappable_sets]
        blocker = lateral_mirroring_blocker(mirrored, unpaired, symmetric)
        if blocker is None:
            (axis, _), = mirrored
            self.lateral_swap = (axis, pairs)
            self.print_to_log_file(f"Laterality: mirroring along the left-right axis {axis} swaps "
                                   f"{len(pairs)} left/right label pair(s); test-time mirroring along it is off.")
        else:
            self.print_to_log_file(f"Laterality: left-right mirroring is off (no mirroring along axes "
                                   f"{self.left_right_axes} in training or inference) because {blocker}.")

    def _record_orientation(self, orientations) -> None:
        """Keep the orientation the network learns left and right in, for the checkpoints."""
        self.training_orientation = training_orientation(orientations, self.plans_manager.plans["image_reader_writer"],
                                                         self.plans_manager.transpose_forward,
                                                         len(self.configuration_manager.patch_size))
        if needs_check(self.training_orientation):
            self.print_to_log_file(
                f"Laterality: every training case is read by {self.training_orientation['reader']} with "
                f"{describe(self.training_orientation['left_right'])}, so the network ties left and right to that "
                f"index order (recorded in the checkpoints). Test images oriented otherwise would come out swapped "
                f"in nnUNetv2_predict: check them first with 'nnunet-suprem check-orientation MODEL_FOLDER -i "
                f"INPUT_FOLDER' (or set 'overwrite_image_reader_writer': 'NibabelIOWithReorient' in dataset.json "
                f"before planning, which reorients every image).")

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint at the end of the current epoch (:meth:`write_checkpoint`)."""
        self.write_checkpoint(filename, self.current_epoch + 1)

    def write_checkpoint(self, filename: str, epochs_done: int) -> None:
        """nnU-Net's checkpoint of a training that finished ``epochs_done`` epochs (its ``current_epoch``, where
        ``--c`` starts; the log up to there), plus the training orientation when left and right depend on it, in
        one atomic write (temporary name, then rename): a kill leaves the previous file. Rank 0 only, as nnU-Net."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)  # writes nothing; nnU-Net says so when checkpointing is disabled
            return
        checkpoint = {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": finished_epochs_only(self.logger.get_checkpoint(), epochs_done),
            "_best_ema": self._best_ema,
            "current_epoch": epochs_done,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }
        if self.training_orientation is not None:
            checkpoint[ORIENTATION_KEY] = self.training_orientation
        with atomic_path(filename) as tmp:
            torch.save(checkpoint, tmp)

    def read_checkpoint(self, filename: str) -> tuple[str, dict]:
        """The checkpoint file to load and its contents, read with ``weights_only``: ``filename``, or with ``--c``,
        when a kill during an older version's write damaged it, the next readable one in nnU-Net's order
        (:func:`~nnunet_suprem.training.checkpoints.read_checkpoint_to_continue`)."""
        if self.continuing:
            return read_checkpoint_to_continue(filename, self.print_to_log_file)
        return filename, load_weights_only(filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net's resume from the file :meth:`read_checkpoint` picks (so nnU-Net's own read, which unpickles
        anything, opens only a readable checkpoint of plain data), after :meth:`restore_before_loading`."""
        if isinstance(filename_or_checkpoint, str):
            filename_or_checkpoint, checkpoint = self.read_checkpoint(filename_or_checkpoint)
            self.restore_before_loading(checkpoint)
        super().load_checkpoint(filename_or_checkpoint)

    def restore_before_loading(self, checkpoint: dict) -> None:
        """What a subclass takes from a checkpoint before nnU-Net loads it (nothing here)."""

    def on_train_start(self):
        """Catch the wall-time signals (``walltime``) before nnU-Net forks its data-augmentation workers, which
        then ignore SIGUSR1."""
        caught = self.stop_signals.install()
        super().on_train_start()
        if not caught:
            self.print_to_log_file("SIGUSR1 and SIGTERM are not caught (the training runs outside the main thread): "
                                   "they end the training without a checkpoint.")

    def on_train_end(self):
        super().on_train_end()
        self.stop_signals.uninstall()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.epoch_iterations_done = 0

    def _stop_for_requeue(self) -> NoReturn:
        """Write ``checkpoint_latest.pth`` with the current epoch unfinished (``--c`` repeats it, no more), then exit
        with REQUEUE_EXIT_CODE on every rank once rank 0 has written it."""
        received = self.stop_signals.received
        self.print_to_log_file(
            f"{received.name if received else 'A stop signal to another rank'}: stopping after iteration "
            f"{self.epoch_iterations_done} of {self.num_iterations_per_epoch} of epoch {self.current_epoch}. "
            f"checkpoint_latest.pth continues with epoch {self.current_epoch}: rerun the same command with --c "
            f"(exit code {REQUEUE_EXIT_CODE}).")
        self.write_checkpoint(join(self.output_folder, "checkpoint_latest.pth"), self.current_epoch)
        if self.is_ddp:
            dist.barrier()
        self.stop_signals.uninstall()
        raise SystemExit(REQUEUE_EXIT_CODE)

    def _limit_lateral_rotation(self, rotation: tuple[float, float], dummy_2d: bool,
                                initial_patch_size) -> tuple[tuple[float, float], np.ndarray]:
        """Rotation within ±30° in planes containing left-right (see ``laterality``) and its initial patch size."""
        patch_size = self.configuration_manager.patch_size
        limited = lateral_rotation(rotation, self.left_right_axes, rotation_planes(len(patch_size), dummy_2d))
        if limited == tuple(rotation):
            return rotation, initial_patch_size
        self.print_to_log_file(f"Laterality: rotations in planes containing the left-right axis stay within "
                               f"±{np.rad2deg(limited[1]):.0f} degrees (nnU-Net: ±{np.rad2deg(rotation[1]):.0f}), so "
                               f"left organs stay on the left.")
        initial_patch_size = get_patch_size(patch_size, limited, limited, limited, (0.85, 1.25))
        if dummy_2d:
            initial_patch_size[0] = patch_size[0]
        return limited, initial_patch_size

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, *args, **kwargs):
        allowed = tuple(a for a in mirror_axes or () if self.lateral_swap is not None or a not in self.left_right_axes)
        transforms = super().get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, allowed,
                                                     do_dummy_2d_data_aug, *args, **kwargs)
        if self.lateral_swap is not None:
            steps = transforms.transforms
            index = next(i for i, t in enumerate(steps) if type(t) is MirrorTransform)
            steps[index] = LateralMirrorTransform(allowed, *self.lateral_swap)
        return transforms

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.set_classes:  # foreground oversampling also draws set-labelled voxels
            dataset_tr, dataset_val = (with_set_locations(d, self.set_classes) for d in (dataset_tr, dataset_val))
        source_of = group_of_case(self.dataset_json)
        if source_of and self.source_balance:
            repeats = source_repeats(dataset_tr.identifiers, source_of, self.source_balance)
            dataset_tr.identifiers = sorted(case for case, n in repeats.items() for _ in range(n))
            shares = ", ".join(f"{s}: {p:.0%}" for s, p in sorted(source_shares(repeats, source_of).items()))
            self.print_to_log_file(f"Source-balanced sampling (alpha {self.source_balance}), share of draws: {shares}")
        return dataset_tr, dataset_val

    def _set_batch_annotation(self, batch: dict) -> None:
        if isinstance(self.loss, BatchAnnotatedLoss):
            self.loss.annotated = self.annotated_mask(batch["keys"])

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step; then, when any rank caught a stop signal, :meth:`_stop_for_requeue`."""
        self._set_batch_annotation(batch)
        outputs = super().train_step(batch)
        self.epoch_iterations_done += 1
        if stop_agreed(self.stop_signals.received is not None, self.device):
            self._stop_for_requeue()
        return outputs

    def on_train_epoch_end(self, train_outputs: list[dict]):
        """nnU-Net's epoch end (it logs the mean train loss of all processes). A non-finite mean loss stops the
        training when the weights are no longer finite, where nnU-Net would train on and finish with exit code 0;
        with finite weights it was steps that AMP's gradient scaler skipped (a NaN or infinite loss now and then is
        normal in float16): logged, and training goes on. DDP processes hold the same weights and decide alike."""
        super().on_train_epoch_end(train_outputs)
        loss = self.logger.get_value("train_losses", step=self.current_epoch)
        if np.isfinite(loss):
            return
        if all(torch.isfinite(p).all() for p in self.network.parameters()):
            skipped = sum(not np.isfinite(output["loss"]).all() for output in train_outputs)
            self.print_to_log_file(f"{type(self).__name__}: {skipped} of the {len(train_outputs)} iterations of "
                                   f"epoch {self.current_epoch} in this process had a non-finite loss; the weights "
                                   f"are finite (AMP's gradient scaler skipped those steps): training goes on.")
            return
        message = (f"{type(self).__name__}: the mean train loss of epoch {self.current_epoch} is {loss}: the "
                   f"training diverged or its data hold NaN or infinite values, and the weights are no longer "
                   f"finite. Stopping (checkpoints written so far are kept); lower the learning rate or check the "
                   f"preprocessed data.")
        self.print_to_log_file(message)
        raise RuntimeError(message)

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step; with a manifest, tp/fp/fn count per case and only annotated classes."""
        if not isinstance(self.loss, BatchAnnotatedLoss):
            return super().validation_step(batch)
        self._set_batch_annotation(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            loss = self.loss(output, target)
        if self.enable_deep_supervision:
            output, target = output[0], target[0]
        counts = hard_counts_per_case(output, target)
        keep = self.loss.annotated[:, 1:]
        tp, fp, fn = ((c * keep).sum(0).detach().cpu().numpy() for c in counts)
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn}

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation, which ignores SIGUSR1 (it cannot resume midway); then summary.json judges
        each class only on cases that annotate it, and label sets as unions (``partial_validation``)."""
        with warning_ignored():
            super().perform_actual_validation(save_probabilities)
        if self.annotated_rows is None or self.local_rank != 0:
            return
        summary_file = join(self.output_folder, "validation", "summary.json")
        annotated = {case: self._annotated_values(row) for case, row in self.annotated_rows.items()}
        summary = restrict_summary_file(summary_file, annotated, self.dataset_json["file_ending"], self.set_classes,
                                        self.plans_manager.image_reader_writer_class(), self.label_manager.ignore_label)
        self.print_to_log_file("Mean Validation Dice on annotated classes only (summary.json rewritten): ",
                               summary["foreground_mean"]["Dice"], also_print_to_console=True)


class SuPreMTrainerExclusion(SuPreMTrainer):
    """Adds the exclusion term: on voxels labelled with a class the case annotates, probability on the classes the
    case does not annotate (per the manifest) is penalised (``partial_label_loss.exclusion_per_case``)."""
    exclusion_weight = 1.0


class SuPreMTrainerRecipe(SuPreMTrainer):
    """SuPreM's optimiser recipe: AdamW (lr 1e-3, weight decay 1e-5), linear warm-up over 2% of the epochs
    (20 of 1000), then cosine decay, instead of nnU-Net's SGD with poly decay."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.weight_decay = 1e-5

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        warmup = max(1, round(0.02 * self.num_epochs))
        return optimizer, WarmupCosineLRScheduler(optimizer, self.initial_lr, warmup, self.num_epochs)
