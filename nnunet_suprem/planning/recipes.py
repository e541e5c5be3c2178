"""The numbers of the planning presets (free of nnU-Net imports, so that the command line starts fast)."""
from __future__ import annotations

SUPREM_SPACING = (1.5, 1.5, 1.5)  # mm
SUPREM_PATCH_SIZE = (96, 96, 96)
SUPREM_CT_WINDOW = (-175.0, 250.0)  # HU, scaled to [0, 1]
SUPREM_PLANS_NAME = "nnUNetPlans_suprem"
TRANSFER_PLANS_NAME = "nnUNetPlans_transfer"
CPU_PLANS_NAME = "nnUNetPlans_cpu"
CPU_WIDTH = (8, 80)  # features of the first stage, and at most: a quarter of nnU-Net's 3d U-Net (32, 320)


def ct_window_intensity_properties(lower: float, upper: float) -> dict:
    """Intensity properties with which nnU-Net's CTNormalization maps ``[lower, upper]`` onto [0, 1], clipping outside.

    CTNormalization computes ``(clip(x, percentile_00_5, percentile_99_5) - mean) / std``.
    """
    return {"mean": lower, "std": upper - lower, "percentile_00_5": lower, "percentile_99_5": upper}
