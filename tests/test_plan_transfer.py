"""plan-transfer and plan --preset suprem, run in-process through nnU-Net's real planner and preprocessing."""
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import WORKERS, nnunet_folders
from nnunet_suprem.cli import main
from nnunet_suprem.planning.topology import downsampling_per_axis, fit_patch_size
from nnunet_suprem.synth import hospitals_from_args, write_nnunet_dataset

SOURCE, TARGET, LARGE = 1, 2, 3
NAMES = {SOURCE: "Dataset001_Source", TARGET: "Dataset002_Target", LARGE: "Dataset003_Large"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """nnU-Net folders with phantom datasets: SOURCE (hospA, planned by nnU-Net's default and ResEnc M planners) and
    TARGET (hospB on a coarser 32^3 grid, other orientation, 3 of its classes)."""
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        nnUNetPlannerResEncM,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
    )

    with pytest.MonkeyPatch.context() as mp:
        env = nnunet_folders(tmp_path_factory.mktemp("plan_transfer"))
        for name, value in {**env, "nnUNet_def_n_proc": WORKERS}.items():
            mp.setenv(name, value)
        mp.delenv("nnUNet_extTrainer", raising=False)
        write_nnunet_dataset(SOURCE, "Source", hospitals_from_args(["hospA"], [], None), num_cases=2)
        write_nnunet_dataset(TARGET, "Target", hospitals_from_args(
            ["hospB"], ["hospB=liver,spleen,kidney_left"], (32, 32, 32)), num_cases=2)
        extract_fingerprint_dataset(SOURCE, num_processes=1)
        plan_experiment_dataset(SOURCE)
        plan_experiment_dataset(SOURCE, nnUNetPlannerResEncM)
        yield {name: Path(value) for name, value in env.items()}


def plans_path(folders, dataset: int, plans_name: str) -> Path:
    return folders["nnUNet_preprocessed"] / NAMES[dataset] / f"{plans_name}.json"


def load(folders, dataset: int, plans_name: str) -> dict:
    return json.loads(plans_path(folders, dataset, plans_name).read_text())


def state_dict_shapes(plans: dict, dataset_json: dict) -> dict:
    """Parameter shapes of the 3d_fullres network built for a dataset's channels and classes."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plans["configurations"]["3d_fullres"]["architecture"]
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     len(dataset_json["channel_names"]), len(dataset_json["labels"]), allow_init=False)
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


@pytest.fixture(scope="module")
def transferred(folders) -> dict:
    """TARGET planned and preprocessed with SOURCE's default network (plans nnUNetPlans_transfer)."""
    source_file = plans_path(folders, SOURCE, "nnUNetPlans")
    assert main(["plan-transfer", "-d", str(TARGET), "--pretrained", str(source_file), "-np", "1"]) == 0
    return load(folders, TARGET, "nnUNetPlans_transfer")


@pytest.mark.e2e
def test_transfer_keeps_the_network_and_follows_the_target(folders, transferred):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    source_file = plans_path(folders, SOURCE, "nnUNetPlans")
    source, target = load(folders, SOURCE, "nnUNetPlans"), transferred
    plan_experiment_dataset(TARGET)  # nnU-Net's own plans for the target, for comparison
    default = load(folders, TARGET, "nnUNetPlans")
    config, source_config = target["configurations"]["3d_fullres"], source["configurations"]["3d_fullres"]

    assert list(target["configurations"]) == ["3d_fullres"]
    assert config["architecture"] == source_config["architecture"]
    assert target["transferred_from"] == {
        "plans_file": str(source_file.resolve()), "configuration": "3d_fullres", "dataset_name": NAMES[SOURCE],
        "plans_name": "nnUNetPlans", "network_class_name": source_config["architecture"]["network_class_name"]}
    # the geometry is the target's, as nnU-Net plans it, and differs from the source's
    for key in ("spacing", "median_image_size_in_voxels"):
        assert config[key] == default["configurations"]["3d_fullres"][key], key
    for key in ("transpose_forward", "dataset_name"):
        assert target[key] == default[key], key
    assert config["spacing"] != source_config["spacing"]
    # the intensity mapping is the one the pre-trained features were learned on, not the target's own statistics
    intensities = "foreground_intensity_properties_per_channel"
    assert target[intensities] == source[intensities] != default[intensities]
    for key in ("normalization_schemes", "use_mask_for_norm"):
        assert config[key] == source_config[key], key
    divisors = downsampling_per_axis(config["architecture"]["arch_kwargs"]["strides"])
    assert all(p % d == 0 for p, d in zip(config["patch_size"], divisors))
    assert config["patch_size"] != source_config["patch_size"]
    assert config["batch_size"] >= 2
    # same network up to the segmentation heads, built for each dataset's channels and classes
    raw = folders["nnUNet_raw"]
    source_shapes = state_dict_shapes(source, json.loads((raw / NAMES[SOURCE] / "dataset.json").read_text()))
    target_shapes = state_dict_shapes(target, json.loads((raw / NAMES[TARGET] / "dataset.json").read_text()))
    assert source_shapes.keys() == target_shapes.keys()
    differing = {k for k in source_shapes if source_shapes[k] != target_shapes[k]}
    assert differing and all(".seg_layers." in k for k in differing)
    # preprocessed with nnU-Net's preprocessing into its own data folder
    data = folders["nnUNet_preprocessed"] / NAMES[TARGET] / config["data_identifier"]
    assert config["data_identifier"] == "nnUNetPlans_transfer_3d_fullres"
    assert sorted(p.name for p in data.glob("*.b2nd")) == [
        "hospB_0000.b2nd", "hospB_0000_seg.b2nd", "hospB_0001.b2nd", "hospB_0001_seg.b2nd"]


