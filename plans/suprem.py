"""The SuPreM recipe as nnU-Net plans: 1.5 mm isotropic, patch 96^3, CT window [-175, 250] HU -> [0, 1]."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

from nnunet_suprem.planning.recipes import (
    SUPREM_CT_WINDOW,
    SUPREM_PATCH_SIZE,
    SUPREM_PLANS_NAME,
    SUPREM_SPACING,
    ct_window_intensity_properties,
)
from nnunet_suprem.plans_presets.one_configuration import OneConfigurationMixin


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
        # nnU-Net clips its starting patch to the median shape: given the wanted patch as median shape, it plans
        # the topology for exactly that patch (if the patch is valid and fits its memory target)
        plan = super().get_plans_for_configuration(spacing, patch, data_identifier, approximate_n_voxels_dataset,
                                                   _cache)
        if tuple(plan["patch_size"]) != patch:
            raise ValueError(f"nnU-Net's planner cannot use patch size {patch} at spacing {tuple(spacing)}; it "
                             f"would use {tuple(plan['patch_size'])} (each axis must be divisible by 2 to the "
                             f"number of poolings along it, and the network must fit its GPU memory target)")
        plan["median_image_size_in_voxels"] = median_shape
        return plan
