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
    os.environ.setdefault("nnUNet_def_n_proc", str(processes()))
    return root


def processes() -> int:
    """Worker processes of a benchmark's commands (-np, nnU-Net's pools): nnUNet_def_n_proc, else 2."""
    return int(os.environ.get("nnUNet_def_n_proc", "2"))


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


def planned_source(dataset_id: int = 700, name: str = "Source") -> Path:
    """Preprocessed folder of a tiny phantom dataset (2 RAS cases, 3d_fullres), made once per --out folder."""
    folder = Path(os.environ["nnUNet_preprocessed"]) / f"Dataset{dataset_id:03d}_{name}"
    if not (folder / "nnUNetPlans.json").is_file():
        run("nnunet-suprem", "synth", "-d", str(dataset_id), "--name", name, "--hospitals", "hospB", "--cases", "2",
            "-np", "1")
        run("nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "1")
    return folder


def derived_dataset(source: Path, name: str, labels: dict[str, int] | None = None,
                    patch_size: list[int] | None = None) -> tuple[Path, Path]:
    """A preprocessed dataset ``name`` with ``source``'s plans (3d_fullres patch ``patch_size``), dataset.json
    (``labels``) and fingerprint, and an empty data folder; returns (dataset folder, data folder)."""
    plans = {**json.loads((source / "nnUNetPlans.json").read_text()), "dataset_name": name}
    if patch_size is not None:
        plans["configurations"]["3d_fullres"]["patch_size"] = patch_size
    dataset_json = json.loads((source / "dataset.json").read_text())
    if labels is not None:
        dataset_json["labels"] = labels
    folder = Path(os.environ["nnUNet_preprocessed"]) / name
    data = folder / plans["configurations"]["3d_fullres"]["data_identifier"]
    data.mkdir(parents=True, exist_ok=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "dataset_fingerprint.json").write_text((source / "dataset_fingerprint.json").read_text())
    return folder, data


def source_case(source: Path) -> tuple[Path, dict]:
    """(file stem, properties) of the first preprocessed case of ``source``'s 3d_fullres data folder."""
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    plans = json.loads((source / "nnUNetPlans.json").read_text())
    stem = sorted((source / plans["configurations"]["3d_fullres"]["data_identifier"]).glob("*.pkl"))[0]
    return stem.with_suffix(""), load_pickle(str(stem))
