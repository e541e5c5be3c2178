"""Plans for fine-tuning a released SuPreM backbone: the SuPreM recipe, the released network, SuPreM's array layout."""
from __future__ import annotations

import pydoc
from copy import deepcopy

import numpy as np
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

from nnunet_suprem.plans_presets.suprem import SuPreMPlanner

RAS_TRANSPOSE = (2, 1, 0)
"""nnU-Net's NIfTI readers present arrays as (z, y, x) (SimpleITK's order); SuPreM's MONAI pipeline feeds its
networks (x, y, z). With NibabelIOWithReorient (RAS) and this transpose the network sees (R, A, S), as in SuPreM."""


class SuPreMReleasePlanner(SuPreMPlanner):
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

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        if data_identifier != self.generate_data_identifier(self.slot):
            return super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                       approximate_n_voxels_dataset, _cache)
        patch = tuple(int(p) for p in np.array(self.patch_size)[self.determine_transpose()[0]])
        pydoc.locate(self.architecture["network_class_name"]).check_patch_size(patch)
        # nnU-Net's plan for resampling, normalisation and batch Dice (its own U-Net, planned for the patch as median
        # shape, is replaced below; SuPreMPlanner's check that nnU-Net's U-Net can use the patch does not apply)
        plan = super(SuPreMPlanner, self).get_plans_for_configuration(spacing, patch, data_identifier,
                                                                      approximate_n_voxels_dataset, _cache)
        estimate = self.static_estimate_VRAM_usage(
            patch, len(self.dataset_json["channel_names"]), len(self.dataset_json["labels"]),
            self.architecture["network_class_name"], self.architecture["arch_kwargs"],
            self.architecture["_kw_requires_import"])
        reference = self.UNet_reference_val_3d * self.UNet_vram_target_GB / self.UNet_reference_val_corresp_GB
        batch_size = round(reference / estimate * self.UNet_reference_val_corresp_bs_3d)
        dataset_share_cap = round(approximate_n_voxels_dataset * self.max_dataset_covered
                                  / np.prod(patch, dtype=np.float64))
        plan.update(patch_size=patch, architecture=deepcopy(self.architecture),
                    batch_size=max(min(batch_size, dataset_share_cap), self.UNet_min_batch_size),
                    median_image_size_in_voxels=median_shape)
        return plan
