"""nnunet-suprem's experiment planners: nnU-Net ``ExperimentPlanner`` subclasses that write one configuration.

nnU-Net looks up ``-pl`` planners only inside nnunetv2, so these run through ``nnunet-suprem plan-transfer``,
``nnunet-suprem plan --preset suprem`` and ``nnunet-suprem import-suprem``, or from Python after nnU-Net's fingerprint
extraction: ``SuPreMPlanner(dataset_id).plan_experiment()``.

- :class:`SuPreMPlanner`: the SuPreM recipe (1.5 mm isotropic, patch 96^3, CT window [-175, 250] HU -> [0, 1]);
- :class:`SuPreMReleasePlanner`: that recipe for a released SuPreM network, in SuPreM's array layout;
- :class:`CPUPlanner`: nnU-Net's own 3d_fullres plans with a quarter-width U-Net, for demos and checks on a CPU;
- :class:`TransferPlanner` and ``TransferResEnc{UNet,M,L,XL}Planner``: the target dataset's plans with the network
  topology of a pre-trained configuration (:func:`transfer_planner_class` picks the memory model).

Transfer plans copy the pre-trained ``architecture`` block (network class, stages, features, kernels, strides,
normalisation, blocks) unchanged, and so the intensity mapping (normalisation schemes, mask flags, foreground
intensity properties): the pre-trained features were learned on it, and nnU-Net's
``nnUNetv2_move_plans_between_datasets`` keeps it too (``target_intensities=True`` plans the target's own instead).
Spacing, transpose and resampling come from the target dataset exactly as nnU-Net's planner computes them; the patch
size follows nnU-Net's rule (aspect ratio of the spacing, clipped to the median image size, shrunk until the memory
estimate fits) among the sizes valid for the topology, and the batch size is nnU-Net's for that patch. An nnssl
checkpoint prescribes its pre-training spacing (passed as ``overwrite_target_spacing``) and its recommended patch
instead. Input channels and classes are not part of the topology (nnU-Net takes them from dataset.json), so they may
differ; the weight transfer adapts the first and last layers. The memory model (reference value and GPU memory
target) is the one of the planner the pre-trained plans used.
"""
from __future__ import annotations

import logging
import pydoc
from copy import deepcopy
from pathlib import Path
from typing import Sequence, Type

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    ResEncUNetPlanner,
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
    nnUNetPlannerResEncXL,
)
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunet_suprem.fileio import write_json
from nnunet_suprem.planning.pretrained import PretrainedConfiguration
from nnunet_suprem.planning.recipes import (
    CPU_PLANS_NAME,
    CPU_WIDTH,
    SUPREM_CT_WINDOW,
    SUPREM_PATCH_SIZE,
    SUPREM_PLANS_NAME,
    SUPREM_SPACING,
    TRANSFER_PLANS_NAME,
    ct_window_intensity_properties,
)
from nnunet_suprem.planning.topology import downsampling_per_axis, fit_patch_size, valid_patch_size

logger = logging.getLogger(__name__)

RAS_TRANSPOSE = (2, 1, 0)
"""nnU-Net's NIfTI readers present arrays as (z, y, x) (SimpleITK's order); SuPreM's MONAI pipeline feeds its
networks (x, y, z). With NibabelIOWithReorient (RAS) and this transpose the network sees (R, A, S), as in SuPreM."""


class OneConfigurationMixin:
    """Mixin for nnU-Net ExperimentPlanner subclasses: keep only configuration ``slot``, named ``configuration_name``.

    ``plan_experiment`` still plans all that nnU-Net plans (so that e.g. ``batch_dice`` is nnU-Net's choice);
    ``save_plans`` keeps one configuration, adds :meth:`extra_plans_entries` and writes the file atomically,
    replacing an old one (nnU-Net would merge the old file's other configurations in).
    """
    slot = "3d_fullres"  # nnU-Net's configuration ("2d" or "3d_fullres") that is kept
    configuration_name = "3d_fullres"

    def generate_data_identifier(self, configuration_name: str) -> str:
        # always our own data folder (ResEnc planners reuse nnUNetPlans_3d_fullres, planned at another spacing maybe)
        return f"{self.plans_identifier}_{configuration_name}"

    def extra_plans_entries(self) -> dict:
        """Top-level entries added to (or replacing those of) the plans."""
        return {}

    @property
    def plans_file(self) -> Path:
        return Path(nnUNet_preprocessed) / self.dataset_name / f"{self.plans_identifier}.json"

    def save_plans(self, plans: dict) -> None:
        configurations = plans["configurations"]
        if self.slot not in configurations:
            raise ValueError(f"nnU-Net plans no {self.slot} configuration for {self.dataset_name} "
                             f"(only {sorted(configurations)})")
        plans["configurations"] = {self.configuration_name: configurations[self.slot]}
        plans.update(self.extra_plans_entries())
        recursive_fix_for_json_export(plans)
        write_json(plans, self.plans_file)
        logger.info("Plans were saved to %s", self.plans_file)


