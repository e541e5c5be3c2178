"""``nnunet-suprem import-suprem``: a released SuPreM checkpoint -> nnU-Net plans with its network, and its weights.

1. The checkpoint is read (``weights_only=True``; the ``{"net": ...}`` wrapper, ``module.backbone.`` prefixes and the
   Universal Model's head handled by :mod:`nnunet_suprem.transfer.checkpoint`) and loaded into the network built for
   the target dataset's channels and classes: every tensor but the new head must load, else it is not that backbone.
2. Target plans with that network and SuPreM's preprocessing (:class:`SuPreMReleasePlanner`), then nnU-Net's
   preprocessing.
3. A weights file for ``nnUNetv2_train -tr SuPreMFinetuneTrainer -pretrained_weights``, and the report.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from nnunet_suprem.architectures import ARCHITECTURES, ReleasedArchitecture
from nnunet_suprem.fileio import read_json
from nnunet_suprem.nnunet_env import CANONICAL_READER, dataset_folder_name, preprocessed_root, raw_root
from nnunet_suprem.planning.pipeline import add_planning_arguments, plan_and_preprocess
from nnunet_suprem.planning.recipes import SUPREM_PATCH_SIZE, SUPREM_SPACING

if TYPE_CHECKING:
    from torch import nn

    from nnunet_suprem.transfer.checkpoint import Checkpoint
    from nnunet_suprem.transfer.state_dict import TransferReport

PLANS_NAME = "nnUNetPlans_suprem_{arch}"
NIFTI_ENDINGS = (".nii.gz", ".nii")


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "import-suprem", help="plan a dataset for a released SuPreM checkpoint and convert its weights",
        description="Validate a released SuPreM checkpoint (e.g. supervised_suprem_unet_2100.pth; read with "
                    "torch.load(weights_only=True)), write plans for the target dataset that use its network with "
                    f"SuPreM's preprocessing (spacing {SUPREM_SPACING} mm, patch {SUPREM_PATCH_SIZE}, CT window "
                    "[-175, 250] HU -> [0, 1], images read in RAS with NibabelIOWithReorient), run nnU-Net's "
                    "preprocessing, and write the backbone as a weights file for `nnUNetv2_train -tr "
                    "SuPreMFinetuneTrainer -pretrained_weights`. The Universal Model's head is dropped; a new head "
                    "for the target's classes is initialised.")
    p.add_argument("checkpoint", help="released SuPreM checkpoint (.pth)")
    p.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES),
                   help="; ".join(f"{a.name}: {a.release_file}" for a in ARCHITECTURES.values()))
    add_planning_arguments(p, PLANS_NAME.format(arch="<arch>"))
    p.set_defaults(plans_name=None)
    p.add_argument("-c", dest="configuration", default="3d_fullres",
                   help="name of the configuration in the plans (default: 3d_fullres)")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("P0", "P1", "P2"),
                   help=f"patch size instead of {SUPREM_PATCH_SIZE}, in the axis order of --spacing")
    p.add_argument("-o", dest="output",
                   help="weights file to write (default: <plans name>__<checkpoint name>.pth in the dataset's "
                        "$nnUNet_preprocessed folder)")
    p.add_argument("--seed", type=int, default=0, help="seed for the new head (default: 0)")
    p.add_argument("--verbose", action="store_true", help="list every key, not just the summary and problems")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from nnunet_suprem.planning.planners import SuPreMReleasePlanner
    from nnunet_suprem.transfer.apply import write_nnunet_weights
    from nnunet_suprem.transfer.checkpoint import read_checkpoint

    release = ARCHITECTURES[args.arch]
    plans_name = args.plans_name or PLANS_NAME.format(arch=args.arch)
    dataset = dataset_folder_name(args.dataset_id)
    dataset_json = read_json(raw_root() / dataset / "dataset.json")
    if dataset_json["file_ending"] not in NIFTI_ENDINGS:
        raise ValueError(f"{dataset}: SuPreM's networks expect images reoriented to RAS, which nnU-Net's "
                         f"{CANONICAL_READER} does for NIfTI only; the dataset uses {dataset_json['file_ending']!r}. "
                         f"Convert the images to .nii.gz.")
    output = Path(args.output) if args.output else (
        preprocessed_root() / dataset / f"{plans_name}__{Path(args.checkpoint).name.removesuffix('.pth')}.pth")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")

    checkpoint = read_checkpoint(args.checkpoint)
    torch.manual_seed(args.seed)
    network, state, report = load_backbone(checkpoint, release, dataset_json)
    architecture = release.architecture_block()
    plans = plan_and_preprocess(
        args.dataset_id, plans_name, args.configuration,
        lambda: SuPreMReleasePlanner(
            args.dataset_id, architecture, configuration_name=args.configuration, plans_name=plans_name,
            spacing=args.spacing or SUPREM_SPACING, patch_size=args.patch_size or SUPREM_PATCH_SIZE,
            provenance={"arch": release.name, "checkpoint": str(Path(args.checkpoint).resolve())}),
        args.num_processes, not args.no_preprocess, args.overwrite, args.verify_dataset_integrity)
    write_nnunet_weights(output, network, state, report, checkpoint, dataset_json["labels"])

    config = plans["configurations"][args.configuration]
    dropped = checkpoint.extra.get("universal_model_head")
    print(f"{checkpoint.path} ({checkpoint.format}) -> {dataset} {plans_name} {args.configuration}")
    print("\n".join(report.lines(loaded=args.verbose)))
    print(f"backbone: all {len(report.loaded)} tensors loaded ({report.encoder_loaded_fraction:.1%} of the encoder); "
          + (f"Universal Model head dropped ({len(dropped)} tensors); " if dropped else "")
          + f"new head {release.head} for the {len(dataset_json['labels'])} labels of {dataset}")
    print(f"plans: {release.network_class_name.rsplit('.', 1)[-1]}, spacing {list(config['spacing'])}, patch "
          f"{list(config['patch_size'])}, batch size {config['batch_size']}, images read with "
          f"{plans['image_reader_writer']} (RAS), transpose {plans['transpose_forward']}")
    reader = dataset_json.get("overwrite_image_reader_writer")
    if reader != CANONICAL_READER:
        print(f"note: dataset.json reads images with {reader or 'the default reader'}; these plans read them with "
              f"{CANONICAL_READER} in preprocessing, training and prediction")
    print(f"wrote {output}\nfine-tune with: nnUNetv2_train {args.dataset_id} {args.configuration} FOLD -p {plans_name} "
          f"-tr SuPreMFinetuneTrainer -pretrained_weights {output}")


def load_backbone(checkpoint: Checkpoint, release: ReleasedArchitecture,
                  dataset_json: dict) -> tuple[nn.Module, dict, TransferReport]:
    """(network, state, report): the checkpoint in the network nnU-Net builds for the dataset, head left new.

    Raises ValueError, naming the file, unless every tensor outside the head loads (another architecture, a
    truncated state dict, ...).
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_suprem.transfer.apply import transfer_checkpoint
    from nnunet_suprem.transfer.state_dict import tensor_names

    architecture = release.architecture_block()
    heads = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order")).num_segmentation_heads
    network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                     architecture["_kw_requires_import"], len(dataset_json["channel_names"]), heads,
                                     deep_supervision=False)

    def in_head(key: str) -> bool:
        return key == release.head or key.startswith(release.head + ".")

    def outside_head(key: str, why: str) -> bool:  # a skipped tensor that is a problem
        return not in_head(key)

    backbone_keys = frozenset(k for k in checkpoint.state_dict if not in_head(k))
    if checkpoint.pretrained_keys is not None:
        backbone_keys &= checkpoint.pretrained_keys
    checkpoint = dataclasses.replace(checkpoint, pretrained_keys=backbone_keys)  # the head is always new
    state, report = transfer_checkpoint(checkpoint, network, dataset_json["labels"], min_encoder_fraction=0.0)
    problems = report.problems(outside_head)
    if problems:
        total = sum(1 for names in tensor_names(network.state_dict(keep_vars=True)) if not in_head(names[0]))
        unused = f"\nits keys look like: {', '.join(report.unused[:5])}" if report.unused else ""
        raise ValueError(f"{checkpoint.path}: not a SuPreM {release.name} backbone ({release.release_file}): "
                         f"{len(problems)} of the {total} backbone tensors are missing or have another shape:\n"
                         f"{report.problem_listing(outside_head)}{unused}\nCheck --arch.")
    for key in report.skipped:
        report.skipped[key] = "new head for the target's classes; the checkpoint's head is dropped"
    return network, state, report
