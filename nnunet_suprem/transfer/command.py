"""``nnunet-suprem transfer-weights``: pre-trained weights -> a file for ``nnUNetv2_train -pretrained_weights``."""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_suprem.fileio import read_json
from nnunet_suprem.nnunet_env import dataset_folder_name, preprocessed_root
from nnunet_suprem.plans_safety import check_plans
from nnunet_suprem.transfer.defaults import DEFAULT_MIN_ENCODER_FRACTION, DEFAULT_NOVEL_ROWS, NOVEL_ROWS


def preprocessed_dataset_folder(dataset_id: int | str) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_NAME`` with a clear error when the dataset is not planned."""
    folder = preprocessed_root() / dataset_folder_name(dataset_id)
    if not (folder / "dataset.json").is_file():
        raise FileNotFoundError(f"{folder / 'dataset.json'} not found: plan the dataset first "
                                f"(nnUNetv2_plan_and_preprocess or nnunet-suprem plan-transfer)")
    return folder


def load_target(dataset_id: int | str, plans_name: str) -> tuple[dict, dict]:
    """(plans, dataset.json) of a planned dataset; the plans' names checked (:func:`check_plans`)."""
    folder = preprocessed_dataset_folder(dataset_id)
    plans_file = folder / f"{plans_name}.json"
    if not plans_file.is_file():
        available = sorted(p.stem for p in folder.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint",
                                                                                   "splits_final"))
        raise FileNotFoundError(f"{plans_file} not found; plans of this dataset: {available}")
    plans = read_json(plans_file)
    check_plans(plans, plans_file)
    return plans, read_json(folder / "dataset.json")


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "transfer-weights", help="turn pre-trained weights into a file for nnUNetv2_train -pretrained_weights",
        description="Load pre-trained weights (nnU-Net checkpoint, nnssl checkpoint (encoder and stem per its "
                    "adaptation plan), SuPreM/MONAI {'net': ...} checkpoint or plain state dict, DDP 'module.' "
                    "and torch.compile '_orig_mod.' prefixes removed; always with "
                    "torch.load(weights_only=True)) into the network of the target plans, print what was loaded, "
                    "skipped and mismatched, and write a complete nnU-Net weights file that stock "
                    "`nnUNetv2_train -pretrained_weights` accepts. Segmentation heads are taken whole when the labels "
                    "are identical; otherwise the output rows of the background and of every target class the "
                    "checkpoint knows (same canonical name or synonym, e.g. postcava = inferior_vena_cava; label "
                    "values may differ) are carried; the novel classes' rows start as a lowered copy of the "
                    "background row (--novel-rows). Rows of left/right classes are kept when the checkpoint's "
                    "orientation record and the target's preprocessed cases present left-right alike in the "
                    "network's patches, exchanged between the sides when it points the other way, and not carried "
                    "when it lies on another axis or is unknown; the output records the orientation its rows fit. "
                    "A different number of input channels adapts the first convolution.")
    p.add_argument("checkpoint", help="pre-trained weights file (.pth)")
    p.add_argument("-d", dest="dataset_id", required=True, help="target dataset name or ID (planned)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="target plans identifier (default: nnUNetPlans)")
    p.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default: 3d_fullres)")
    p.add_argument("-o", dest="output", required=True, help="weights file to write (.pth)")
    p.add_argument("--encoder-only", action="store_true", help="take only the encoder; the decoder starts fresh")
    p.add_argument("--no-head-transfer", action="store_true",
                   help="re-initialise every segmentation head, even for classes the checkpoint knows")
    p.add_argument("--novel-rows", choices=NOVEL_ROWS, default=DEFAULT_NOVEL_ROWS,
                   help="how the output rows of classes the checkpoint does not know start: 'background' (default) "
                        "a copy of the background row with the bias lowered by log(k+1), so the seen classes are "
                        "predicted exactly as before; 'init': the network's own random initialisation")
    p.add_argument("--min-encoder-fraction", type=float, default=DEFAULT_MIN_ENCODER_FRACTION,
                   help=f"refuse when less of the encoder would load (default: {DEFAULT_MIN_ENCODER_FRACTION})")
    p.add_argument("--seed", type=int, default=0, help="seed for the freshly initialised layers (default: 0)")
    p.add_argument("--verbose", action="store_true", help="list every key, not just the summary and problems")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_suprem.training.case_geometry import preprocessed_orientation
    from nnunet_suprem.transfer.apply import (build_network_from_plans, image_channel_count, transfer_checkpoint,
                                              weights_orientation, write_nnunet_weights)
    from nnunet_suprem.transfer.checkpoint import read_checkpoint

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    plans, dataset_json = load_target(args.dataset_id, args.plans)
    checkpoint = read_checkpoint(args.checkpoint)
    torch.manual_seed(args.seed)
    network = build_network_from_plans(plans, dataset_json, args.configuration)
    plans_manager = PlansManager(plans)
    orientation = preprocessed_orientation(str(preprocessed_dataset_folder(args.dataset_id)), plans_manager,
                                           plans_manager.get_configuration(args.configuration),
                                           dataset_json["labels"], print)
    state, report = transfer_checkpoint(checkpoint, network, dataset_json["labels"], args.encoder_only,
                                        args.min_encoder_fraction, head_transfer=not args.no_head_transfer,
                                        novel_rows=args.novel_rows, target_orientation=orientation,
                                        image_channels=image_channel_count(dataset_json))
    network.load_state_dict(state)
    write_nnunet_weights(output, network, state, report, checkpoint, dataset_json["labels"],
                         weights_orientation(checkpoint, report, orientation))
    print(f"{checkpoint.path} ({checkpoint.format}) -> {plans['dataset_name']} {args.plans} {args.configuration}")
    print("\n".join(report.lines(loaded=args.verbose)))
    print(f"wrote {output}\nuse it with: nnUNetv2_train {args.dataset_id} {args.configuration} FOLD "
          f"-p {args.plans} -tr SuPreMFinetuneTrainer -pretrained_weights {output}")
