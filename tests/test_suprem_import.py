"""The released SuPreM networks in nnU-Net: the networks, the release layout, import-suprem, fine-tuning, prediction.

The released files cannot be downloaded here: checkpoints are built in the documented layout ({"net": ...},
``module.backbone.`` prefixes, the Universal Model's head keys) from the network itself, with random weights.
"""
import json
import re
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch

from conftest import WORKERS, cli, raw_phantom_dataset, run, subprocess_env
from nnunet_suprem.architectures import supports_deep_supervision
from nnunet_suprem.architectures.suprem_unet3d import SuPreMUNet3D
from nnunet_suprem.cli import main
from nnunet_suprem.transfer.checkpoint import read_checkpoint

DATASET, NAME = 7, "Dataset007_Target"
PLANS = "nnUNetPlans_suprem_unet"
SMALL = ["--spacing", "16", "16", "16", "--patch-size", "16", "16", "16"]  # the tests' recipe: tiny volumes
UNIVERSAL_MODEL_HEAD = {  # the CLIP-driven Universal Model around the U-Net (word embeddings, 32 classes)
    "module.organ_embedding": (32, 512),
    "module.text_to_vision.weight": (256, 512), "module.text_to_vision.bias": (256,),
    "module.controller.weight": (153, 512, 1, 1, 1), "module.controller.bias": (153,),
    "module.precls_conv.0.weight": (64,), "module.precls_conv.0.bias": (64,),
    "module.precls_conv.2.weight": (8, 64, 1, 1, 1), "module.precls_conv.2.bias": (8,),
    "module.GAP.0.weight": (512,), "module.GAP.0.bias": (512,), "module.GAP.3.weight": (256, 512, 1, 1, 1),
    "module.GAP.3.bias": (256,)}
CLASS_NAME = "nnunet_suprem.architectures.suprem_unet3d.SuPreMUNet3D"


class NotWeights:
    pass


