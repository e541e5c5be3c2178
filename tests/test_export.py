"""``nnunet-suprem export``: a model trained with a SuPreM trainer, exported, installed with nnU-Net's own command,
predicts voxel for voxel as the plugin does in a process that cannot import this plugin, left kidney on the left."""
import copy
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import WORKERS, cli, command, nnunet_folders, run, subprocess_env, tree_digest
from nnunet_suprem.nnunet_env import trainers_dir

LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2}
TRAINER = "SuPreMTrainer_1epoch_30iterations"
TRAINER_MODULE = f'''from nnunet_suprem.training.suprem_trainer import SuPreMTrainer


class {TRAINER}(SuPreMTrainer):
    epochs = 1
    iterations_per_epoch = 30
    val_iterations_per_epoch = 1
'''
BLOCK = "import sys; sys.modules['nnunet_suprem'] = None; "
"""Python code that makes every import of this plugin fail in the process that runs it."""


def blocked(code: str, *args: str) -> list[str]:
    """A Python process that cannot import nnunet_suprem (so neither its trainers nor its networks) runs ``code``."""
    return [sys.executable, "-c", BLOCK + code, *args]


def blocked_nnunet(entry_point: str, *args: str) -> list[str]:
    """nnU-Net's console entry point ``entry_point`` (of predict_from_raw_data) in such a process."""
    return blocked(f"from nnunetv2.inference.predict_from_raw_data import {entry_point}; sys.argv[0] = "
                   f"{entry_point!r}; {entry_point}()", *args)


