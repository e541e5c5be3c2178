"""Weight transfer on real nnU-Net networks built from the planned phantom dataset's plans."""
import copy
import json
import pickle
import re

import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

from conftest import cli, run
from nnunet_suprem.orientation import ORIENTATION_KEY
from nnunet_suprem.transfer.apply import build_network_from_plans, image_channel_count, transfer_checkpoint
from nnunet_suprem.transfer.checkpoint import read_checkpoint, strip_prefixes
from nnunet_suprem.transfer.state_dict import adapt_input_conv, input_conv_rule, tensor_names

STEM = "encoder.stages.0.0.convs.0.conv.weight"


@pytest.fixture(scope="module")
def target(planned_phantom_dataset):
    preprocessed = planned_phantom_dataset["raw"].parents[1] / "nnUNet_preprocessed" / "Dataset001_SynthCT"
    return {"plans": json.loads((preprocessed / "nnUNetPlans.json").read_text()),
            "dataset_json": json.loads((preprocessed / "dataset.json").read_text()),
            "env": planned_phantom_dataset["env"]}


def network(target, labels=None, channels=None, stages=None, seed=0):
    plans, dataset_json = copy.deepcopy(target["plans"]), copy.deepcopy(target["dataset_json"])
    if labels is not None:
        dataset_json["labels"] = {"background": 0, **{name: i + 1 for i, name in enumerate(labels)}}
    if channels is not None:
        dataset_json["channel_names"] = {str(i): "CT" for i in range(channels)}
    if stages is not None:
        kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        kwargs["n_stages"] = stages
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
            kwargs[key] = kwargs[key][:stages]
        kwargs["n_conv_per_stage_decoder"] = kwargs["n_conv_per_stage_decoder"][:stages - 1]
    torch.manual_seed(seed)
    return build_network_from_plans(plans, dataset_json, "3d_fullres"), dataset_json["labels"]


def save(tmp_path, content, name="pretrained.pth"):
    path = tmp_path / name
    torch.save(content, path)
    return path


def nnunet_checkpoint(net, labels):
    return {"network_weights": net.state_dict(), "init_args": {"dataset_json": {"labels": labels}},
            "trainer_name": "SuPreMTrainer", "_best_ema": None, "current_epoch": 3}


def test_same_architecture_and_labels_loads_everything(target, tmp_path):
    source, labels = network(target, seed=1)
    dest, _ = network(target, seed=2)
    ras = {"reader": "NibabelIOWithReorient", "left_right": [2, -1], "patch_left_right": [2, -1]}
    checkpoint = read_checkpoint(save(tmp_path, {**nnunet_checkpoint(source, labels), ORIENTATION_KEY: ras}))
    assert checkpoint.format == "nnU-Net checkpoint" and checkpoint.labels == labels
    # the phantoms' kidneys, lungs, femurs and adrenal glands: whole heads need left-right alike on both sides
    state, report = transfer_checkpoint(checkpoint, dest, labels, target_orientation=ras)
    assert not report.skipped and not report.mismatched and not report.unused
    assert report.encoder_loaded_fraction == 1.0
    assert len(report.loaded) == len(tensor_names(dest.state_dict(keep_vars=True)))
    dest.load_state_dict(state)
    for key, value in source.state_dict().items():
        assert torch.equal(dest.state_dict()[key], value), key


def test_new_classes_reinitialise_only_the_heads(target, tmp_path):
    source, labels = network(target, labels=["liver", "spleen"], seed=1)
    dest, dest_labels = network(target, seed=2)
    fresh_heads = {k: v.clone() for k, v in dest.state_dict().items() if ".seg_layers." in k}
    checkpoint = read_checkpoint(save(tmp_path, nnunet_checkpoint(source, labels)))
    _, report = transfer_checkpoint(checkpoint, dest, dest_labels)  # by default the known classes' rows are carried
    assert report.carried_classes == {"background": "background", "liver": "liver", "spleen": "spleen"}
    assert report.rows_carried and all(".seg_layers." in k for k in report.rows_carried)
    state, report = transfer_checkpoint(checkpoint, dest, dest_labels, head_transfer=False)
    heads = [k for k in report.skipped if ".seg_layers." in k]
    assert heads and set(report.skipped) == set(heads)
    assert all("re-initialised" in report.skipped[k] for k in heads)
    assert not report.mismatched and report.encoder_loaded_fraction == 1.0
    assert set(report.unused) == {k for k in source.state_dict() if ".seg_layers." in k}
    for key, value in fresh_heads.items():
        assert torch.equal(state[key], value)
    assert torch.equal(state["decoder.stages.0.convs.0.conv.weight"],
                       source.state_dict()["decoder.stages.0.convs.0.conv.weight"])


