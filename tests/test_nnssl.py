"""nnssl checkpoints (MIC-DKFZ's self-supervised pre-training) in: plan-transfer, transfer-weights, fine-tuning.

No nnssl checkpoint can be downloaded here: files are written in nnssl's layout by the tests themselves (what its
``AbstractBaseTrainer.save_checkpoint`` stores, the adaptation plan as ``AdaptationPlan.serialize()`` writes it),
around a real dynamic-network-architectures ResidualEncoderUNet of tiny size with random weights.
"""
import json
import pickle
import re
import shlex
from pathlib import Path

import pytest
import torch

from conftest import WORKERS, cli, command, raw_phantom_dataset, run, subprocess_env
from nnunet_suprem.cli import main
from nnunet_suprem.nnunet_env import trainers_dir
from nnunet_suprem.planning.pretrained import load_pretrained
from nnunet_suprem.transfer.apply import transfer_checkpoint
from nnunet_suprem.transfer.checkpoint import read_checkpoint
from nnunet_suprem.transfer.nnssl import RESENC_L_KWARGS, rename_modules
from nnunet_suprem.transfer.state_dict import NOT_PRETRAINED

DATASET, NAME = 12, "Dataset012_Target"
PLANS = "nnUNetPlans_transfer"
SPACING, PATCH = [8.0, 8.0, 8.0], [32, 32, 32]
TINY_KWARGS = {  # serialised as nnssl's DynamicArchitecturePlans.serialize() writes them (classes as dotted names)
    "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_blocks_per_stage": [1, 2, 2],
    "n_conv_per_stage_decoder": [1, 1], "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.modules.activation.LeakyReLU", "nonlin_kwargs": {"inplace": True}}


class NotWeights:
    pass


def pretrain_plan(spacing: list[float] = SPACING, transpose: list[int] = (0, 1, 2), style: str = "onemmiso",
                  patch: list[int] = (16, 16, 16)) -> dict:
    """nnssl's ``Plan.serialize()`` with one configuration, whose spacing and patch are per axis of the arrays
    after ``transpose`` (as nnssl's ExperimentPlanner stores them)."""
    config = {"data_identifier": f"nnsslPlans_{style}", "preprocessor_name": "DefaultPreprocessor",
              "spacing_style": style, "normalization_schemes": ["ZScoreNormalization"],
              "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_mask": "resample_data_or_seg_to_shape",
              "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
              "spacing": torch.tensor(spacing, dtype=torch.float64),  # nnssl's _convert_numpy: arrays -> tensors
              "patch_size": list(patch)}
    return {"dataset_name": "Dataset745_OpenMind", "plans_name": "nnsslPlans",
            "original_median_spacing_after_transp": list(spacing), "image_reader_writer": "SimpleITKIO",
            "transpose_forward": list(transpose), "transpose_backward": [list(transpose).index(a) for a in range(3)],
            "configurations": {style: config}, "experiment_planner_used": "ExperimentPlanner"}


def adaptation_plan(arch_class_name: str = "ResidualEncoderUNet", arch_kwargs: dict | None = TINY_KWARGS,
                    plan: dict | None = None, recommended_patch: list[int] = PATCH) -> dict:
    """``AdaptationPlan.serialize()`` of an MAE pre-training on 1 mm isotropic data (here 8 mm, tiny patches)."""
    return {
        "architecture_plans": {
            "arch_class_name": arch_class_name, "arch_kwargs": arch_kwargs,
            "arch_kwargs_requiring_import": ["conv_op", "norm_op", "nonlin"] if arch_kwargs else None},
        "pretrain_plan": plan or pretrain_plan(),
        "pretrain_num_input_channels": 1, "recommended_downstream_patchsize": list(recommended_patch),
        "key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"), "key_to_lpe": None}


def tiny_resenc(seed: int = 1, channels: int = 1, classes: int = 1) -> torch.nn.Module:
    """The MAE network nnssl pre-trains (a ResidualEncoderUNet reconstructing its 1 input channel), or a target."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(seed)
    return get_network_from_plans("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", TINY_KWARGS,
                                  ["conv_op", "norm_op", "nonlin"], channels, classes, deep_supervision=classes > 1)


def nnssl_checkpoint(path: Path, plan: dict, weights: dict) -> Path:
    """The layout of nnssl's ``AbstractBaseTrainer.save_checkpoint`` (checkpoint_final.pth)."""
    torch.save({"network_weights": weights, "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-2}]},
                "grad_scaler_state": None, "logging": {"train_losses": [0.5, 0.4]}, "_best_ema": None,
                "current_epoch": 1000, "init_args": {"configuration_name": "onemmiso", "fold": 0},
                "trainer_name": "BaseMAETrainer", "nnssl_adaptation_plan": plan}, path)
    return path