def _case(rng: np.random.Generator, flip: bool) -> tuple[sitk.Image, sitk.Image]:
    """32 x 32 x 4 voxels of 4 x 4 x 8 mm: a bright kidney_left on the patient's left, a dark kidney_right on the
    right. ``flip``: the x index grows towards the patient's right (direction -1), so the arrays of the two kinds
    of cases are mirrored and only the intensity tells the kidneys apart."""
    x, y = np.meshgrid(np.arange(32) - 15.5, np.arange(32) - 15.5, indexing="ij")  # x grows towards the left (LPS)
    ct, seg = np.zeros((32, 32)), np.zeros((32, 32), np.uint8)
    dx, dy = rng.uniform(-2, 2, 2)
    for value, centre, intensity in ((1, 8, 500), (2, -8, -500)):
        inside = (x - centre - dx) ** 2 + (y - 3 - dy) ** 2 <= 12
        ct[inside], seg[inside] = intensity, value
    ct = np.repeat(ct[..., None], 4, 2) + rng.normal(0, 30, (32, 32, 4))
    seg = np.repeat(seg[..., None], 4, 2)

    def image(array: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(np.ascontiguousarray((array[::-1] if flip else array).transpose(2, 1, 0)))
        result.SetSpacing((4.0, 4.0, 8.0))
        result.SetDirection((-1 if flip else 1, 0, 0, 0, 1, 0, 0, 0, 1))
        return result

    return image(ct.astype(np.int16)), image(seg)


@pytest.fixture(scope="module")
def lateral_model(tmp_path_factory) -> dict:
    """Dataset903_Lateral (LPS and RPS cases mixed, so SuPreMTrainer mirrors along neither left-right nor at test
    time), planned for 2d and trained through nnUNetv2_train with a SuPreMTrainer variant from a user's
    nnUNet_extTrainer folder (1 epoch of 30 iterations: enough to segment both kidneys)."""
    root = tmp_path_factory.mktemp("lateral")
    folders = nnunet_folders(root)
    raw = Path(folders["nnUNet_raw"]) / "Dataset903_Lateral"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (raw / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        images, labels = ("imagesTr", "labelsTr") if i < 6 else ("imagesTs", "labelsTs")
        ct, seg = _case(rng, flip=i % 2 == 1)
        sitk.WriteImage(ct, str(raw / images / f"lat_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(seg, str(raw / labels / f"lat_{i:03d}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": LABELS, "numTraining": 6,
                                                  "file_ending": ".nii.gz"}))
    env = subprocess_env(folders)
    run(command("nnUNetv2_plan_and_preprocess", "-d", "903", "-c", "2d", "-np", WORKERS), env)
    ext = root / "user_trainers"
    ext.mkdir()
    (ext / "lateral_trainers.py").write_text(TRAINER_MODULE)
    plugin_env = {**env, "nnUNet_extTrainer": f"{trainers_dir()}:{ext}"}
    run(command("nnUNetv2_train", "903", "2d", "0", "-tr", TRAINER, "-device", "cpu"),
        {**plugin_env, "nnUNet_n_proc_DA": "0"})
    return {"env": env, "plugin_env": plugin_env, "raw": raw, "root": root,
            "model": Path(folders["nnUNet_results"]) / "Dataset903_Lateral" / f"{TRAINER}__nnUNetPlans__2d"}


def _read_zip_checkpoint(archive: Path, name: str) -> dict:
    with zipfile.ZipFile(archive) as z:
        return torch.load(io.BytesIO(z.read(name)), map_location="cpu", weights_only=False)


@pytest.mark.e2e
def test_exported_model_predicts_identically_without_the_plugin(lateral_model, tmp_path):
    model, env, raw = lateral_model["model"], lateral_model["env"], lateral_model["raw"]
    before = tree_digest(model)
    archive = tmp_path / "model.zip"
    result = run(cli("export", str(model), "-o", str(archive), "--license", "CC-BY-4.0", "--citation", "suprem"),
                 lateral_model["plugin_env"])
    assert "stock nnU-Net runs it" in result.stdout
    assert tree_digest(model) == before  # the source folder is only read

    folder = f"Dataset903_Lateral/{TRAINER}__nnUNetPlans__2d"  # the name kept: installing replaces no stock model
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        card = json.loads(z.read(f"{folder}/model.json"))
        markdown = z.read(f"{folder}/MODEL.md").decode()
    assert {f"{folder}/{n}" for n in ("fold_0/checkpoint_final.pth", "plans.json", "dataset.json", "model.json",
                                      "MODEL.md", "dataset_fingerprint.json", "fold_0/validation/summary.json")} <= names
    assert all(n.startswith(f"{folder}/") for n in names)
    original = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    exported = _read_zip_checkpoint(archive, f"{folder}/fold_0/checkpoint_final.pth")
    assert (original["trainer_name"], exported["trainer_name"]) == (TRAINER, "nnUNetTrainer")
    assert exported["inference_allowed_mirroring_axes"] == original["inference_allowed_mirroring_axes"] == (0,)
    assert exported.keys() == original.keys()
    assert all(torch.equal(v, original["network_weights"][k]) for k, v in exported["network_weights"].items())
    assert card["classes"] == [{"name": "kidney_left", "label": 1, "canonical_name": "kidney_left"},
                               {"name": "kidney_right", "label": 2, "canonical_name": "kidney_right"}]
    assert card["trainer"]["trained_with"] == TRAINER and card["trainer"]["plugin_trainer"] == "SuPreMTrainer"
    assert (card["requires_plugin"], card["inference_allowed_mirroring_axes"], card["license"]) == (False, [0],
                                                                                                    "CC-BY-4.0")
    assert card["training_data"] == [{"source": "all cases", "cases": 6, "annotated": ["kidney_left", "kidney_right"]}]
    assert "How Well Do Supervised 3D Models Transfer" in card["citation"] and "CC-BY-4.0" in markdown
    assert card["model_folder"] == model.name and f"-tr {TRAINER} -p nnUNetPlans -f 0" in markdown

    fresh = {**env, "nnUNet_results": str(tmp_path / "fresh_results")}
    stock_model = tmp_path / "fresh_results" / "Dataset903_Lateral" / "nnUNetTrainer__nnUNetPlans__2d"
    (stock_model / "fold_0").mkdir(parents=True)
    (stock_model / "fold_0" / "checkpoint_final.pth").write_bytes(b"the user's own stock model")
    stock_before = tree_digest(stock_model)
    run(command("nnUNetv2_install_pretrained_model_from_zip", str(archive)), fresh)
    assert tree_digest(stock_model) == stock_before
    installed = tmp_path / "fresh_results" / folder
    predict = ["-i", str(raw / "imagesTs"), "-f", "0", "-device", "cpu", "--disable_progress_bar",
               "-npp", "1", "-nps", "1"]
    run(command("nnUNetv2_predict", *predict, "-o", str(tmp_path / "plugin"), "-d", "903", "-c", "2d", "-tr", TRAINER),
        lateral_model["plugin_env"])
    run(blocked_nnunet("predict_entry_point", *predict, "-o", str(tmp_path / "stock"), "-d", "903", "-c", "2d",
                       "-tr", TRAINER), fresh)

    # negative control: the plugin's own model folder cannot run in that process, even with nnUNet_extTrainer set
    refused = subprocess.run(blocked_nnunet("predict_entry_point_modelfolder", *predict, "-o", str(tmp_path / "no"),
                                            "-m", str(model)), env=lateral_model["plugin_env"], capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "nnunet_suprem" in refused.stderr

    for case in ("lat_006", "lat_007"):
        plugin = sitk.ReadImage(str(tmp_path / "plugin" / f"{case}.nii.gz"))
        stock = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "stock" / f"{case}.nii.gz")))
        assert np.array_equal(sitk.GetArrayFromImage(plugin), stock), case
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" / f"{case}.nii.gz")))
        x = {}
        for value in (1, 2):
            dice = 2 * ((stock == value) & (truth == value)).sum() / ((stock == value).sum() + (truth == value).sum())
            assert dice > 0.8, (case, value, dice)  # learned (swapped sides or no training: near 0); unseeded
            x[value] = plugin.TransformContinuousIndexToPhysicalPoint(np.argwhere(stock == value).mean(0)[::-1].tolist())[0]
        assert x[1] > x[2] + 40, (case, x)  # LPS: kidney_left lies towards the patient's left (+x), 64 mm apart

    doctor = run(cli("doctor", "--model-folder", str(installed)), fresh)
    assert "stock nnU-Net runs it" in doctor.stdout and "All good" in doctor.stdout


