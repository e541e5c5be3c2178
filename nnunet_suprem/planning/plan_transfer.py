"""``nnunet-suprem plan-transfer``: target plans with a pre-trained model's network topology, then preprocessing."""
from __future__ import annotations

import argparse

from nnunet_suprem.planning.pipeline import add_planning_arguments, describe, plan_and_preprocess
from nnunet_suprem.planning.pretrained import load_pretrained
from nnunet_suprem.planning.recipes import TRANSFER_PLANS_NAME


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan-transfer", help="plan a dataset with a pre-trained model's network topology, then preprocess it",
        description="Write plans for the target dataset whose network (class, stages, features, kernels, strides, "
                    "normalisation, blocks) and intensity mapping (normalisation schemes and intensity statistics, "
                    "on which the pre-trained features were learned) are the pre-trained configuration's, while "
                    "spacing, patch size (valid for that network, fitted to the target images and nnU-Net's memory "
                    "estimate) and batch size follow the target dataset as nnU-Net plans them. Then run nnU-Net's "
                    "preprocessing for it. The plans record the source under 'transferred_from'. An nnssl "
                    "checkpoint (self-supervised ResEnc-L, with its adaptation plan) gives its network, its "
                    "pre-training spacing (unless --spacing; the target's when it did not resample), its recommended "
                    "fine-tuning patch and its normalisation schemes (z-score per image).")
    add_planning_arguments(p, TRANSFER_PLANS_NAME)
    p.add_argument("--pretrained", required=True, metavar="MODEL_FOLDER_PLANS_OR_NNSSL_CHECKPOINT",
                   help="trained model folder ($nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION, "
                        "with plans.json), a plans .json file, or an nnssl checkpoint (.pth with "
                        "nnssl_adaptation_plan)")
    p.add_argument("-c", dest="configuration", default=None,
                   help="pre-trained configuration, also the target configuration's name (default: the one a model "
                        "folder was trained with, else 3d_fullres; for an nnssl checkpoint only the target's name)")
    p.add_argument("--target-intensities", action="store_true",
                   help="normalise with the target dataset's own intensity statistics and schemes, as nnU-Net plans "
                        "them, instead of the pre-trained model's (for a different modality or channel layout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from nnunet_suprem.planning.planners import transfer_planner_class

    pretrained = load_pretrained(args.pretrained, args.configuration)
    planner_class = transfer_planner_class(pretrained)
    plans = plan_and_preprocess(
        args.dataset_id, args.plans_name, pretrained.configuration,
        lambda: planner_class(args.dataset_id, pretrained, plans_name=args.plans_name,
                              overwrite_target_spacing=args.spacing or pretrained.spacing,
                              target_intensities=args.target_intensities),
        args.num_processes, not args.no_preprocess, args.overwrite, args.verify_dataset_integrity)
    print(f"{describe(plans, pretrained.configuration)}\n"
          f"network of {pretrained.plans_file} ({pretrained.configuration}); memory model of {planner_class.__name__}\n"
          f"fine-tune with: nnUNetv2_train {args.dataset_id} {pretrained.configuration} FOLD -p {args.plans_name} "
          f"-tr SuPreMFinetuneTrainer -pretrained_weights CHECKPOINT")
