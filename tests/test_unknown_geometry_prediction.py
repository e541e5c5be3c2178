"""Lateral classes on 2D natural images (NaturalImage2DIO stores no geometry): left-right mirroring is off along
every axis, the checkpoint stores None (as nnU-Net does) instead of (), and stock nnUNetv2_predict runs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io

from conftest import WORKERS, command, nnunet_folders, run, subprocess_env
from nnunet_suprem.nnunet_env import trainers_dir

LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2}


def _write_case(rng: np.random.Generator, image: Path, labels: Path | None) -> None:
    y, x = np.mgrid[:48, :48]
    seg = np.zeros((48, 48), dtype=np.uint8)
    for value, centre in ((1, 34), (2, 14)):
        seg[(x - centre + rng.integers(-2, 3)) ** 2 + (y - 24) ** 2 <= 36] = value
    io.imsave(image, (60 * seg + rng.integers(0, 40, seg.shape)).astype(np.uint8), check_contrast=False)
    if labels is not None:
        io.imsave(labels, seg, check_contrast=False)


@pytest.mark.e2e
def test_no_mirroring_axis_left_predicts_with_stock_nnunet(tmp_path):
    folders = nnunet_folders(tmp_path)
    raw = Path(folders["nnUNet_raw"]) / "Dataset902_Png"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        _write_case(rng, raw / "imagesTr" / f"png_{i:03d}_0000.png", raw / "labelsTr" / f"png_{i:03d}.png")
    _write_case(rng, raw / "imagesTs" / "test_000_0000.png", None)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "grey"}, "labels": LABELS,
                                                  "numTraining": 5, "file_ending": ".png"}))
    env = subprocess_env(folders)
    run(command("nnUNetv2_plan_and_preprocess", "-d", "902", "-c", "2d", "-np", WORKERS), env)

    env = {**env, "nnUNet_extTrainer": str(trainers_dir()), "nnUNet_n_proc_DA": "0"}
    trainer = "SuPreMTrainer_smoke"
    run(command("nnUNetv2_train", "902", "2d", "0", "-tr", trainer, "-device", "cpu"), env)
    fold = Path(folders["nnUNet_results"]) / "Dataset902_Png" / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Laterality: left-right mirroring is off (no mirroring along axes (0, 1)" in log
    assert "geometry of some cases is unknown" in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["inference_allowed_mirroring_axes"] is None

    out = tmp_path / "predicted"
    run(command("nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "902", "-c", "2d", "-f", "0",
                "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"), env)
    assert io.imread(out / "test_000.png").shape == (48, 48)