def spark_checkpoint(path: Path, network: torch.nn.Module) -> Path:
    """The layout of nnssl's ``SparkMAETrainer.save_checkpoint``: ``network_weights`` of the ResEnc (encoder and
    reconstruction decoder; SparK's sparse layers subclass the dense ones and keep their names), ``spark_weights`` of
    the SparK3D model around it (the same tensors under ``architecture.``, ``encoder.`` and ``decoder.``, mask tokens,
    densifying convolutions after the first stage), its init_args, and no adaptation plan."""
    weights = network.state_dict()
    features = TINY_KWARGS["features_per_stage"]
    spark = {**{f"architecture.{k}": v for k, v in weights.items()},
             **{f"encoder.{k}": v for k, v in network.encoder.state_dict().items()},
             **{f"decoder.{k}": v for k, v in network.decoder.state_dict().items()},
             **{f"mask_tokens.{i}": torch.zeros(1, c, 1, 1, 1) for i, c in enumerate(features)},
             **{f"densify_projs.{i}.{name}": t for i, c in enumerate(features[1:], 1)
                for name, t in torch.nn.Conv3d(c, c, 3, padding=1).state_dict().items()}}
    init_args = {"plan": pretrain_plan(), "configuration_name": "onemmiso", "fold": 0, "pretrain_json": {},
                 "device": torch.device("cuda")}
    torch.save({"network_weights": weights, "spark_weights": spark,
                "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-2}]}, "grad_scaler_state": None,
                "logging": {"train_losses": [0.5, 0.4]}, "_best_ema": None, "current_epoch": 1000,
                "init_args": init_args, "trainer_name": "SparkMAETrainer"}, path)
    return path


def median_checkpoint(path: Path, weights: dict) -> Path:
    """An nnssl checkpoint of its ``median`` configuration on anisotropic data: in the readers' (nnU-Net's) axis
    order spacing 2 x 3 x 6 mm and patch 32 x 48 x 16, stored after nnssl's transpose_forward [2, 0, 1] (the coarse
    axis first) as [6, 2, 3] and [16, 32, 48]."""
    plan = pretrain_plan([6.0, 2.0, 3.0], [2, 0, 1], "median", [16, 32, 48])
    return nnssl_checkpoint(path, adaptation_plan(plan=plan, recommended_patch=[16, 32, 48]), weights)