@pytest.mark.e2e
def test_target_intensities_option_plans_the_targets_own_statistics(folders):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    source_file = plans_path(folders, SOURCE, "nnUNetPlans")
    assert main(["plan-transfer", "-d", str(TARGET), "--pretrained", str(source_file), "--plans-name", "own",
                 "--target-intensities", "--no-preprocess", "-np", "1"]) == 0
    plan_experiment_dataset(TARGET)
    intensities = "foreground_intensity_properties_per_channel"
    assert load(folders, TARGET, "own")[intensities] == load(folders, TARGET, "nnUNetPlans")[intensities]


def test_stock_trainer_uses_the_few_shot_split(folders, transferred):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    assert main(["split", "-d", str(TARGET), "--train-cases", "1", "--seed", "0"]) == 0
    folder = folders["nnUNet_preprocessed"] / NAMES[TARGET]
    splits = json.loads((folder / "splits_final.json").read_text())
    trainer = nnUNetTrainer({**transferred, "continue_training": False}, "3d_fullres", 0,
                            json.loads((folder / "dataset.json").read_text()), device=torch.device("cpu"))
    assert trainer.do_split() == (splits[0]["train"], splits[0]["val"])
    assert sorted(splits[0]["train"] + splits[0]["val"]) == ["hospB_0000", "hospB_0001"]


