"""Planners that write a plans file with exactly one configuration."""
from __future__ import annotations

from pathlib import Path

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunet_suprem.fileio import write_json


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
        print(f"Plans were saved to {self.plans_file}")