def test_same_class_count_with_other_labels_keeps_fresh_heads(target, tmp_path):
    _, labels = network(target)
    renamed = [f"organ{i}" for i in range(len(labels) - 1)]
    source, source_labels = network(target, labels=renamed, seed=1)
    dest, _ = network(target, seed=2)
    _, report = transfer_checkpoint(read_checkpoint(save(tmp_path, nnunet_checkpoint(source, source_labels))), dest,
                                    labels)
    assert any(".seg_layers." in k for k in report.skipped)
    plain = read_checkpoint(save(tmp_path, source.state_dict(), "plain.pth"))
    assert plain.labels is None
    _, report = transfer_checkpoint(plain, dest, labels)  # labels unknown: heads are not trusted either
    assert any(".seg_layers." in k for k in report.skipped)


def test_more_input_channels_adapt_the_first_convolution(target, tmp_path):
    source, labels = network(target, seed=1)
    dest, _ = network(target, channels=3, seed=2)
    state, report = transfer_checkpoint(read_checkpoint(save(tmp_path, source.state_dict())), dest, labels)
    assert set(report.adapted) == {STEM} and STEM in report.loaded and not report.mismatched
    weight = source.state_dict()[STEM]
    assert torch.allclose(state[STEM], weight.repeat(1, 3, 1, 1, 1) / 3)
    assert torch.equal(state[STEM], state["encoder.stages.0.0.convs.0.all_modules.0.weight"])  # alias follows
    dest.load_state_dict(state)


def test_a_cascade_stage_keeps_the_image_weights_and_starts_the_segmentation_channels_at_zero(target, tmp_path):
    """3d_cascade_fullres feeds the image, then the previous stage's one-hot segmentation: the pre-trained first
    convolution is the image's (not divided by 1 + K over every input) and the segmentation channels start at 0."""
    source, labels = network(target, seed=1)
    plans, dataset_json = copy.deepcopy(target["plans"]), copy.deepcopy(target["dataset_json"])
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    dest = build_network_from_plans(plans, dataset_json, "3d_cascade_fullres")
    foreground = len(dataset_json["labels"]) - 1
    state, report = transfer_checkpoint(read_checkpoint(save(tmp_path, source.state_dict())), dest, labels,
                                        image_channels=image_channel_count(dataset_json))
    weight = source.state_dict()[STEM]
    assert state[STEM].shape[1] == 1 + foreground and torch.equal(state[STEM][:, :1], weight)
    assert not state[STEM][:, 1:].any()
    assert report.adapted == {STEM: f"input channels 1 -> 1 image + {foreground} previous-stage segmentation "
                                    f"channels starting at zero"}
    assert adapt_input_conv(weight.repeat(1, 2, 1, 1, 1), 4, image_channels=1).shape[1] == 4  # 2 -> 1 image + 3
    assert input_conv_rule(2, 4, 1) == ("input channels 2 -> 1 image (summed and spread) + 3 previous-stage "
                                        "segmentation channels starting at zero")
    assert input_conv_rule(1, 3) == "input channels 1 -> 3 (repeated and rescaled)"
    dest.load_state_dict(state)


def test_different_depth_is_a_clear_error(target, tmp_path):
    source, labels = network(target, stages=3, seed=1)
    dest, _ = network(target, seed=2)
    path = save(tmp_path, source.state_dict())
    with pytest.raises(ValueError) as error:
        transfer_checkpoint(read_checkpoint(path), dest, labels)
    message = str(error.value)
    assert str(path) in message and "of the target network's encoder would load" in message
    assert "encoder.stages.3.0.convs.0.conv.weight: not in the checkpoint" in message and "plan-transfer" in message


def test_encoder_only_takes_the_encoder_under_all_its_names(target, tmp_path):
    source, labels = network(target, seed=1)
    dest, _ = network(target, seed=2)
    before = {k: v.clone() for k, v in dest.state_dict().items()}
    state, report = transfer_checkpoint(read_checkpoint(save(tmp_path, source.state_dict())), dest, labels,
                                        encoder_only=True)
    assert report.encoder_loaded_fraction == 1.0
    assert all(k.startswith("encoder.") for k in report.loaded)
    assert any(k.startswith("decoder.stages") for k in report.skipped)
    assert torch.equal(state[f"decoder.{STEM}"], source.state_dict()[STEM])  # nnU-Net's decoder.encoder alias
    assert torch.equal(state["decoder.stages.0.convs.0.conv.weight"], before["decoder.stages.0.convs.0.conv.weight"])
    dest.load_state_dict(state)  # strict: every alias is present


