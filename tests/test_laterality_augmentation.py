"""Left organs stay on the left through nnU-Net's real data loader and training transforms, on anisotropic CT.

With 5 mm slices nnU-Net's 3d_fullres turns on ``do_dummy_2d_data_aug`` and rotates each slice by up to
±180°, as it does for near-square 2D patches; a 180° rotation moves the left kidney to the patient's right
with its label unchanged. SuPreMTrainer keeps such rotations within ±30° and swaps labels when it mirrors.
"""
import copy
import json

import numpy as np
import pytest
import torch

from conftest import ANISOTROPIC_LABELS as LABELS


def _trainer(cls, configuration: str, folders: dict[str, str], names: dict[str, str] | None = None):
    """A trainer on Dataset901_Aniso; ``names`` renames its labels (same values) as another dataset spells them."""
    preprocessed = f"{folders['nnUNet_preprocessed']}/Dataset901_Aniso"
    plans = json.loads(open(f"{preprocessed}/nnUNetPlans.json").read())
    dataset_json = json.loads(open(f"{preprocessed}/dataset.json").read())
    dataset_json["labels"] = {(names or {}).get(name, name): value for name, value in dataset_json["labels"].items()}
    trainer = cls({**copy.deepcopy(plans), "continue_training": False}, configuration, 0, dataset_json,
                  device=torch.device("cpu"))
    trainer.initialize()
    return trainer


@pytest.fixture
def aniso_env(anisotropic_dataset, monkeypatch, tmp_path) -> dict[str, str]:
    """Dataset901_Aniso's folders in the environment, with this test's own results folder (its trainers' logs)."""
    for name, value in anisotropic_dataset.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return anisotropic_dataset


def _kidney_left_voxels_right_of_midline(trainer, left_right_axis: int, batches: int) -> tuple[int, int]:
    """(kidney_left voxels on the patient's right of the vertebra, samples showing both) over training batches."""
    loader, _ = trainer.get_dataloaders()
    wrong = samples = 0
    for _ in range(batches):
        for sample in next(loader)["target"][0][:, 0]:
            vertebra = torch.nonzero(sample == LABELS["vertebrae_L1"])[:, left_right_axis].float()
            kidney = torch.nonzero(sample == LABELS["kidney_left"])[:, left_right_axis].float()
            if len(vertebra) and len(kidney):
                samples += 1
                wrong += int((kidney < vertebra.mean()).sum())  # index grows towards the patient's left (LPS)
    return wrong, samples


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_kidney_left_stays_left_through_nnunet_augmentation(aniso_env, configuration):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_suprem.training.variants import SuPreMTrainer_smoke

    np.random.seed(0)
    torch.manual_seed(0)
    stock = _trainer(nnUNetTrainer, configuration, aniso_env)
    stock_rotation, dummy_2d, *_ = stock.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert dummy_2d == (configuration == "3d_fullres")  # the anisotropic case this test is about
    assert stock_rotation[1] == pytest.approx(np.pi)

    ours = _trainer(SuPreMTrainer_smoke, configuration, aniso_env)
    rotation, *_ = ours.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert rotation == pytest.approx((-np.pi / 6, np.pi / 6))
    axis = len(ours.configuration_manager.patch_size) - 1  # x (left-right) is the last axis of nnU-Net's arrays
    assert ours.lateral_swap[0] == axis and ours.left_right_axes == (axis,)
    log = open(ours.log_file).read()
    assert "Laterality: rotations in planes containing the left-right axis stay within ±30 degrees" in log

    wrong, samples = _kidney_left_voxels_right_of_midline(ours, axis, batches=12)
    assert samples >= 12 and wrong == 0
    stock_wrong, stock_samples = _kidney_left_voxels_right_of_midline(stock, axis, batches=12)
    assert stock_samples >= 12 and stock_wrong > 0  # nnU-Net's mirroring and 180° rotations move it to the right


@pytest.mark.parametrize("configuration, names", [
    ("3d_fullres", {"kidney_left": "left kidney", "kidney_right": "right kidney"}),  # AMOS22, FLARE22, BTCV
    ("3d_fullres", {"kidney_left": "lkid", "kidney_right": "rkid", "vertebrae_L1": "spine"}),  # BTCV (MONAI)
    ("2d", {"kidney_left": "Kidney_Left", "kidney_right": "Right Kidney"}),
], ids=["AMOS22", "BTCV", "2d-mixed"])
def test_public_label_spellings_keep_left_left(aniso_env, configuration, names):
    """The label names of public datasets pair their sides: the swap, the rotation limit and the log hold."""
    from nnunet_suprem.training.variants import SuPreMTrainer_smoke

    np.random.seed(0)
    torch.manual_seed(0)
    ours = _trainer(SuPreMTrainer_smoke, configuration, aniso_env, names)
    rotation, *_ = ours.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    axis = len(ours.configuration_manager.patch_size) - 1
    assert ours.lateral_swap == (axis, [(LABELS["kidney_left"], LABELS["kidney_right"])])
    assert ours.inference_allowed_mirroring_axes is None or axis not in ours.inference_allowed_mirroring_axes
    assert rotation == pytest.approx((-np.pi / 6, np.pi / 6))
    log = open(ours.log_file).read()
    assert (f"Laterality: left/right label pairs {names['kidney_left']!r} (1) / {names['kidney_right']!r} (2)."
            in log)
    wrong, samples = _kidney_left_voxels_right_of_midline(ours, axis, batches=8)
    assert samples >= 8 and wrong == 0


def test_no_lateral_labels_says_mirroring_is_nnunets(aniso_env):
    from nnunet_suprem.training.variants import SuPreMTrainer_smoke

    ours = _trainer(SuPreMTrainer_smoke, "3d_fullres", aniso_env,
                    {"kidney_left": "kidney a", "kidney_right": "kidney b"})
    ours.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert ours.lateral_swap is None and ours.left_right_axes == ()
    assert "Laterality: no label names a side of the body (left/right), so mirroring and rotation are nnU-Net's." \
        in open(ours.log_file).read()
