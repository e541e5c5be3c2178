"""Helpers shared by the benchmark scripts: nnU-Net folders, commands, trainers and prediction in-process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def nnunet_folders(out: str | None, prefix: str) -> Path:
    """Point nnU-Net's three folders into ``out`` (default: a new temporary folder) and return it."""
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix=prefix))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(root / name)
        (root / name).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    return root


def run(*command: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]], check=True,
                   stdout=subprocess.DEVNULL)


def make_trainer(cls, dataset: str, device: torch.device, plans_name: str = "nnUNetPlans"):
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / dataset
    plans = {**json.loads((preprocessed / f"{plans_name}.json").read_text()), "continue_training": False}
    return cls(plans, "3d_fullres", 0, json.loads((preprocessed / "dataset.json").read_text()), device=device)


def predict(trainer, images: Path, out: Path, device: torch.device) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(use_mirroring=True, perform_everything_on_device=device.type == "cuda",
                                device=device, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                    [trainer.network.state_dict()], trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    predictor.predict_from_files(str(images), str(out), num_processes_preprocessing=1,
                                 num_processes_segmentation_export=1)


def test_dice(trainer, raw: Path, out: Path, device: torch.device) -> dict[str, float]:
    """Predict ``raw/imagesTs`` into ``out``; per-class Dice against ``raw/labelsTs`` with nnU-Net's metric code."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    predict(trainer, raw / "imagesTs", out, device)
    labels = {k: v for k, v in trainer.dataset_json["labels"].items() if k != "background"}
    metrics = compute_metrics_on_folder(str(raw / "labelsTs"), str(out), None, SimpleITKIO(), ".nii.gz",
                                        list(labels.values()), num_processes=1)
    return {name: metrics["mean"][value]["Dice"] for name, value in labels.items()}
