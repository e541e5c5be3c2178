"""Plans are data, weights are finite: a model folder someone sends cannot run code through its plans.json, and NaN
weights are refused, in ``doctor --model-folder`` and ``export``. (The hostile nnssl plan is in test_nnssl.py, the
hostile model folder given to plan-transfer in test_plan_transfer.py, NaN weights through transfer-weights in
test_transfer.py, a NaN loss in training in test_suprem_trainer.py.)"""
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import cli, subprocess_env
from test_nnssl import TINY_KWARGS, tiny_resenc

LABELS = {"background": 0, "liver": 1, "spleen": 2}
TINY_RESENC = {"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
               "arch_kwargs": TINY_KWARGS, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def hostile_architecture(marker: Path) -> dict:
    """The tiny ResidualEncoderUNet with ``os.system`` as its nonlinearity: building it runs ``touch marker``."""
    command = f"touch {shlex.quote(str(marker))}"
    return {**TINY_RESENC, "arch_kwargs": {**TINY_KWARGS, "nonlin": "os.system", "nonlin_kwargs": {"command": command}}}


def plans(architecture: dict) -> dict:
    """An nnU-Net plans file with one 3d_fullres configuration that builds ``architecture``."""
    return {"dataset_name": "Dataset013_Sent", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "original_median_spacing_after_transp": [8.0, 8.0, 8.0],
            "original_median_shape_after_transp": [32, 32, 32], "experiment_planner_used": "ResEncUNetPlanner",
            "foreground_intensity_properties_per_channel": {"0": {
                "max": 1000.0, "mean": 50.0, "median": 40.0, "min": -1000.0, "percentile_00_5": -900.0,
                "percentile_99_5": 900.0, "std": 200.0}},
            "configurations": {"3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": [32, 32, 32], "median_image_size_in_voxels": [32, 32, 32],
                "spacing": [8.0, 8.0, 8.0], "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "architecture": architecture, "batch_dice": False}}}


def model_folder(root: Path, architecture: dict, weights: dict) -> Path:
    """A model folder as nnU-Net writes it (plans.json, dataset.json, fold_0/checkpoint_final.pth)."""
    folder = root / "Dataset013_Sent" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans(architecture)))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                     "numTraining": 2, "file_ending": ".nii.gz"}))
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainer", "current_epoch": 1000,
                "init_args": {"configuration": "3d_fullres", "fold": 0}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_a_model_folder_whose_plans_name_a_function_is_refused_by_doctor_and_export(tmp_path):
    from nnunet_suprem.sharing.export import export_model

    marker = tmp_path / "marker"
    folder = model_folder(tmp_path, hostile_architecture(marker), tiny_resenc(classes=3).state_dict())
    expected = (f"{folder / 'plans.json'}: configurations.3d_fullres.architecture.arch_kwargs.nonlin = 'os.system' "
                f"is not a torch.nn convolution, normalisation, dropout or nonlinearity; refusing the file")
    doctor = subprocess.run(cli("doctor", "--model-folder", str(folder)), env=subprocess_env({}), capture_output=True,
                            text=True, timeout=300)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert f"[FIX] model folder: {expected}" in doctor.stdout and "Traceback" not in doctor.stderr
    with pytest.raises(ValueError, match="^" + expected):
        export_model(folder, tmp_path / "model.zip")
    assert not marker.exists() and not (tmp_path / "model.zip").exists()