def released_checkpoint(path: Path, seed: int = 1) -> SuPreMUNet3D:
    """A file in the layout of supervised_suprem_unet_2100.pth (32-class backbone inside the Universal Model)."""
    torch.manual_seed(seed)
    network = SuPreMUNet3D(1, 32)
    net = {f"module.backbone.{k}": v for k, v in network.state_dict().items()}
    net.update({k: torch.randn(shape) for k, shape in UNIVERSAL_MODEL_HEAD.items()})
    torch.save({"net": net, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "scheduler": {},
                "epoch": 100}, path)
    return network


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A raw phantom dataset (hospA LPS, hospB RAS; 3 training and 1 test case each) and a released checkpoint."""
    root = tmp_path_factory.mktemp("suprem_import")
    folders = raw_phantom_dataset(root, DATASET, "Target", ["hospA", "hospB"], num_cases=3, num_test_cases=1)
    source = released_checkpoint(root / "supervised_suprem_unet_2100.pth")
    return {"folders": folders, "env": subprocess_env(folders), "checkpoint": root / "supervised_suprem_unet_2100.pth",
            "source": source, "root": root}


@pytest.fixture(scope="module")
def imported(target):
    """``nnunet-suprem import-suprem`` run on the target (plans, preprocessing, weights)."""
    result = run(cli("import-suprem", str(target["checkpoint"]), "--arch", "unet", "-d", str(DATASET), "-np", WORKERS,
                     *SMALL), target["env"])
    folder = Path(target["folders"]["nnUNet_preprocessed"]) / NAME
    return {"stdout": result.stdout, "plans": json.loads((folder / f"{PLANS}.json").read_text()),
            "weights": folder / f"{PLANS}__supervised_suprem_unet_2100.pth"}


def test_network_matches_the_released_backbone():
    network = SuPreMUNet3D(1, 32)
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(19.08e6, rel=1e-3)  # the release's size
    keys = network.state_dict()
    assert tuple(keys["down_tr64.ops.0.conv1.weight"].shape) == (32, 1, 3, 3, 3)
    assert tuple(keys["up_tr256.ops.0.conv1.weight"].shape) == (256, 768, 3, 3, 3)
    assert tuple(keys["up_tr64.up_conv.weight"].shape) == (128, 128, 2, 2, 2)
    assert "down_tr64.ops.0.bn1.num_batches_tracked" in keys and "out_tr.final_conv.bias" in keys
    assert not supports_deep_supervision(CLASS_NAME)
    assert supports_deep_supervision("dynamic_network_architectures.architectures.unet.PlainConvUNet")
    assert tuple(SuPreMUNet3D(2, 3)(torch.randn(2, 2, 16, 24, 8)).shape) == (2, 3, 16, 24, 8)
    with pytest.raises(ValueError, match=r"multiples of \(8, 8, 8\).*\(16, 20, 8\)"):
        network(torch.randn(1, 1, 16, 20, 8))
    with pytest.raises(AttributeError, match="no deep supervision.*SuPreMFinetuneTrainer"):
        network.decoder.deep_supervision = True  # what nnU-Net's own trainer would do


@pytest.mark.e2e
def test_batch_norm_always_uses_batch_statistics():
    torch.manual_seed(0)
    network = SuPreMUNet3D(1, 2).eval()
    bn = network.down_tr64.ops[0].bn1
    running = (bn.running_mean.clone(), bn.running_var.clone())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        features = network.down_tr64.ops[0].conv1(x)
        normalised = bn(features)
        network(x)
    assert torch.allclose(normalised.mean(dim=(0, 2, 3, 4)), torch.zeros(32), atol=1e-4)  # batch statistics
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])  # eval: untouched
    network.train()(x)
    assert not torch.equal(bn.running_mean, running[0]) and bn.num_batches_tracked == 1


def test_release_layout_takes_the_backbone_and_keeps_the_head_apart(target):
    checkpoint = read_checkpoint(target["checkpoint"])
    assert checkpoint.format == "SuPreM release (Universal Model under 'net')" and checkpoint.extra["epoch"] == 100
    head = {k.removeprefix("module.") for k in UNIVERSAL_MODEL_HEAD}
    assert set(checkpoint.extra["universal_model_head"]) == head | {"backbone.out_tr.final_conv.weight",
                                                                     "backbone.out_tr.final_conv.bias"}
    source = target["source"].state_dict()
    backbone = {k for k in source if not k.startswith("out_tr.")}
    assert set(checkpoint.state_dict) == backbone | set(checkpoint.extra["universal_model_head"])
    assert torch.equal(checkpoint.state_dict["down_tr64.ops.0.conv1.weight"], source["down_tr64.ops.0.conv1.weight"])


@pytest.mark.e2e
def test_import_loads_the_whole_backbone_and_reports_the_dropped_head(target, imported):
    out = imported["stdout"]
    assert "SuPreM release (Universal Model under 'net')" in out
    assert "100.0% of the encoder loaded" in out and "0 shape-mismatched" in out
    source = target["source"].state_dict()
    backbone = [k for k in source if not k.startswith("out_tr.")]
    assert f"backbone: all {len(backbone)} tensors loaded" in out
    for key in ("organ_embedding", "controller.weight", "GAP.3.weight", "backbone.out_tr.final_conv.weight"):
        assert f"  unused      {key}" in out
    assert "skipped     out_tr.final_conv.weight  (new head for the target's classes" in out
    assert f"-p {PLANS} -tr SuPreMFinetuneTrainer -pretrained_weights {imported['weights']}" in out

    weights = read_checkpoint(imported["weights"])
    assert weights.pretrained_keys == frozenset(backbone)
    for key in backbone:
        assert torch.equal(weights.state_dict[key], source[key]), key
    labels = json.loads((Path(target["folders"]["nnUNet_raw"]) / NAME / "dataset.json").read_text())["labels"]
    assert tuple(weights.state_dict["out_tr.final_conv.weight"].shape) == (len(labels), 64, 1, 1, 1)


def test_import_writes_plans_with_the_network_and_suprem_preprocessing(imported):
    plans = imported["plans"]
    config = plans["configurations"]["3d_fullres"]
    assert list(plans["configurations"]) == ["3d_fullres"]
    assert config["architecture"] == {"network_class_name": CLASS_NAME, "_kw_requires_import": [],
                                      "arch_kwargs": {"strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]}}
    assert config["patch_size"] == [16, 16, 16] and config["spacing"] == [16.0, 16.0, 16.0]
    assert config["batch_size"] == 2 and config["normalization_schemes"] == ["CTNormalization"]
    assert plans["foreground_intensity_properties_per_channel"]["0"] == {
        "mean": -175.0, "std": 425.0, "percentile_00_5": -175.0, "percentile_99_5": 250.0}
    assert plans["image_reader_writer"] == "NibabelIOWithReorient"
    assert plans["transpose_forward"] == [2, 1, 0] and plans["transpose_backward"] == [2, 1, 0]
    assert plans["suprem_release"]["arch"] == "unet"


def test_the_network_sees_ras_arrays_in_suprems_axis_order(target, imported):
    """nnU-Net's reader + the plans' transpose give the array SuPreM's MONAI pipeline (LoadImage, RAS) gives."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(imported["plans"])
    image = Path(target["folders"]["nnUNet_raw"]) / NAME / "imagesTr" / "hospA_0000_0000.nii.gz"  # LPS on disk
    data, _ = plans.image_reader_writer_class().read_images([str(image)])
    expected = nibabel.as_closest_canonical(nibabel.load(image)).get_fdata()
    assert np.array_equal(data[0].transpose(plans.transpose_forward), expected)