class GivenNetworkMixin:
    """nnU-Net's memory model and batch-size rule (``ExperimentPlanner.get_plans_for_configuration``) for a network
    that is given by an ``architecture`` block instead of derived from the patch."""

    def memory_estimate(self, patch: Sequence[int], architecture: dict) -> float:
        """nnU-Net's memory estimate of the network for one sample of ``patch`` (the dataset's channels and labels)."""
        return self.static_estimate_VRAM_usage(
            tuple(patch), len(self.dataset_json["channel_names"]), len(self.dataset_json["labels"]),
            architecture["network_class_name"], architecture["arch_kwargs"], architecture["_kw_requires_import"])

    def memory_reference(self, dimensions: int) -> float:
        """The planner's memory reference value scaled to its GPU memory target."""
        value = self.UNet_reference_val_2d if dimensions == 2 else self.UNet_reference_val_3d
        return value * self.UNet_vram_target_GB / self.UNet_reference_val_corresp_GB

    def reference_batch_size(self, dimensions: int) -> int:
        """The batch size that the memory reference value corresponds to."""
        return self.UNet_reference_val_corresp_bs_2d if dimensions == 2 else self.UNet_reference_val_corresp_bs_3d

    def batch_size(self, patch: Sequence[int], estimate: float, approximate_n_voxels_dataset: float) -> int:
        """nnU-Net's batch size for a patch with memory estimate ``estimate``: what the memory target allows, at most
        ``max_dataset_covered`` of the dataset's voxels per batch, at least ``UNet_min_batch_size``."""
        fitting = round(self.memory_reference(len(patch)) / estimate * self.reference_batch_size(len(patch)))
        dataset_share_cap = round(approximate_n_voxels_dataset * self.max_dataset_covered
                                  / np.prod(patch, dtype=np.float64))
        return max(min(fitting, dataset_share_cap), self.UNet_min_batch_size)


