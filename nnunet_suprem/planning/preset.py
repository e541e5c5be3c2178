"""``nnunet-suprem plan --preset suprem|cpu|nnunet|resenc-m|resenc-l|resenc-xl``: a recipe as nnU-Net plans, then
preprocessing (:func:`~nnunet_suprem.planning.pipeline.preprocess_configuration`)."""
from __future__ import annotations

import argparse
import importlib

from nnunet_suprem.planning.pipeline import add_planning_arguments, describe, plan_and_preprocess
from nnunet_suprem.planning.recipes import (CPU_PLANS_NAME, CPU_WIDTH, SUPREM_CT_WINDOW, SUPREM_PATCH_SIZE,
                                            SUPREM_PLANS_NAME, SUPREM_SPACING)

_RESENC = "nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners"
NNUNET_PRESETS = {
    "nnunet": ("nnunetv2.experiment_planning.experiment_planners.default_experiment_planner.ExperimentPlanner",
               "nnUNetPlans"),
    "resenc-m": (f"{_RESENC}.nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans"),
    "resenc-l": (f"{_RESENC}.nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans"),
    "resenc-xl": (f"{_RESENC}.nnUNetPlannerResEncXL", "nnUNetResEncUNetXLPlans"),
}
"""nnU-Net's own planners (``-pl``) and the plans name each writes: nnU-Net's plans, our preprocessing."""
PLANS_NAMES = {"suprem": SUPREM_PLANS_NAME, "cpu": CPU_PLANS_NAME,
               **{preset: plans_name for preset, (_, plans_name) in NNUNET_PRESETS.items()}}
"""The presets and the plans name each writes unless --plans-name says otherwise."""


def nnunet_planner(preset: str) -> type:
    """The nnU-Net planner class of one of :data:`NNUNET_PRESETS`."""
    module, name = NNUNET_PRESETS[preset][0].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="plan a dataset with a preset (the SuPreM recipe, or a narrow network for CPUs), then "
                     "preprocess it",
        description=f"--preset suprem: 3d_fullres at spacing {SUPREM_SPACING} mm, patch {SUPREM_PATCH_SIZE}, CT "
                    f"intensities clipped to {list(SUPREM_CT_WINDOW)} HU and scaled to [0, 1] (nnU-Net's "
                    f"CTNormalization with fixed intensity properties); nnU-Net derives the network for that patch "
                    f"and the batch size from its memory estimate. --preset cpu: nnU-Net's own 3d_fullres plans "
                    f"with a narrower U-Net ({CPU_WIDTH[0]} features in the first stage, at most {CPU_WIDTH[1]}; "
                    f"nnU-Net's: 32 and 320), for demos and checks on a CPU. --preset nnunet, resenc-m, resenc-l, "
                    f"resenc-xl: nnU-Net's own plans (the planners ExperimentPlanner, nnUNetPlannerResEncM/L/XL), "
                    f"preprocessed as nnUNetv2_preprocess does, with jobs that do not grow with the dataset "
                    f"(several times faster for merged datasets of thousands of cases). Writes "
                    f"$nnUNet_preprocessed/DatasetXXX_NAME/<plans name>.json and preprocesses 3d_fullres.")
    p.add_argument("--preset", required=True, choices=tuple(PLANS_NAMES), help="the recipe")
    add_planning_arguments(p, None, ", ".join(f"{name} for {preset}" for preset, name in PLANS_NAMES.items()))
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("P0", "P1", "P2"),
                   help=f"suprem: patch size instead of {SUPREM_PATCH_SIZE}, in the axis order of --spacing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from nnunet_suprem.planning.planners import CPUPlanner, SuPreMPlanner

    plans_name = args.plans_name or PLANS_NAMES[args.preset]
    if args.patch_size and args.preset != "suprem":
        raise ValueError(f"--patch-size is for --preset suprem; the {args.preset} preset keeps nnU-Net's patch")
    if args.preset in NNUNET_PRESETS:
        planner = nnunet_planner(args.preset)
        make_planner = lambda: planner(  # noqa: E731
            args.dataset_id, plans_name=plans_name, overwrite_target_spacing=args.spacing)
    elif args.preset == "cpu":
        make_planner = lambda: CPUPlanner(  # noqa: E731
            args.dataset_id, plans_name=plans_name, overwrite_target_spacing=args.spacing)
    else:
        make_planner = lambda: SuPreMPlanner(  # noqa: E731
            args.dataset_id, plans_name=plans_name, spacing=args.spacing or SUPREM_SPACING,
            patch_size=args.patch_size or SUPREM_PATCH_SIZE)
    plans = plan_and_preprocess(args.dataset_id, plans_name, "3d_fullres", make_planner, args.num_processes,
                                not args.no_preprocess, args.overwrite, args.verify_dataset_integrity)
    print(f"{describe(plans, '3d_fullres')}\n"
          f"train with: nnUNetv2_train {args.dataset_id} 3d_fullres FOLD -p {plans_name}")