def test_the_suprem_default_recipe_plans_96_cubed_at_1_5_mm(target, imported):
    from nnunet_suprem.architectures import ARCHITECTURES
    from nnunet_suprem.planning.planners import SuPreMReleasePlanner

    with pytest.MonkeyPatch.context() as mp:
        for name, value in target["folders"].items():
            mp.setenv(name, value)
        planner = SuPreMReleasePlanner(DATASET, ARCHITECTURES["unet"].architecture_block())
        plan = planner.get_plans_for_configuration((1.5, 1.5, 1.5), (300, 250, 250),
                                                   planner.generate_data_identifier("3d_fullres"), 100 * 300 * 250 ** 2,
                                                   {})
    assert plan["patch_size"] == (96, 96, 96) and plan["batch_size"] == 3
    assert plan["architecture"]["network_class_name"] == CLASS_NAME


@pytest.mark.e2e
def test_suprem_trainers_switch_deep_supervision_off(target, imported, tmp_path, monkeypatch):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer

    for name, value in {**target["folders"], "nnUNet_results": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    dataset_json = json.loads((Path(target["folders"]["nnUNet_preprocessed"]) / NAME / "dataset.json").read_text())

    def make(cls):
        trainer = cls({**imported["plans"], "continue_training": False}, "3d_fullres", 0, dataset_json,
                      device=torch.device("cpu"))
        trainer.initialize()
        return trainer

    ours = make(SuPreMFinetuneTrainer)
    assert not ours.enable_deep_supervision and not isinstance(ours.loss, DeepSupervisionWrapper)
    ours.set_deep_supervision_enabled(True)  # nnU-Net calls it around the final validation: nothing to switch
    with torch.no_grad():
        output = ours.network(torch.zeros(2, 1, 16, 16, 16))
        assert tuple(output.shape) == (2, len(dataset_json["labels"]), 16, 16, 16)
        assert ours.loss(output, torch.zeros(2, 1, 16, 16, 16)) > 0
    ours.load_pretrained_weights(str(target["checkpoint"]))  # the released file itself works too
    source = target["source"].state_dict()
    assert all(torch.equal(ours.network.state_dict()[k], v) for k, v in source.items() if not k.startswith("out_tr."))
    log = Path(ours.log_file).read_text()
    assert "100.0% of the encoder loaded" in log and "  unused      organ_embedding" in log

    stock = make(nnUNetTrainer)  # nnU-Net's own trainer stops where it would switch deep supervision on
    with pytest.raises(AttributeError, match="no deep supervision.*-tr SuPreMFinetuneTrainer"):
        stock.set_deep_supervision_enabled(True)


@pytest.mark.parametrize("case", ["truncated", "wrong_architecture", "missing_keys", "not_weights"])
def test_bad_checkpoints_fail_clearly_before_planning(target, tmp_path, monkeypatch, capsys, case):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    for name, value in target["folders"].items():
        monkeypatch.setenv(name, value)
    path = tmp_path / f"{case}.pth"
    if case == "truncated":
        path.write_bytes(target["checkpoint"].read_bytes()[:5000])
        expected = "truncated.pth: not a readable PyTorch checkpoint"
    elif case == "wrong_architecture":
        plain = PlainConvUNet(1, 4, (32, 64, 128, 256), torch.nn.Conv3d, 3, (1, 2, 2, 2), 2, 4, 2, True,
                              torch.nn.InstanceNorm3d)
        torch.save({"net": {f"module.{k}": v for k, v in plain.state_dict().items()}}, path)
        expected = (r"wrong_architecture.pth: not a SuPreM unet backbone \(supervised_suprem_unet_2100.pth\): "
                    r"104 of the 104 backbone tensors are missing(.|\n)*its keys look like: encoder.stages"
                    r"(.|\n)*Check --arch")
    elif case == "missing_keys":
        state = read_checkpoint(target["checkpoint"]).state_dict
        torch.save({k: v for k, v in state.items() if not k.startswith("up_tr64.")}, path)
        expected = r"missing_keys.pth: not a SuPreM unet backbone(.|\n)*up_tr64.up_conv.weight: not in the checkpoint"
    else:
        torch.save({"net": {"w": torch.zeros(1)}, "hook": NotWeights()}, path)
        expected = "not_weights.pth: refusing to load.*weights_only=True"
    assert main(["import-suprem", str(path), "--arch", "unet", "-d", str(DATASET), "--plans-name", case,
                 *SMALL]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not (Path(target["folders"]["nnUNet_preprocessed"]) / NAME / f"{case}.json").exists()


MONAI_RELEASES = {  # arch: (parameters of the release, key prefix in the release, a small valid patch)
    "segresnet": (4.70e6, "module.", (16, 16, 16)),
    "swinunetr": (62.19e6, "module.backbone.", (32, 32, 64)),
}


@pytest.mark.e2e
@pytest.mark.parametrize("arch", sorted(MONAI_RELEASES))
def test_monai_networks_match_the_releases(arch):
    pytest.importorskip("monai")
    from nnunet_suprem.architectures import ARCHITECTURES

    cls = ARCHITECTURES[arch].network_class()
    parameters, _, patch = MONAI_RELEASES[arch]
    network = cls(1, 32)
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(parameters, rel=1e-3)
    assert not supports_deep_supervision(ARCHITECTURES[arch].network_class_name)
    assert network.compute_conv_feature_map_size((96, 96, 96)) > 0
    with torch.no_grad():
        assert tuple(cls(2, 3)(torch.randn(1, 2, *patch)).shape) == (1, 3, *patch)
    with pytest.raises(ValueError, match=f"{cls.__name__} needs 3D input sizes that are multiples of"):
        network(torch.randn(1, 1, patch[0] + 4, *patch[1:]))
    with pytest.raises(AttributeError, match="no deep supervision"):
        network.decoder.deep_supervision = True


@pytest.mark.e2e
@pytest.mark.parametrize("arch", sorted(MONAI_RELEASES))
def test_monai_releases_import_and_train_in_nnunet(arch, target, imported, tmp_path, monkeypatch, capsys):
    pytest.importorskip("monai")
    from nnunet_suprem.architectures import ARCHITECTURES
    from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer

    release = ARCHITECTURES[arch]
    _, prefix, patch = MONAI_RELEASES[arch]
    torch.manual_seed(1)
    source = release.network_class()(1, 32).state_dict()
    net = {f"{prefix}{k}": v for k, v in source.items()}
    if prefix == "module.backbone.":  # the Universal Model around the backbone
        net.update({k: torch.randn(shape) for k, shape in UNIVERSAL_MODEL_HEAD.items()})
    torch.save({"net": net, "epoch": 3}, tmp_path / release.release_file)
    for name, value in {**target["folders"], "nnUNet_results": str(tmp_path / "results")}.items():
        monkeypatch.setenv(name, value)

    weights = tmp_path / "weights.pth"
    assert main(["import-suprem", str(tmp_path / release.release_file), "--arch", arch, "-d", str(DATASET),
                 "--plans-name", f"suprem_{arch}", "--spacing", "16", "16", "16", "--patch-size",
                 *map(str, patch), "-np", "1", "-o", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "100.0% of the encoder loaded" in out and "0 shape-mismatched" in out and "backbone: all" in out
    head = [k for k in source if k.startswith(release.head + ".")]
    assert head and all(f"skipped     {k}  (new head" in out for k in head)
    backbone = {k for k in source if k not in head}
    converted = read_checkpoint(weights)
    assert converted.pretrained_keys == backbone
    assert all(torch.equal(converted.state_dict[k], source[k]) for k in backbone)

    plans = json.loads((Path(target["folders"]["nnUNet_preprocessed"]) / NAME / f"suprem_{arch}.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["architecture"]["network_class_name"] == release.network_class_name
    assert config["patch_size"] == list(patch)[::-1]  # given as read (z, y, x), planned for the network (x, y, z)
    assert plans["image_reader_writer"] == "NibabelIOWithReorient"
    patch = tuple(config["patch_size"])
    dataset_json = json.loads((Path(target["folders"]["nnUNet_preprocessed"]) / NAME / "dataset.json").read_text())
    trainer = SuPreMFinetuneTrainer({**plans, "continue_training": False}, "3d_fullres", 0, dataset_json,
                                    device=torch.device("cpu"))
    trainer.initialize()
    trainer.load_pretrained_weights(str(weights))
    assert not trainer.enable_deep_supervision and trainer.pretrained_keys
    step = trainer.train_step({"data": torch.randn(2, 1, *patch), "keys": ["a", "b"],
                               "target": torch.randint(0, len(dataset_json["labels"]), (2, 1, *patch))})
    assert np.isfinite(step["loss"])