class SuPreMPlanner(OneConfigurationMixin, ExperimentPlanner):
    """3d_fullres with SuPreM's spacing, patch size and CT intensity window.

    nnU-Net derives the network topology for that patch as usual (PlainConvUNet), and the batch size from its memory
    estimate (at least 2, at most 5% of the dataset's voxels per batch). ``spacing`` and ``patch_size`` are in
    nnU-Net's array axis order (as ``-overwrite_target_spacing``). Every channel must be CT.
    """

    def __init__(self, dataset_name_or_id: str | int, plans_name: str = SUPREM_PLANS_NAME,
                 spacing: Sequence[float] = SUPREM_SPACING, patch_size: Sequence[int] = SUPREM_PATCH_SIZE, **kwargs):
        if len(spacing) != 3 or len(patch_size) != 3:
            raise ValueError(f"spacing and patch size need three values, got {list(spacing)} and {list(patch_size)}")
        super().__init__(dataset_name_or_id, plans_name=plans_name,
                         overwrite_target_spacing=[float(s) for s in spacing], **kwargs)
        not_ct = {name: get_normalization_scheme(name).__name__ for name in self.dataset_json["channel_names"].values()
                  if get_normalization_scheme(name).__name__ != "CTNormalization"}
        if not_ct:
            raise ValueError(f"the SuPreM preset is for CT images, but the channels of {self.dataset_name} "
                             f"would use {not_ct} (dataset.json channel_names must say 'CT')")
        self.patch_size = tuple(int(p) for p in patch_size)

    def extra_plans_entries(self) -> dict:
        window = ct_window_intensity_properties(*SUPREM_CT_WINDOW)
        return {"foreground_intensity_properties_per_channel": {
            str(channel): dict(window) for channel in self.dataset_json["channel_names"]}}

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        if data_identifier != self.generate_data_identifier(self.slot):
            return super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                       approximate_n_voxels_dataset, _cache)
        patch = tuple(int(p) for p in np.array(self.patch_size)[self.determine_transpose()[0]])
        plan = self.plan_for_patch(spacing, patch, data_identifier, approximate_n_voxels_dataset, _cache)
        plan["median_image_size_in_voxels"] = median_shape
        return plan

    def plan_for_patch(self, spacing, patch: tuple[int, ...], data_identifier: str,
                       approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """The configuration for exactly ``patch`` (array axis order): nnU-Net's U-Net planned for that patch."""
        # nnU-Net clips its starting patch to the median shape: given the wanted patch as median shape, it plans
        # the topology for exactly that patch (if the patch is valid and fits its memory target)
        plan = super().get_plans_for_configuration(spacing, patch, data_identifier, approximate_n_voxels_dataset,
                                                   _cache)
        if tuple(plan["patch_size"]) != patch:
            raise ValueError(f"nnU-Net's planner cannot use patch size {patch} at spacing {tuple(spacing)}; it "
                             f"would use {tuple(plan['patch_size'])} (each axis must be divisible by 2 to the "
                             f"number of poolings along it, and the network must fit its GPU memory target)")
        return plan


class CPUPlanner(OneConfigurationMixin, ExperimentPlanner):
    """nnU-Net's 3d_fullres plans (spacing, patch, normalisation, topology) with a narrower U-Net: 8 features in the
    first stage and at most 80 (nnU-Net: 32 and 320), about a third of the step time on a CPU. For demos and quick
    checks; nnU-Net's memory estimate then chooses the batch size as usual."""

    def __init__(self, dataset_name_or_id: str | int, plans_name: str = CPU_PLANS_NAME, **kwargs):
        super().__init__(dataset_name_or_id, plans_name=plans_name, **kwargs)
        self.UNet_base_num_features, self.UNet_max_features_3d = CPU_WIDTH


class SuPreMReleasePlanner(GivenNetworkMixin, SuPreMPlanner):
    """:class:`SuPreMPlanner` (spacing, patch, CT window) for a released SuPreM network.

    - ``architecture``: the plans ``architecture`` block of the network (``nnunet_suprem.architectures``), which
      replaces nnU-Net's U-Net. Its class checks the patch size (``check_patch_size``); the batch size follows
      nnU-Net's memory model and dataset cap for that network (at least 2).
    - Images are read with ``NibabelIOWithReorient`` (reoriented to RAS, as SuPreM) for preprocessing, training,
      validation and prediction (the plans' ``image_reader_writer``, whatever the dataset.json names), and
      transposed with :data:`RAS_TRANSPOSE`, so that the pre-trained filters see the axes they were trained on.
    - ``provenance`` is recorded in the plans under ``suprem_release``.
    """

    def __init__(self, dataset_name_or_id: str | int, architecture: dict, configuration_name: str = "3d_fullres",
                 provenance: dict | None = None, **kwargs):
        super().__init__(dataset_name_or_id, **kwargs)
        self.architecture = architecture
        self.configuration_name = configuration_name
        self.provenance = provenance or {}

    def determine_reader_writer(self):
        return NibabelIOWithReorient

    def determine_transpose(self):
        return list(RAS_TRANSPOSE), list(RAS_TRANSPOSE)  # reversing the axes is its own inverse

    def extra_plans_entries(self) -> dict:
        return {**super().extra_plans_entries(), "suprem_release": self.provenance}

    def plan_for_patch(self, spacing, patch: tuple[int, ...], data_identifier: str,
                       approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """nnU-Net's plan for resampling, normalisation and batch Dice, with the released network and its batch
        size (nnU-Net's own U-Net, planned for the patch, is replaced; SuPreMPlanner's check that it can use the
        patch does not apply)."""
        pydoc.locate(self.architecture["network_class_name"]).check_patch_size(patch)
        plan = ExperimentPlanner.get_plans_for_configuration(self, spacing, patch, data_identifier,
                                                             approximate_n_voxels_dataset, _cache)
        estimate = self.memory_estimate(patch, self.architecture)
        plan.update(patch_size=patch, architecture=deepcopy(self.architecture),
                    batch_size=self.batch_size(patch, estimate, approximate_n_voxels_dataset))
        return plan


class TransferPlannerMixin(GivenNetworkMixin, OneConfigurationMixin):
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
        reference = self.memory_reference(len(spacing))
        reference_batch_size = self.reference_batch_size(len(spacing))

        def estimate(patch: tuple[int, ...]) -> float:
            key = f"transfer_{patch}"
            if key not in _cache:
                _cache[key] = self.memory_estimate(patch, architecture)
            return _cache[key]

        divisors = downsampling_per_axis(self.pretrained.strides)
        if self.pretrained.patch_size is not None:  # given in the array axis order, as the spacing
            patch = valid_patch_size(np.array(self.pretrained.patch_size)[self.determine_transpose()[0]], divisors)
        else:  # nnU-Net's default planner's condition: the smallest batch must fit (as the ResEnc planners' in 3D)
            patch = fit_patch_size(spacing, median_shape, divisors,
                                   lambda p: estimate(p) / reference_batch_size * self.UNet_min_batch_size <= reference)
        if self.intensity_mapping is not None:
            plan.update(normalization_schemes=self.intensity_mapping[0], use_mask_for_norm=self.intensity_mapping[1])
        plan.update(patch_size=patch, architecture=architecture,
                    batch_size=self.batch_size(patch, estimate(patch), approximate_n_voxels_dataset))
        return plan


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
