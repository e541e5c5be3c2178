"""Export time of a 5-fold 3d_fullres model: ``nnunet-suprem export`` vs ``nnUNetv2_export_model_to_zip``, side by side.

    python benchmarks/export.py [--scale 1] [--repeats 3] [--out DIR]

Builds ``Dataset990_ExportBench/SuPreMTrainer__nnUNetPlans__3d_fullres`` in --out (default: a temporary folder,
removed at the end): plans for nnU-Net's default 3d_fullres PlainConvUNet of CT (6 stages, 32-320 features, patch
128^3; --scale N divides the features by N for a quick check), and one checkpoint made as nnU-Net's trainer saves
it (network weights, SGD momentum state after a step, a 1000-epoch log, init_args, trainer_name SuPreMTrainer,
inference_allowed_mirroring_axes), copied to folds 0-4, with the files nnU-Net's export requires beside it
(progress.png, validation/summary.json, dataset_fingerprint.json). Then times, in this process and alternating,
nnU-Net's ``export_pretrained_model`` (the function behind nnUNetv2_export_model_to_zip) and ours on that folder,
--repeats times each after one untimed warm-up round (its times are printed too: ours then also imports nnU-Net's
trainer modules, a few seconds once per process). Printed: median seconds and the ratio ours / nnU-Net's
(target <= 1.2).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from common import nnunet_folders

DATASET = "Dataset990_ExportBench"
FOLDS = ("0", "1", "2", "3", "4")


def plans(scale: int) -> dict:
    """nnU-Net's default 3d_fullres plans of a CT dataset at 1.5 mm (PlainConvUNet, 6 stages, patch 128^3)."""
    features = [min(32 * 2 ** i, 320) // scale for i in range(6)]
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 6, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 6, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
                        "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    configuration = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                     "batch_size": 2, "patch_size": [128, 128, 128], "median_image_size_in_voxels": [256, 256, 256],
                     "spacing": [1.5, 1.5, 1.5], "normalization_schemes": ["CTNormalization"],
                     "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                     "resampling_fn_seg": "resample_data_or_seg_to_shape",
                     "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                     "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                     "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                     "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                            "force_separate_z": None},
                     "architecture": architecture, "batch_dice": False}
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1.5] * 3,
            "original_median_shape_after_transp": [256, 256, 256], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": configuration}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {}}


def build(root: Path, scale: int) -> Path:
    """The 5-fold model folder (see module doc)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{f"class_{i}": i for i in range(1, 26)}},
                    "numTraining": 100, "file_ending": ".nii.gz"}
    folder = root / "nnUNet_results" / DATASET / "SuPreMTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    plan = plans(scale)
    for name, content in (("plans.json", plan), ("dataset.json", dataset_json), ("dataset_fingerprint.json", {})):
        (folder / name).write_text(json.dumps(content))
    architecture = plan["configurations"]["3d_fullres"]["architecture"]
    network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                     architecture["_kw_requires_import"], 1, 26, deep_supervision=True)
    optimizer = torch.optim.SGD(network.parameters(), 0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    for p in network.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    logging = {k: [0.5] * 1000 for k in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "lrs",
                                         "epoch_start_timestamps", "epoch_end_timestamps")}
    logging["dice_per_class_or_region"] = [[0.5] * 25] * 1000
    checkpoint = {"network_weights": network.state_dict(), "optimizer_state": optimizer.state_dict(),
                  "grad_scaler_state": None, "logging": logging, "_best_ema": 0.9, "current_epoch": 1000,
                  "init_args": {"plans": plan, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json,
                                "device": torch.device("cpu")},
                  "trainer_name": "SuPreMTrainer", "inference_allowed_mirroring_axes": (0, 1)}
    for fold in FOLDS:
        (folder / f"fold_{fold}" / "validation").mkdir(parents=True)
        (folder / f"fold_{fold}" / "validation" / "summary.json").write_text("{}")
        (folder / f"fold_{fold}" / "progress.png").write_bytes(os.urandom(200_000))
        if fold == FOLDS[0]:
            torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
        else:
            shutil.copy(folder / "fold_0" / "checkpoint_final.pth", folder / f"fold_{fold}" / "checkpoint_final.pth")
    size = (folder / "fold_0" / "checkpoint_final.pth").stat().st_size
    print(f"{sum(p.numel() for p in network.parameters()) / 1e6:.1f}M parameters, checkpoint {size / 1e6:.0f} MB, "
          f"5 folds")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="divide the network's features by this (quick check)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="work folder (default: temporary, removed)")
    args = parser.parse_args()
    root = nnunet_folders(args.out, "export_bench_")
    os.environ.pop("nnUNet_extTrainer", None)
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    from nnunet_suprem.sharing.export import export_model

    try:
        folder = build(root, args.scale)
        exporters = {
            "nnUNetv2_export_model_to_zip": lambda out: export_pretrained_model(
                990, str(out), ("3d_fullres",), "SuPreMTrainer", "nnUNetPlans", FOLDS),
            "nnunet-suprem export": lambda out: export_model(folder, out, overwrite=True),
        }
        times = {name: [] for name in exporters}
        for repeat in range(args.repeats + 1):  # the first round is a warm-up: one-time imports, file cache
            for name, export in exporters.items():
                out = root / f"{name.split()[0]}.zip"
                out.unlink(missing_ok=True)
                start = time.perf_counter()
                export(out)
                seconds = time.perf_counter() - start
                times[name].extend([seconds] if repeat else [])
                print(f"  {name}: {seconds:.2f} s{' (warm-up)' if not repeat else ''}, "
                      f"{out.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, median in medians.items():
            print(f"{name}: median {median:.2f} s over {args.repeats}")
        print(f"ratio nnunet-suprem export / nnUNetv2_export_model_to_zip: "
              f"{medians['nnunet-suprem export'] / medians['nnUNetv2_export_model_to_zip']:.3f} (target <= 1.2)")
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