def test_nan_weights_are_refused_by_doctor_and_export(tmp_path):
    from nnunet_suprem.doctor import check_model_folder
    from nnunet_suprem.sharing.export import export_model

    weights = tiny_resenc(classes=3).state_dict()
    for key in ("encoder.stem.convs.0.conv.weight", "decoder.seg_layers.1.bias"):
        weights[key][0] = float("nan")
    folder = model_folder(tmp_path, TINY_RESENC, weights)
    expected = (f"{folder / 'fold_0' / 'checkpoint_final.pth'}: refusing to load: 2 tensor(s) hold NaN or infinite "
                f"values (network_weights.encoder.stem.convs.0.conv.weight, network_weights.decoder.seg_layers.1.bias)")
    last = check_model_folder(str(folder))[-1]
    assert (last.name, last.ok) == ("model folder", False) and last.detail.startswith(expected), last.detail
    with pytest.raises(ValueError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        export_model(folder, tmp_path / "model.zip")
    assert not (tmp_path / "model.zip").exists()


def test_every_network_and_layer_this_plugin_and_nnunet_write_is_allowed():
    """The plugin's released-SuPreM networks, nnssl's ResEnc L preset and every layer dynamic-network-architectures'
    helpers choose for nnU-Net (conv, instance and batch norm, dropout for 1D to 3D; LeakyReLU) pass the check,
    and every allowed name is one pydoc.locate finds."""
    import pydoc

    from dynamic_network_architectures.building_blocks.helper import (
        convert_dim_to_conv_op,
        get_matching_batchnorm,
        get_matching_dropout,
        get_matching_instancenorm,
    )

    from nnunet_suprem.architectures import ARCHITECTURES
    from nnunet_suprem.plans_safety import LAYER_NAMES, NETWORK_CLASSES, check_architecture
    from nnunet_suprem.transfer.nnssl import architecture_block

    blocks = [a.architecture_block() for a in ARCHITECTURES.values()]
    blocks.append(architecture_block("resencl.pth", "ResEncL", {}))
    for block in blocks:
        check_architecture(block, "plans.json", "configurations.3d_fullres.architecture")
    for dimension in (1, 2, 3):
        conv = convert_dim_to_conv_op(dimension)
        layers = (conv, get_matching_instancenorm(conv), get_matching_batchnorm(conv),
                  get_matching_dropout(dimension=dimension))
        for layer in layers:
            assert f"{layer.__module__}.{layer.__name__}" in LAYER_NAMES, layer
    assert "torch.nn.LeakyReLU" in LAYER_NAMES  # what nnU-Net's planners write
    assert all(isinstance(pydoc.locate(name), type) for name in NETWORK_CLASSES | LAYER_NAMES)


def test_names_nnunet_looks_up_must_be_what_it_calls_them_as():
    """Names that nnU-Net resolves in its own modules (readers, label managers, preprocessors, normalisations,
    resampling functions) must give that kind of class or function, not something those modules import."""
    from nnunet_suprem.plans_safety import check_plans

    check_plans(plans(TINY_RESENC), "good.json")
    for edit, where, name in (
            (lambda p: p.update(image_reader_writer="os"), "image_reader_writer", "os"),
            (lambda p: p.update(label_manager="join"), "label_manager", "join"),
            (lambda p: p["configurations"]["3d_fullres"].update(preprocessor_name="__builtins__"),
             "configurations.3d_fullres.preprocessor_name", "__builtins__"),
            (lambda p: p["configurations"]["3d_fullres"].update(normalization_schemes=["ZScoreNormalization", "np"]),
             r"configurations.3d_fullres.normalization_schemes\[1\]", "np"),
            (lambda p: p["configurations"]["3d_fullres"].update(resampling_fn_seg="resize"),
             "configurations.3d_fullres.resampling_fn_seg", "resize"),
            (lambda p: p["configurations"]["3d_fullres"]["architecture"].update(network_class_name="os.system"),
             "configurations.3d_fullres.architecture.network_class_name", "os.system"),
            (lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(conv_op="builtins.exec"),
             "configurations.3d_fullres.architecture.arch_kwargs.conv_op", "builtins.exec")):
        hostile = json.loads(json.dumps(plans({**TINY_RESENC, "_kw_requires_import": ["norm_op"]})))
        # conv_op is checked even when _kw_requires_import does not list it (nnUNetTrainerBN locates it anyway)
        edit(hostile)
        with pytest.raises(ValueError, match=rf"^sent.json: {where} = '{name}' is not "):
            check_plans(hostile, "sent.json")


def test_plans_of_nnunets_planners_and_the_suprem_preset_pass(planned_phantom_dataset, monkeypatch):
    """2d and 3d_fullres as nnU-Net's default and residual-encoder planners and the SuPreM preset plan them."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        ResEncUNetPlanner,
        nnUNetPlannerResEncL,
        nnUNetPlannerResEncM,
        nnUNetPlannerResEncXL,
    )

    from nnunet_suprem.planning.planners import SuPreMPlanner
    from nnunet_suprem.plans_safety import check_plans

    for name, value in planned_phantom_dataset["env"].items():
        if name.startswith("nnUNet_"):
            monkeypatch.setenv(name, value)
    for planner_class in (ExperimentPlanner, ResEncUNetPlanner, nnUNetPlannerResEncM, nnUNetPlannerResEncL,
                          nnUNetPlannerResEncXL, SuPreMPlanner):
        planner = planner_class(1)
        spacing, shape = planner.determine_fullres_target_spacing(), (64, 64, 64)
        configurations = {c: planner.get_plans_for_configuration(spacing[3 - d:], shape[3 - d:],
                                                                 planner.generate_data_identifier(c), 3 * 64 ** 3, {})
                          for c, d in (("2d", 2), ("3d_fullres", 3))}
        check_plans({"image_reader_writer": planner.determine_reader_writer().__name__,
                     "configurations": configurations}, planner_class.__name__)
        assert {c["architecture"]["network_class_name"].rsplit(".")[-1] for c in configurations.values()} == \
               {"PlainConvUNet" if planner_class in (ExperimentPlanner, SuPreMPlanner) else "ResidualEncoderUNet"}