def encoder_keys(network: torch.nn.Module) -> set[str]:
    return {k for k in network.state_dict() if k.startswith(("encoder.stages.", "encoder.stem."))}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A raw phantom dataset (hospA, 2 training cases) and an nnssl checkpoint of the tiny ResEnc."""
    root = tmp_path_factory.mktemp("nnssl")
    folders = raw_phantom_dataset(root, DATASET, "Target", ["hospA"], num_cases=2)
    source = tiny_resenc()
    checkpoint = nnssl_checkpoint(root / "checkpoint_final.pth", adaptation_plan(), source.state_dict())
    return {"folders": folders, "env": subprocess_env(folders), "checkpoint": checkpoint, "source": source,
            "root": root}


@pytest.fixture(scope="module")
def planned(target):
    """``nnunet-suprem plan-transfer --pretrained checkpoint_final.pth`` (plans and preprocessing)."""
    result = run(cli("plan-transfer", "-d", str(DATASET), "--pretrained", str(target["checkpoint"]), "-np", WORKERS),
                 target["env"])
    plans_file = Path(target["folders"]["nnUNet_preprocessed"]) / NAME / f"{PLANS}.json"
    return {"stdout": result.stdout, "plans": json.loads(plans_file.read_text())}


def test_reads_encoder_and_stem_under_their_keys(target):
    checkpoint = read_checkpoint(target["checkpoint"])
    assert checkpoint.format == "nnssl checkpoint (ResidualEncoderUNet, encoder and stem)"
    assert checkpoint.labels is None
    assert checkpoint.pretrained_keys == {k for k in target["source"].state_dict()
                                          if k.startswith(("encoder.stages.", "encoder.stem."))}
    source = target["source"]
    state, report = transfer_checkpoint(checkpoint, tiny_resenc(seed=2, channels=2, classes=3),
                                        {"background": 0, "liver": 1, "spleen": 2})
    assert report.encoder_loaded_fraction == 1.0 and not report.mismatched and not report.unused
    assert report.adapted == {"encoder.stem.convs.0.conv.weight": "input channels 1 -> 2 (repeated and rescaled)"}
    assert torch.equal(state["encoder.stem.convs.0.conv.weight"],
                       source.state_dict()["encoder.stem.convs.0.conv.weight"].repeat(1, 2, 1, 1, 1) / 2)
    assert report.skipped["decoder.stages.0.convs.0.conv.weight"].startswith("in the checkpoint but not pre-trained")
    assert report.skipped["decoder.seg_layers.1.weight"].startswith("segmentation head")


def test_module_paths_of_the_plan_are_moved_onto_the_network(target, tmp_path):
    """A plan whose encoder lives elsewhere (e.g. a wrapper's ``model.encoder.stages``) maps onto the network's."""
    weights = {f"model.{k}": v for k, v in target["source"].state_dict().items()}
    plan = {**adaptation_plan(), "key_to_encoder": "model.encoder.stages", "key_to_stem": "model.encoder.stem"}
    checkpoint = read_checkpoint(nnssl_checkpoint(tmp_path / "wrapped.pth", plan, weights))
    state, report = transfer_checkpoint(checkpoint, tiny_resenc(seed=2), None)
    assert report.encoder_loaded_fraction == 1.0
    assert torch.equal(state["encoder.stages.1.blocks.0.conv1.conv.weight"],
                       target["source"].state_dict()["encoder.stages.1.blocks.0.conv1.conv.weight"])
    assert rename_modules({"a.b.c": 1, "a.bc": 2, "x": 3}, [("a.b", "z")]) == {"z.c": 1, "a.bc": 2, "x": 3}


def test_resenc_l_preset_and_unsupported_architectures(target, tmp_path):
    weights = target["source"].state_dict()
    resenc_l = load_pretrained(nnssl_checkpoint(tmp_path / "resencl.pth", adaptation_plan("ResEncL", None), weights))
    architecture = resenc_l.architecture
    assert architecture["network_class_name"].endswith(".ResidualEncoderUNet")
    assert architecture["arch_kwargs"] == RESENC_L_KWARGS and resenc_l.planner == "nnUNetPlannerResEncL"
    assert RESENC_L_KWARGS["features_per_stage"] == [32, 64, 128, 256, 320, 320]  # nnssl's get_res_enc_l
    assert RESENC_L_KWARGS["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6]
    for name, missing in (("PrimusM", "Primus (dynamic-network-architectures has the class"),
                          ("NoSkipResEncL", "ResidualEncoderUNet_noskip")):
        path = nnssl_checkpoint(tmp_path / f"{name}.pth", adaptation_plan(name, None), weights)
        with pytest.raises(ValueError, match=rf"{name}\.pth: nnssl architecture '{name}' is not supported: "
                                             rf".*{re.escape(missing)}"):
            read_checkpoint(path)


def test_spacing_and_patches_come_back_in_the_readers_axis_order(target, tmp_path):
    """nnssl stores them per axis of its transposed arrays; nnU-Net's overwrite_target_spacing (and our patch) take
    the readers' order, from which nnU-Net derives its own transpose."""
    pretrained = load_pretrained(median_checkpoint(tmp_path / "median.pth", target["source"].state_dict()))
    assert pretrained.spacing == [2.0, 3.0, 6.0] and pretrained.patch_size == [32, 48, 16]
    record = pretrained.provenance()["pretraining"]
    assert record["spacing"] == [2.0, 3.0, 6.0] and record["patch_size"] == [32, 48, 16]
    assert record["transpose_forward"] == [2, 0, 1] and record["configuration"] == "median"


def test_a_spark_checkpoint_loads_its_encoder_and_not_its_reconstruction_decoder(target, tmp_path):
    source = target["source"]
    checkpoint = read_checkpoint(spark_checkpoint(tmp_path / "spark.pth", source))
    assert checkpoint.format == ("nnssl SparK checkpoint without adaptation plan (ResEncL: encoder and stem "
                                 "pre-trained; its reconstruction decoder is not loaded)")
    assert checkpoint.pretrained_keys == encoder_keys(source)
    network = tiny_resenc(seed=2, classes=3)
    fresh = network.state_dict()
    state, report = transfer_checkpoint(checkpoint, network, {"background": 0, "liver": 1, "spleen": 2})
    assert report.encoder_loaded_fraction == 1.0 and not report.mismatched
    for key in encoder_keys(source):
        assert torch.equal(state[key], source.state_dict()[key]), key
    decoder = "decoder.stages.0.convs.0.conv.weight"
    assert report.skipped[decoder].startswith(NOT_PRETRAINED)
    assert torch.equal(state[decoder], fresh[decoder]) and not torch.equal(state[decoder], source.state_dict()[decoder])


def test_planning_from_a_spark_checkpoint_says_how_to_add_its_plan(target, tmp_path, capsys):
    spark = spark_checkpoint(tmp_path / "spark.pth", target["source"])
    assert main(["plan-transfer", "-d", str(DATASET), "--pretrained", str(spark)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{spark}: an nnssl SparK checkpoint has no nnssl_adaptation_plan" in error and "\n" not in error, error
    assert "python -m nnssl.utilities.add_adaptation_plan -i FILE" in error and "-pretrained_weights" in error


def test_damaged_and_hostile_files_give_one_line_errors(target, tmp_path, capsys):
    good = target["checkpoint"].read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[:len(good) // 2])
    plan = adaptation_plan()
    del plan["key_to_encoder"]
    nnssl_checkpoint(tmp_path / "no_key.pth", plan, target["source"].state_dict())
    nnssl_checkpoint(tmp_path / "no_encoder.pth", adaptation_plan(),
                     {k: v for k, v in target["source"].state_dict().items() if not k.startswith("encoder.")})
    nnssl_checkpoint(tmp_path / "pickled.pth", {**adaptation_plan(), "extra": NotWeights()}, {})
    plan = adaptation_plan()
    plan["pretrain_plan"]["transpose_forward"] = [0, 0, 1]
    nnssl_checkpoint(tmp_path / "bad_transpose.pth", plan, target["source"].state_dict())
    expected = {"truncated.pth": "not a readable PyTorch checkpoint",
                "no_key.pth": "nnssl checkpoint without nnssl_adaptation_plan['key_to_encoder']",
                "no_encoder.pth": "network_weights has no tensor under the encoder's path (key_to_encoder) "
                                   "'encoder.stages'",
                "pickled.pth": "refusing to load: the file holds Python objects other than weights",
                "bad_transpose.pth": "nnssl_adaptation_plan['pretrain_plan']['transpose_forward'] must order the "
                                     "image axes (a permutation of 0, 1, 2), got [0, 0, 1]"}
    for name, message in expected.items():
        assert main(["plan-transfer", "-d", str(DATASET), "--pretrained", str(tmp_path / name)]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and name in error and "\n" not in error, error
    with pytest.raises(pickle.UnpicklingError):  # the hostile file really holds an object
        torch.load(tmp_path / "pickled.pth", weights_only=True)


def test_a_plan_that_names_a_function_runs_nothing(target, tmp_path, monkeypatch, capsys):
    """nnU-Net would import ``os.system`` as the nonlinearity and call it with nonlin_kwargs while plan-transfer
    builds the network for its memory estimate: the plan is refused before anything is imported."""
    marker = tmp_path / "marker"
    kwargs = {**TINY_KWARGS, "nonlin": "os.system", "nonlin_kwargs": {"command": f"touch {shlex.quote(str(marker))}"}}
    hostile = nnssl_checkpoint(tmp_path / "hostile.pth", adaptation_plan(arch_kwargs=kwargs),
                               target["source"].state_dict())
    for name, value in target["folders"].items():
        monkeypatch.setenv(name, value)
    assert main(["plan-transfer", "-d", str(DATASET), "--pretrained", str(hostile), "--plans-name", "hostile",
                 "--no-preprocess", "-np", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert (f"{hostile}: nnssl_adaptation_plan.architecture_plans.arch_kwargs.nonlin = 'os.system' is not a torch.nn "
            f"convolution, normalisation, dropout or nonlinearity; refusing the file") in error and "\n" not in error
    with pytest.raises(ValueError, match="arch_kwargs.nonlin = 'os.system'"):
        read_checkpoint(hostile)  # every reader: transfer-weights, import-suprem, -pretrained_weights
    assert not marker.exists()
    assert not (Path(target["folders"]["nnUNet_preprocessed"]) / NAME / "hostile.json").exists()


@pytest.mark.e2e
def test_plan_transfer_plans_the_checkpoints_network_spacing_and_patch(target, planned):
    config = planned["plans"]["configurations"]["3d_fullres"]
    assert list(planned["plans"]["configurations"]) == ["3d_fullres"]
    assert config["architecture"]["network_class_name"] == \
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    assert config["architecture"]["arch_kwargs"] == TINY_KWARGS
    assert config["spacing"] == SPACING and config["patch_size"] == PATCH
    assert config["normalization_schemes"] == ["ZScoreNormalization"] and config["use_mask_for_norm"] == [False]
    source = planned["plans"]["transferred_from"]
    assert source["format"] == "nnssl checkpoint" and source["plans_file"] == str(target["checkpoint"])
    assert source["pretraining"]["spacing"] == SPACING and source["pretraining"]["patch_size"] == [16, 16, 16]
    preprocessed = Path(target["folders"]["nnUNet_preprocessed"]) / NAME / f"{PLANS}_3d_fullres"
    assert len(list(preprocessed.glob("*.pkl"))) == 2


@pytest.mark.e2e
def test_transfer_weights_and_finetuning_load_the_whole_encoder(target, planned, tmp_path):
    out = tmp_path / "weights.pth"
    result = run(cli("transfer-weights", str(target["checkpoint"]), "-d", str(DATASET), "-p", PLANS, "-o", str(out)),
                 target["env"])
    assert "(nnssl checkpoint (ResidualEncoderUNet, encoder and stem))" in result.stdout
    assert "100.0% of the encoder loaded" in result.stdout and "0 shape-mismatched" in result.stdout
    assert read_checkpoint(out).pretrained_keys  # a file SuPreMFinetuneTrainer reads back

    env = {**target["env"], "nnUNet_extTrainer": str(trainers_dir()), "nnUNet_n_proc_DA": "0",
           "nnUNet_results": str(tmp_path / "results")}
    result = run(command("nnUNetv2_train", str(DATASET), "3d_fullres", "all", "-p", PLANS, "-tr",
                         "SuPreMFinetuneTrainer_smoke", "-device", "cpu", "-pretrained_weights",
                         str(target["checkpoint"])), env)
    assert "nnssl checkpoint (ResidualEncoderUNet, encoder and stem)" in result.stdout
    assert "100.0% of the encoder loaded" in result.stdout
    folder = tmp_path / "results" / NAME / f"SuPreMFinetuneTrainer_smoke__{PLANS}__3d_fullres" / "fold_all"
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert "  loaded      encoder.stem.convs.0.conv.weight" in log
    assert "  skipped     decoder.stages.0.convs.0.conv.weight  (in the checkpoint but not pre-trained" in log
    assert (folder / "checkpoint_final.pth").is_file()


@pytest.mark.e2e
def test_plan_transfer_gives_nnunet_the_median_spacing_in_its_axis_order(target, planned, tmp_path, monkeypatch):
    """nnU-Net then transposes the coarse axis first, as nnssl did in pre-training: the network sees the axes, the
    spacing and the patch it was pre-trained on (read in the readers' order, they would land on the wrong axes)."""
    checkpoint = median_checkpoint(tmp_path / "median.pth", target["source"].state_dict())
    for name, value in target["folders"].items():
        monkeypatch.setenv(name, value)
    assert main(["plan-transfer", "-d", str(DATASET), "--pretrained", str(checkpoint), "--plans-name", "nnsslMedian",
                 "--no-preprocess", "-np", "1"]) == 0  # the fingerprint is the planned fixture's
    plans = json.loads((Path(target["folders"]["nnUNet_preprocessed"]) / NAME / "nnsslMedian.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert plans["transpose_forward"] == [2, 0, 1]
    assert config["spacing"] == [6.0, 2.0, 3.0] and config["patch_size"] == [16, 32, 48]


@pytest.mark.e2e
def test_transfer_weights_from_a_spark_checkpoint(target, planned, tmp_path, monkeypatch, capsys):
    spark, out = spark_checkpoint(tmp_path / "spark.pth", target["source"]), tmp_path / "weights.pth"
    for name, value in target["folders"].items():
        monkeypatch.setenv(name, value)
    assert main(["transfer-weights", str(spark), "-d", str(DATASET), "-p", PLANS, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("(nnssl SparK checkpoint without adaptation plan (ResEncL: encoder and stem pre-trained; its "
            "reconstruction decoder is not loaded))") in printed
    assert "100.0% of the encoder loaded" in printed
    assert f"skipped     decoder.stages.0.convs.0.conv.weight  ({NOT_PRETRAINED})" in printed
    assert not any(k.startswith("decoder.stages.") for k in read_checkpoint(out).pretrained_keys)
