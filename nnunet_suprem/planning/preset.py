"""``nnunet-suprem plan --preset suprem``: the SuPreM recipe as nnU-Net plans, then preprocessing."""
from __future__ import annotations

import argparse

from nnunet_suprem.planning.pipeline import add_planning_arguments, describe, plan_and_preprocess
from nnunet_suprem.planning.recipes import SUPREM_CT_WINDOW, SUPREM_PATCH_SIZE, SUPREM_PLANS_NAME, SUPREM_SPACING

PRESETS = ("suprem",)


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="plan a dataset with a preset (the SuPreM recipe), then preprocess it",
        description=f"--preset suprem: 3d_fullres at spacing {SUPREM_SPACING} mm, patch {SUPREM_PATCH_SIZE}, CT "
                    f"intensities clipped to {list(SUPREM_CT_WINDOW)} HU and scaled to [0, 1] (nnU-Net's "
                    f"CTNormalization with fixed intensity properties); nnU-Net derives the network for that patch "
                    f"and the batch size from its memory estimate. Writes "
                    f"$nnUNet_preprocessed/DatasetXXX_NAME/<plans name>.json.")
    p.add_argument("--preset", required=True, choices=PRESETS, help="the recipe")
    add_planning_arguments(p, SUPREM_PLANS_NAME)
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("P0", "P1", "P2"),
                   help=f"patch size instead of {SUPREM_PATCH_SIZE}, in the axis order of --spacing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from nnunet_suprem.planning.planners import SuPreMPlanner

    plans = plan_and_preprocess(
        args.dataset_id, args.plans_name, "3d_fullres",
        lambda: SuPreMPlanner(args.dataset_id, plans_name=args.plans_name, spacing=args.spacing or SUPREM_SPACING,
                              patch_size=args.patch_size or SUPREM_PATCH_SIZE),
        args.num_processes, not args.no_preprocess, args.overwrite, args.verify_dataset_integrity)
    print(f"{describe(plans, '3d_fullres')}\n"
          f"train with: nnUNetv2_train {args.dataset_id} 3d_fullres FOLD -p {args.plans_name}")
