"""Transfer planners: the target dataset's plans with the network topology of a pre-trained configuration.

The ``architecture`` block (network class, stages, features, kernels, strides, normalisation, blocks) is copied
unchanged, and so is the intensity mapping (normalisation schemes, mask flags, foreground intensity properties): the
pre-trained features were learned on it, and nnU-Net's ``nnUNetv2_move_plans_between_datasets`` keeps it too
(``target_intensities=True`` plans the target's own instead). Spacing, transpose and resampling come from the target
dataset exactly as nnU-Net's planner computes them; the patch size follows nnU-Net's rule (aspect ratio of the spacing,
clipped to the median image size, shrunk until the memory estimate fits) among the sizes valid for the topology,
and the batch size is nnU-Net's for that patch. An nnssl checkpoint prescribes its pre-training spacing (passed as
``overwrite_target_spacing``) and its recommended patch instead. Input channels and classes are not part of the topology
(nnU-Net takes them from dataset.json), so they may differ; the weight transfer adapts the first and last layers.
The memory model (reference value and GPU memory target) is the one of the planner the pre-trained plans used.
"""
from __future__ import annotations

from copy import deepcopy
from typing import Type

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    ResEncUNetPlanner,
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
    nnUNetPlannerResEncXL,
)

from nnunet_suprem.planning.pretrained import PretrainedConfiguration
from nnunet_suprem.planning.recipes import TRANSFER_PLANS_NAME
from nnunet_suprem.planning.topology import downsampling_per_axis, fit_patch_size, valid_patch_size
from nnunet_suprem.plans_presets.one_configuration import OneConfigurationMixin


class TransferPlannerMixin(OneConfigurationMixin):
    """Plans ``pretrained.configuration`` for the target dataset with the pre-trained network (see module doc)."""

    def __init__(self, dataset_name_or_id: str | int, pretrained: PretrainedConfiguration,
                 plans_name: str = TRANSFER_PLANS_NAME, overwrite_target_spacing: list[float] | None = None,
                 target_intensities: bool = False, **kwargs):
        super().__init__(dataset_name_or_id, plans_name=plans_name,
                         overwrite_target_spacing=overwrite_target_spacing, **kwargs)
        self.pretrained = pretrained
        self.intensity_mapping = (None if target_intensities
                                  else pretrained.intensity_mapping(len(self.dataset_json["channel_names"])))
        self.configuration_name = pretrained.configuration
        self.slot = "2d" if pretrained.dimensions == 2 else "3d_fullres"

    def extra_plans_entries(self) -> dict:
        entries = {"transferred_from": self.pretrained.provenance()}
        if self.intensity_mapping is not None and self.intensity_mapping[2] is not None:
            entries["foreground_intensity_properties_per_channel"] = self.intensity_mapping[2]
        return entries

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        # nnU-Net's plan for the target (resampling, normalisation, ...); then its network is replaced
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if data_identifier != self.generate_data_identifier(self.slot):
            return plan
        architecture = deepcopy(self.pretrained.architecture)
        reference_batch_size = (self.UNet_reference_val_corresp_bs_2d if len(spacing) == 2
                                else self.UNet_reference_val_corresp_bs_3d)
        reference = self._memory_reference(len(spacing))

        def estimate(patch: tuple[int, ...]) -> float:
            key = f"transfer_{patch}"
            if key not in _cache:
                _cache[key] = self.static_estimate_VRAM_usage(
                    patch, len(self.dataset_json["channel_names"]), len(self.dataset_json["labels"]),
                    architecture["network_class_name"], architecture["arch_kwargs"],
                    architecture["_kw_requires_import"])
            return _cache[key]

        divisors = downsampling_per_axis(self.pretrained.strides)
        if self.pretrained.patch_size is not None:
            patch = valid_patch_size(self.pretrained.patch_size, divisors)
        else:  # nnU-Net's default planner's condition: the smallest batch must fit (as the ResEnc planners' in 3D)
            patch = fit_patch_size(spacing, median_shape, divisors,
                                   lambda p: estimate(p) / reference_batch_size * self.UNet_min_batch_size <= reference)
        batch_size = round(reference / estimate(patch) * reference_batch_size)
        dataset_share_cap = round(approximate_n_voxels_dataset * self.max_dataset_covered
                                           / np.prod(patch, dtype=np.float64))
        if self.intensity_mapping is not None:
            plan.update(normalization_schemes=self.intensity_mapping[0], use_mask_for_norm=self.intensity_mapping[1])
        plan.update(patch_size=patch, architecture=architecture,
                    batch_size=max(min(batch_size, dataset_share_cap), self.UNet_min_batch_size))
        return plan

    def _memory_reference(self, dimensions: int) -> float:
        """The planner's memory reference value scaled to its GPU memory target (as in nnU-Net's planners)."""
        value = self.UNet_reference_val_2d if dimensions == 2 else self.UNet_reference_val_3d
        return value * self.UNet_vram_target_GB / self.UNet_reference_val_corresp_GB


class TransferPlanner(TransferPlannerMixin, ExperimentPlanner):
    """Memory model of nnU-Net's default planner (ExperimentPlanner, 8 GB)."""


class TransferResEncUNetPlanner(TransferPlannerMixin, ResEncUNetPlanner):
    """Memory model of ResEncUNetPlanner."""


class TransferResEncMPlanner(TransferPlannerMixin, nnUNetPlannerResEncM):
    """Memory model of the ResEnc M preset (nnUNetPlannerResEncM, 8 GB)."""


class TransferResEncLPlanner(TransferPlannerMixin, nnUNetPlannerResEncL):
    """Memory model of the ResEnc L preset (nnUNetPlannerResEncL, 24 GB)."""


class TransferResEncXLPlanner(TransferPlannerMixin, nnUNetPlannerResEncXL):
    """Memory model of the ResEnc XL preset (nnUNetPlannerResEncXL, 40 GB)."""


_TRANSFER_PLANNERS = (TransferPlanner, TransferResEncUNetPlanner, TransferResEncMPlanner, TransferResEncLPlanner,
                      TransferResEncXLPlanner)
# the planner named by pre-trained plans (nnU-Net's, or ours for a transfer of a transfer) -> our transfer planner
_BY_SOURCE_PLANNER: dict[str, Type[TransferPlannerMixin]] = {
    name: planner for planner in _TRANSFER_PLANNERS for name in (planner.__name__, planner.__bases__[-1].__name__)}


def transfer_planner_class(pretrained: PretrainedConfiguration) -> Type[TransferPlannerMixin]:
    """The transfer planner with the memory model of ``pretrained.planner``, else of the planner that made the
    pre-trained plans.

    Unknown planners: the ResEnc M preset for ResidualEncoderUNet, nnU-Net's default planner otherwise.
    """
    used = pretrained.planner or pretrained.plans.get("experiment_planner_used", "")
    if used in _BY_SOURCE_PLANNER:
        return _BY_SOURCE_PLANNER[used]
    if pretrained.architecture["network_class_name"].endswith(".ResidualEncoderUNet"):
        return TransferResEncMPlanner
    return TransferPlanner