@pytest.mark.e2e
def test_resenc_model_folder_transfers_with_its_blocks(folders, capsys):
    model = folders["nnUNet_results"] / NAMES[SOURCE] / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    model.mkdir(parents=True)
    shutil.copy(plans_path(folders, SOURCE, "nnUNetResEncUNetMPlans"), model / "plans.json")
    shutil.copy(folders["nnUNet_raw"] / NAMES[SOURCE] / "dataset.json", model / "dataset.json")

    assert main(["plan-transfer", "-d", str(TARGET), "--pretrained", str(model), "--plans-name", "resenc_transfer",
                 "--no-preprocess", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "nnUNetv2_preprocess -d 2 -plans_name resenc_transfer -c 3d_fullres -np 1" in out
    source, target = load(folders, SOURCE, "nnUNetResEncUNetMPlans"), load(folders, TARGET, "resenc_transfer")
    architecture = target["configurations"]["3d_fullres"]["architecture"]
    assert architecture == source["configurations"]["3d_fullres"]["architecture"]
    assert architecture["network_class_name"].endswith(".ResidualEncoderUNet")
    assert max(architecture["arch_kwargs"]["n_blocks_per_stage"]) > 1 and "n_conv_per_stage" not in architecture[
        "arch_kwargs"]
    assert target["experiment_planner_used"] == "TransferResEncMPlanner"
    assert target["transferred_from"]["plans_file"] == str((model / "plans.json").resolve())
    assert not (folders["nnUNet_preprocessed"] / NAMES[TARGET] / "resenc_transfer_3d_fullres").exists()


def test_a_model_folder_whose_plans_name_a_function_runs_nothing(folders, tmp_path, capsys):
    """nnU-Net would import ``os.system`` as the nonlinearity and call it while the transfer planner builds the
    network for its memory estimate: the model folder is refused before anything is imported."""
    marker = tmp_path / "marker"
    plans = load(folders, SOURCE, "nnUNetPlans")
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    command = f"touch {shlex.quote(str(marker))}"
    architecture["arch_kwargs"].update(nonlin="os.system", nonlin_kwargs={"command": command})
    model = tmp_path / NAMES[SOURCE] / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    shutil.copy(folders["nnUNet_raw"] / NAMES[SOURCE] / "dataset.json", model / "dataset.json")

    assert main(["plan-transfer", "-d", str(TARGET), "--pretrained", str(model), "--plans-name", "hostile",
                 "--no-preprocess", "-np", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert (f"{model.resolve() / 'plans.json'}: configurations.3d_fullres.architecture.arch_kwargs.nonlin = "
            f"'os.system' is not a torch.nn convolution") in error and "\n" not in error
    assert not marker.exists() and not plans_path(folders, TARGET, "hostile").exists()


@pytest.mark.e2e
def test_transfer_of_own_plans_reproduces_nnunet_including_memory_fitting(folders):
    """On (a fingerprint of) large anisotropic images nnU-Net shrinks the patch to fit its memory estimate; fitting
    the patch to nnU-Net's own topology must land where nnU-Net's planner did. The raw dataset is a tiny phantom: the
    planner reads only the fingerprint."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    write_nnunet_dataset(LARGE, "Large", hospitals_from_args(["hospA"], [], (16, 16, 16)), num_cases=1)
    fingerprint = {"foreground_intensity_properties_per_channel": {"0": {
        "max": 1000.0, "mean": 50.0, "median": 40.0, "min": -1000.0, "percentile_00_5": -900.0,
        "percentile_99_5": 900.0, "std": 200.0}}, "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [[120, 180, 180]], "spacings": [[1.5, 1.0, 1.0]]}
    (folders["nnUNet_preprocessed"] / NAMES[LARGE]).mkdir()
    (folders["nnUNet_preprocessed"] / NAMES[LARGE] / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    plan_experiment_dataset(LARGE)
    nnunet = load(folders, LARGE, "nnUNetPlans")["configurations"]["3d_fullres"]
    assert any(p < m for p, m in zip(nnunet["patch_size"], nnunet["median_image_size_in_voxels"]))  # shrunk

    assert main(["plan-transfer", "-d", str(LARGE), "--pretrained", str(plans_path(folders, LARGE, "nnUNetPlans")),
                 "--plans-name", "self_transfer", "--no-preprocess", "-np", "1"]) == 0
    ours = load(folders, LARGE, "self_transfer")["configurations"]["3d_fullres"]
    assert ours.pop("data_identifier") == "self_transfer_3d_fullres"
    nnunet.pop("data_identifier")
    assert ours == nnunet


def test_fit_patch_size_steps_by_the_downsampling_and_explains_failures():
    budget = 64 * 64 * 32
    patch = fit_patch_size((1.0, 1.0, 1.0), (100, 100, 40), (16, 16, 8), lambda p: np.prod(p) <= budget)
    assert patch == (80, 64, 24)  # from (112, 112, 40): always the axis largest relative to the median (ties: last)
    assert fit_patch_size((3.0, 1.0, 1.0), (40, 500, 500), (4, 32, 32), lambda p: True) == (40, 384, 384)
    with pytest.raises(ValueError, match=r"smaller than the pre-trained network's downsampling.*axis 2: 20 voxels"):
        fit_patch_size((1.0, 1.0, 1.0), (100, 100, 20), (32, 32, 32), lambda p: True)
    with pytest.raises(ValueError, match=r"does not fit .* smallest valid patch \(16, 16, 8\)"):
        fit_patch_size((1.0, 1.0, 1.0), (100, 100, 40), (16, 16, 8), lambda p: False)


def test_transfer_refuses_a_network_that_cannot_fit_the_target_images(folders, tmp_path, capsys):
    plans = load(folders, SOURCE, "nnUNetPlans")
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    stages = 7  # downsamples 64x: more than the target's 32 voxels
    kwargs.update(n_stages=stages, features_per_stage=[min(32 * 2 ** i, 320) for i in range(stages)],
                  kernel_sizes=[[3, 3, 3]] * stages, strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
                  n_conv_per_stage=[2] * stages, n_conv_per_stage_decoder=[2] * (stages - 1))
    deep = tmp_path / "deep_plans.json"
    deep.write_text(json.dumps(plans))
    assert main(["plan-transfer", "-d", str(TARGET), "--pretrained", str(deep), "--plans-name", "deep",
                 "--no-preprocess", "-np", "1"]) == 2
    err = capsys.readouterr().err
    assert "smaller than the pre-trained network's downsampling" in err and "(64, 64, 64)" in err
    assert not plans_path(folders, TARGET, "deep").exists()


def test_transfer_errors_name_the_file(folders, tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["plan-transfer", "-d", str(TARGET), "--no-preprocess", "-np", "1", *args]) == 2
        return capsys.readouterr().err

    empty_model = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    empty_model.mkdir()
    assert f"{(empty_model / 'plans.json').resolve()} not found" in error("--pretrained", str(empty_model))
    assert f"{(tmp_path / 'nothing').resolve()} not found" in error("--pretrained", str(tmp_path / "nothing"))
    source_file = plans_path(folders, SOURCE, "nnUNetPlans").resolve()
    message = error("--pretrained", str(source_file), "-c", "3d_lowres")
    assert f"{source_file} has no configuration '3d_lowres'" in message and "'3d_fullres'" in message
    (tmp_path / "model__nnUNetPlans__2d").mkdir()
    shutil.copy(source_file, tmp_path / "model__nnUNetPlans__2d" / "plans.json")
    assert "trained with configuration '2d', not '3d_fullres'" in error(
        "--pretrained", str(tmp_path / "model__nnUNetPlans__2d"), "-c", "3d_fullres")
    (tmp_path / "not_plans.json").write_text("{}")
    assert "not an nnU-Net plans file" in error("--pretrained", str(tmp_path / "not_plans.json"))
    existing = plans_path(folders, TARGET, "existing")
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_text("{}")
    assert f"{existing} already exists; pass --overwrite" in error("--pretrained", str(source_file),
                                                                   "--plans-name", "existing")
    assert existing.read_text() == "{}"


@pytest.mark.e2e
def test_suprem_preset_plans_the_recipe(folders):
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    assert main(["plan", "-d", str(TARGET), "--preset", "suprem", "--no-preprocess", "-np", "1"]) == 0
    plans = load(folders, TARGET, "nnUNetPlans_suprem")
    config = plans["configurations"]["3d_fullres"]
    assert list(plans["configurations"]) == ["3d_fullres"]
    assert config["spacing"] == [1.5, 1.5, 1.5] and config["patch_size"] == [96, 96, 96]
    assert config["normalization_schemes"] == ["CTNormalization"] and config["batch_size"] >= 2
    properties = plans["foreground_intensity_properties_per_channel"]
    assert properties == {"0": {"mean": -175.0, "std": 425.0, "percentile_00_5": -175.0, "percentile_99_5": 250.0}}
    hu = np.array([-1000, -175, 0, 37.5, 250, 1200], dtype=np.float32)
    normalized = CTNormalization(use_mask_for_norm=False, intensityproperties=properties["0"]).run(hu.copy())
    np.testing.assert_allclose(normalized, np.clip((hu + 175) / 425, 0, 1), atol=1e-7)


@pytest.mark.e2e
def test_suprem_window_through_nnunet_preprocessing(folders):
    """The real preprocessing on phantoms (air, fat, bone: both ends clipped); at 6 mm, because resampling the
    phantoms' field of view to 1.5 mm takes a minute. The intensity path does not depend on the spacing."""
    import blosc2

    assert main(["plan", "-d", str(TARGET), "--preset", "suprem", "--spacing", "6", "6", "6", "--patch-size", "48",
                 "48", "48", "--plans-name", "suprem_6mm", "-np", "1"]) == 0
    config = load(folders, TARGET, "suprem_6mm")["configurations"]["3d_fullres"]
    assert config["spacing"] == [6.0, 6.0, 6.0] and config["patch_size"] == [48, 48, 48]
    data = folders["nnUNet_preprocessed"] / NAMES[TARGET] / config["data_identifier"]
    images = sorted(data.glob("hospB_000?.b2nd"))
    assert len(images) == 2
    for image in images:
        data = blosc2.open(str(image))[:]
        assert data.min() == 0.0 and data.max() == 1.0
        assert 0.1 < np.mean((data > 0) & (data < 1)) < 0.9  # soft tissue in between


def test_suprem_preset_refuses_an_invalid_patch(folders, capsys):
    assert main(["plan", "-d", str(TARGET), "--preset", "suprem", "--patch-size", "50", "50", "50", "--plans-name",
                 "suprem_bad", "--no-preprocess", "-np", "1"]) == 2
    assert "cannot use patch size (50, 50, 50)" in capsys.readouterr().err
    assert not plans_path(folders, TARGET, "suprem_bad").exists()


def test_intensity_mapping_lends_a_single_channel_and_refuses_other_layouts(tmp_path):
    from nnunet_suprem.planning.pretrained import PretrainedConfiguration

    ct = {"mean": -175.0, "std": 425.0, "percentile_00_5": -175.0, "percentile_99_5": 250.0}
    one = PretrainedConfiguration(tmp_path / "plans.json", "3d_fullres",
                                  {"foreground_intensity_properties_per_channel": {"0": ct}}, {},
                                  ["CTNormalization"], [False])
    assert one.intensity_mapping(2) == (["CTNormalization"] * 2, [False, False], {"0": ct, "1": ct})
    two = PretrainedConfiguration(tmp_path / "plans.json", "3d_fullres",
                                  {"foreground_intensity_properties_per_channel": {"0": ct, "1": ct}}, {},
                                  ["CTNormalization", "ZScoreNormalization"], [False, True])
    assert two.intensity_mapping(2)[0] == ["CTNormalization", "ZScoreNormalization"]
    with pytest.raises(ValueError, match=r"normalises 2 channels and the target has 3.*--target-intensities"):
        two.intensity_mapping(3)