def _fabricated_model(lateral_model, root: Path, configuration: str, architecture: dict, patch_size: list[int],
                      mirroring_axes: tuple[int, ...]) -> Path:
    """A model folder as nnU-Net writes it for SuPreMFinetuneTrainer, with the lateral model's plans and labels and a
    ``configuration`` that builds ``architecture``; its weights are a freshly built network's."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer

    source = lateral_model["model"]
    plans = json.loads((source / "plans.json").read_text())
    plans["configurations"][configuration] = {**copy.deepcopy(plans["configurations"]["2d"]),
                                              "patch_size": patch_size, "architecture": architecture}
    folder = root / "Dataset903_Lateral" / f"SuPreMFinetuneTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text((source / "dataset.json").read_text())
    manager = PlansManager(plans)
    network = SuPreMFinetuneTrainer.build_network_architecture(manager, manager.get_configuration(configuration), 1,
                                                               len(LABELS), enable_deep_supervision=False)
    names = [n for n, _ in network.named_parameters()]
    torch.save({"network_weights": network.state_dict(), "trainer_name": "SuPreMFinetuneTrainer",
                "optimizer_state": {"state": {}, "param_groups": [{"pretrained": True, "param_names": names,
                                                                   "params": list(range(len(names)))}]},
                "init_args": {"configuration": configuration, "fold": 0}, "current_epoch": 3,
                "inference_allowed_mirroring_axes": mirroring_axes}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


INITIALIZE = ("import torch\n"
              "from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor\n"
              "for folder in sys.argv[1:]:\n"
              "    predictor = nnUNetPredictor(device=torch.device('cpu'))\n"
              "    try:\n"
              "        predictor.initialize_from_trained_model_folder(folder, (0,))\n"
              "        print('loaded', type(predictor.network).__name__, predictor.allowed_mirroring_axes)\n"
              "    except Exception as e:\n"
              "        print('failed', type(e).__name__, e)\n")
"""Loads model folders as nnUNetv2_predict does (trainer lookup, network from the plans, weights), one line each."""


@pytest.mark.e2e
def test_residual_encoder_exports_to_stock_and_suprem_unet_needs_the_plugin(lateral_model, tmp_path, monkeypatch):
    from nnunet_suprem.architectures import ARCHITECTURES
    from nnunet_suprem.doctor import check_model_folder
    from nnunet_suprem.sharing.export import export_model

    plain = json.loads((lateral_model["model"] / "plans.json").read_text())["configurations"]["2d"]["architecture"]
    kwargs = {k: v for k, v in plain["arch_kwargs"].items() if k != "n_conv_per_stage"}
    residual = {**plain, "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                "arch_kwargs": {**kwargs, "n_blocks_per_stage": [1, 2, 2, 2]}}
    models = {"resenc": _fabricated_model(lateral_model, tmp_path / "trained", "2d_resenc", residual, [32, 32], (0,)),
              "suprem": _fabricated_model(lateral_model, tmp_path / "trained", "3d_suprem",
                                          ARCHITECTURES["unet"].architecture_block(), [8, 32, 32], (0, 1))}
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    cards = {name: export_model(folder, tmp_path / f"{name}.zip") for name, folder in models.items()}

    assert cards["resenc"]["requires_plugin"] is False and cards["resenc"]["trainer"]["exported_as"] == "nnUNetTrainer"
    assert "How Well Do Supervised" in cards["resenc"]["suggested_citation"]  # fine-tuned with this plugin
    assert cards["suprem"]["requires_plugin"] is True and cards["suprem"]["trainer"]["exported_as"] == "nnUNetTrainer"
    assert "needs nnunet-suprem installed" in cards["suprem"]["requirement"]
    with zipfile.ZipFile(tmp_path / "suprem.zip") as z:
        assert "needs nnunet-suprem installed" in z.read(
            "Dataset903_Lateral/SuPreMFinetuneTrainer__nnUNetPlans__3d_suprem/MODEL.md").decode()
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        export_model(models["resenc"], tmp_path / "resenc.zip")
    export_model(models["resenc"], tmp_path / "resenc.zip", overwrite=True)
    with pytest.raises(ValueError, match="not an nnU-Net model folder"):
        export_model(tmp_path / "trained", tmp_path / "other.zip")
    assert not (tmp_path / "other.zip").exists()

    results = tmp_path / "fresh_results"
    for name in models:
        with zipfile.ZipFile(tmp_path / f"{name}.zip") as z:
            z.extractall(results)  # what nnUNetv2_install_pretrained_model_from_zip does
    installed = {name: results / "Dataset903_Lateral" / cards[name]["model_folder"] for name in models}
    output = run(blocked(INITIALIZE, str(installed["resenc"]), str(installed["suprem"])), subprocess_env({})).stdout
    loaded = [line for line in output.splitlines() if line.startswith(("loaded", "failed"))]
    assert loaded[0] == "loaded ResidualEncoderUNet (0,)"
    assert loaded[1].startswith("failed")  # the plugin's network (SuPreMUNet3D): the plugin is needed

    checks = {c.name: c for c in check_model_folder(str(installed["suprem"]))}  # here, with the plugin installed
    assert all(c.ok for c in checks.values()) and "needs nnunet-suprem installed" in checks["plugin"].detail

    shutil.copytree(installed["suprem"] / "fold_0", installed["suprem"] / "fold_1")
    damaged = installed["suprem"] / "fold_1" / "checkpoint_final.pth"
    damaged.write_bytes(damaged.read_bytes()[:2000])  # a copy cut short
    last = check_model_folder(str(installed["suprem"]))[-1]
    assert (last.name, last.ok) == ("model folder", False) and f"{damaged}: not a readable" in last.detail