def test_wrappers_and_prefixes(target, tmp_path):
    source, labels = network(target, seed=1)
    dest, _ = network(target, seed=2)
    ddp_compiled = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    checkpoint = read_checkpoint(save(tmp_path, {"net": ddp_compiled, "epoch": 7, "optimizer": {}}))
    assert checkpoint.format == "training checkpoint with weights under 'net'" and checkpoint.extra == {"epoch": 7}
    assert set(checkpoint.state_dict) == set(source.state_dict())
    _, report = transfer_checkpoint(checkpoint, dest, labels)
    assert report.encoder_loaded_fraction == 1.0 and not report.mismatched
    assert report.unused and all(".seg_layers." in k for k in report.unused)  # labels unknown: fresh heads
    assert strip_prefixes({"_orig_mod.module.a": 1, "b": 2}) == {"a": 1, "b": 2}


class NotWeights:
    pass


def test_unsafe_truncated_and_empty_files_are_refused(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"net": {"w": torch.zeros(1)}, "hook": NotWeights()}, unsafe)
    with pytest.raises(ValueError, match="refusing to load.*weights_only=True"):
        read_checkpoint(unsafe)
    good = save(tmp_path, {"w": torch.zeros(3)}, "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.pth: not a readable PyTorch checkpoint"):
        read_checkpoint(truncated)
    with pytest.raises(ValueError, match="no weights found.*'optimizer'"):
        read_checkpoint(save(tmp_path, {"optimizer": {"lr": 1.0}}, "noweights.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_checkpoint(tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises((ValueError, pickle.UnpicklingError), match="notes.pth"):
        read_checkpoint(text)


@pytest.mark.parametrize("channels", [1, 2, 4, 6])
def test_adapt_input_conv_keeps_the_response_to_replicated_input(channels):
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 3, 3, 3)
    image = torch.randn(1, 1, 6, 6, 6)
    adapted = adapt_input_conv(weight, channels)
    assert adapted.shape == (8, channels, 3, 3, 3)
    expected = torch.nn.functional.conv3d(image.expand(1, 3, -1, -1, -1), weight)
    got = torch.nn.functional.conv3d(image.expand(1, channels, -1, -1, -1), adapted)
    assert torch.allclose(got, expected, atol=1e-4)


def test_transfer_weights_cli_writes_a_file_stock_nnunet_loads(target, tmp_path):
    source, _ = network(target, labels=["liver"], seed=1)
    pretrained = save(tmp_path, {"net": {f"module.{k}": v for k, v in source.state_dict().items()}})
    out = tmp_path / "weights.pth"
    result = run(cli("transfer-weights", str(pretrained), "-d", "1", "-p", "nnUNetPlans", "-c", "3d_fullres",
                     "-o", str(out), "--encoder-only"), target["env"])
    assert "100.0% of the encoder loaded" in result.stdout
    assert "skipped     decoder.stages.0.convs.0.conv.weight  (outside the encoder" in result.stdout
    assert "-tr SuPreMFinetuneTrainer -pretrained_weights" in result.stdout

    dest, _ = network(target, seed=5)
    load_pretrained_weights(dest, str(out))  # nnU-Net's own loader accepts the file
    assert torch.equal(dest.state_dict()[STEM], source.state_dict()[STEM])
    metadata = read_checkpoint(out)
    assert metadata.pretrained_keys and all(k.startswith(("encoder.", "decoder.encoder.")) for k in
                                            metadata.pretrained_keys)
    assert f"decoder.{STEM}" in metadata.pretrained_keys

    again = run_fails(cli("transfer-weights", str(pretrained), "-d", "1", "-o", str(out)), target["env"])
    assert "already exists" in again


def run_fails(command, env) -> str:
    import subprocess

    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr


def test_a_networks_declared_head_is_reinitialised_like_nnunets_seg_layers():
    from nnunet_suprem.architectures.suprem_unet3d import SuPreMUNet3D

    torch.manual_seed(0)
    source, dest = SuPreMUNet3D(1, 4), SuPreMUNet3D(1, 4)  # same shapes: only the declared head tells them apart
    checkpoint = read_checkpoint_from_state(source.state_dict())
    state, report = transfer_checkpoint(checkpoint, dest, {"background": 0, "a": 1, "b": 2, "c": 3})
    assert set(report.skipped) == {"out_tr.final_conv.weight", "out_tr.final_conv.bias"}
    assert all("re-initialised" in why for why in report.skipped.values())
    assert torch.equal(state["out_tr.final_conv.weight"], dest.state_dict()["out_tr.final_conv.weight"])
    assert report.encoder_loaded_fraction == 1.0


def read_checkpoint_from_state(state_dict):
    from nnunet_suprem.transfer.checkpoint import Checkpoint

    return Checkpoint("in-memory", dict(state_dict), "plain state dict")


def plain_unet(strides: list, seed: int) -> torch.nn.Module:
    """A small nnU-Net PlainConvUNet (features capped at 16, so the deep stages all have the same shapes)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    n = len(strides)
    return PlainConvUNet(1, n, [min(4 * 2 ** i, 16) for i in range(n)], torch.nn.Conv3d, 3, strides, 1, 3, 1,
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=True)


def test_decoder_stages_transfer_between_equal_resolution_levels_only():
    """6-stage source, 7-stage target: decoder index 0 is the deepest stage, so equal indices are other levels."""
    iso, aniso = (2, 2, 2), (1, 2, 2)
    target_strides = [(1, 1, 1), iso, iso, iso, iso, iso, aniso]  # decoder levels 0-5 from full resolution
    dest = plain_unet(target_strides, seed=2)
    for source_strides, loaded_levels in (([(1, 1, 1), iso, iso, iso, iso, iso], range(5)),
                                          ([(1, 1, 1), iso, iso, aniso, iso, iso], range(2))):
        source = plain_unet(source_strides, seed=1)
        checkpoint = read_checkpoint_from_state(source.state_dict())
        with pytest.raises(ValueError, match="of the target network's encoder would load"):
            transfer_checkpoint(checkpoint, dest)  # the 90% encoder rule: the target's deepest stage is new
        state, report = transfer_checkpoint(checkpoint, dest, min_encoder_fraction=0.5)
        for level in range(6):
            key, source_key = f"decoder.stages.{5 - level}.convs.0.conv.weight", \
                f"decoder.stages.{4 - level}.convs.0.conv.weight"
            if level in loaded_levels:
                assert key in report.loaded and torch.equal(state[key], source.state_dict()[source_key])
            else:
                assert f"decoder stage at resolution level {level}" in report.skipped[key]
                assert torch.equal(state[key], dest.state_dict()[key])
        assert "the checkpoint's decoder has no such level" in report.skipped["decoder.stages.0.convs.0.conv.weight"]
        assert source.state_dict()["decoder.stages.0.convs.0.conv.weight"].shape == \
            dest.state_dict()["decoder.stages.0.convs.0.conv.weight"].shape  # the old index match took it
        skipped_upsampling = [k for k in report.skipped if re.fullmatch(r"decoder\.transpconvs\.\d+\.weight", k)]
        assert len(skipped_upsampling) == 6 - len(loaded_levels)
    assert "upsampling strides from full resolution" in report.skipped["decoder.stages.3.convs.0.conv.weight"]
    dest.load_state_dict(state)


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path):
    state = {f"layer{i}.weight": torch.ones(2) for i in range(6)}
    for i, value in enumerate((float("nan"), float("inf"), float("-inf"), float("nan"))):
        state[f"layer{i}.weight"][1] = value
    state["alias.weight"] = state["layer0.weight"]  # one tensor under two names (a module's alias) counts once
    with pytest.raises(ValueError, match=r"plain.pth: refusing to load: 4 tensor\(s\) hold NaN or infinite values "
                                         r"\(layer0.weight, layer1.weight, layer2.weight and 1 more\)"):
        read_checkpoint(save(tmp_path, state, "plain.pth"))
    nnunet = {"network_weights": {"w": torch.zeros(2)}, "optimizer_state": {"state": {0: {
        "momentum_buffer": torch.tensor([float("nan")])}}, "param_groups": [{"params": [0]}]}}
    with pytest.raises(ValueError, match=r"1 tensor\(s\) .* \(optimizer_state.state.0.momentum_buffer\)"):
        read_checkpoint(save(tmp_path, nnunet, "diverged.pth"))
    assert read_checkpoint(save(tmp_path, {"w": torch.zeros(2), "steps": torch.tensor([7])}, "finite.pth"))


def test_transfer_weights_refuses_nan_weights(target, tmp_path, monkeypatch, capsys):
    """The measured case: a checkpoint with NaN weights was reported as '100% of the encoder loaded' and written."""
    from nnunet_suprem.cli import main

    source, _ = network(target, seed=1)
    weights = source.state_dict()
    weights[STEM][0] = float("nan")
    nan = save(tmp_path, weights, "nan.pth")
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(name, target["env"][name])
    out = tmp_path / "out.pth"
    assert main(["transfer-weights", str(nan), "-d", "1", "-p", "nnUNetPlans", "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{nan}: refusing to load: 1 tensor(s) hold NaN or infinite values ({STEM})" in error and "\n" not in error
    assert not out.exists()
