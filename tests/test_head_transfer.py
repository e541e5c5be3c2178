"""Class-aware head transfer: the pure functions, a deep-supervised nnU-Net U-Net, the weights file, the CLI, and
a pre-trained model against its transfer at zero fine-tuning iterations on held-out phantom cases."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import cli, run
from nnunet_suprem.orientation import ORIENTATION_KEY
from nnunet_suprem.transfer.apply import (pretrained_names, transfer_checkpoint, weights_orientation,
                                          write_nnunet_weights)
from nnunet_suprem.transfer.checkpoint import Checkpoint, read_checkpoint
from nnunet_suprem.transfer.head import (LATERAL_EXCHANGED, LATERAL_KEPT, LATERAL_NEW, HeadTransferRefused,
                                         carry_rows, lateral_rows, match_head_rows, output_rows)

SOURCE = {"background": 0, "aorta": 1, "kidney_left": 2, "kidney_right": 3, "liver": 4, "postcava": 5}
# seen classes under other names and values, a novel class, an unsided name and nnU-Net's ignore label
TARGET = {"background": 0, "inferior_vena_cava": 1, "Right Kidney": 2, "heart": 3, "liver": 4, "kidney": 5,
          "ignore": 6}
CARRIED = {0: 0, 1: 5, 2: 3, 4: 4}  # target row -> checkpoint row
RAS = {"reader": "NibabelIOWithReorient", "left_right": [2, -1], "patch_left_right": [2, -1]}
"""The orientation record of a 3D model trained on RAS arrays (patch axis 2 grows towards the patient's right)."""


def test_output_rows_leave_out_ignore_and_refuse_regions_and_gaps():
    assert output_rows(TARGET) == {"background": 0, "inferior_vena_cava": 1, "Right Kidney": 2, "heart": 3,
                                   "liver": 4, "kidney": 5}
    assert output_rows({"background": 0, "liver": [1]}) == {"background": 0, "liver": 1}
    with pytest.raises(HeadTransferRefused, match="region-based labels"):
        output_rows({"background": 0, "kidney": [1, 2], "tumor": 2})
    with pytest.raises(HeadTransferRefused, match="not 0, 1, ..., 1"):
        output_rows({"background": 0, "liver": 2})


def test_synonyms_and_other_label_values_are_matched_sides_never_cross():
    head = match_head_rows(SOURCE, TARGET)
    assert head.rows == CARRIED
    assert head.carried == {"background": "background", "inferior_vena_cava": "postcava",
                            "Right Kidney": "kidney_right", "liver": "liver"}
    assert head.new == ["heart", "kidney"]  # the unsided "kidney" is neither kidney; ignore has no row
    assert (head.source_count, head.target_count, head.complete) == (6, 6, False)

    crossed = match_head_rows({"background": 0, "kidney_left": 1, "adrenal_gland_right": 2},
                              {"background": 0, "kidney_right": 1, "left adrenal gland": 2})
    assert crossed.rows == {} and "no target class is a class of the checkpoint" in crossed.note
    assert crossed.new == ["background", "kidney_right", "left adrenal gland"]  # not even the background row
    assert match_head_rows(SOURCE, {"background": 0, "kidney (left)": 1}).rows == {0: 0, 1: 2}


def test_only_pretrained_rows_are_carried_and_ambiguous_names_refused():
    assert match_head_rows(SOURCE, TARGET, source_known={"background", "liver"}).rows == {0: 0, 4: 4}
    assert match_head_rows(SOURCE, TARGET, source_known={"liver"}).rows == {}  # the background row is new there
    with pytest.raises(HeadTransferRefused, match="target labels: 'gallbladder' and 'gall_bladder' are the same class"):
        match_head_rows({"background": 0, "gall_bladder": 1}, {"background": 0, "gallbladder": 1, "gall_bladder": 2})
    with pytest.raises(HeadTransferRefused, match="are the same class 'postcava'"):
        match_head_rows({"background": 0, "postcava": 1, "ivc": 2}, TARGET)


LPS = {"reader": "SimpleITKIO", "left_right": [2, 1], "patch_left_right": [2, 1]}
"""RAS mirrored: patch axis 2 grows towards the patient's left (LPS files read by SimpleITKIO)."""
SIDED = {"background": 0, "left kidney": 1, "liver": 2, "Right Kidney": 3, "adrenal_gland_left": 4}


def test_lateral_rows_kept_exchanged_or_new_with_the_reason():
    assert lateral_rows((2, -1), (2, -1))[0] == LATERAL_KEPT
    assert lateral_rows((None, -1), (None, 1))[0] == LATERAL_KEPT  # 2D slices cut along left-right: no direction
    assert lateral_rows((2, -1), (2, 1)) == (LATERAL_EXCHANGED, (
        "left-right points the other way in the target's patches (checkpoint: patch axis 2 grows towards the "
        "patient's right; target: patch axis 2 grows towards the patient's left)"))
    assert lateral_rows((2, -1), (1, -1)) == (LATERAL_NEW, (
        "left-right lies on another patch axis (checkpoint: patch axis 2 grows towards the patient's right; target: "
        "patch axis 1 grows towards the patient's right)"))
    assert lateral_rows((2, -1), (None, -1))[0] == LATERAL_NEW
    action, why = lateral_rows(None, (2, 1))
    assert action == LATERAL_NEW and why.startswith("the checkpoint records no left-right orientation")
    action, why = lateral_rows((2, 1), None)
    assert action == LATERAL_NEW and why.startswith("the target's preprocessed cases share no left-right orientation")


def test_left_right_rows_kept_exchanged_or_new_and_the_others_carried_as_before():
    kept = match_head_rows(SOURCE, SIDED, left_right=(LATERAL_KEPT, "alike"))
    assert kept.rows == {0: 0, 1: 2, 2: 4, 3: 3} and kept.new == ["adrenal_gland_left"]
    assert (kept.left_right, kept.left_right_note) == (
        LATERAL_KEPT, "rows kept (left kidney <- kidney_left, Right Kidney <- kidney_right): alike")
    assert match_head_rows(SOURCE, SIDED).rows == kept.rows and not match_head_rows(SOURCE, SIDED).left_right

    exchanged = match_head_rows(SOURCE, SIDED, left_right=(LATERAL_EXCHANGED, "mirrored"))
    assert exchanged.rows == {0: 0, 1: 3, 2: 4, 3: 2}  # each kidney takes the other side's row
    assert exchanged.carried == {"background": "background", "left kidney": "kidney_right", "liver": "liver",
                                 "Right Kidney": "kidney_left"}
    assert exchanged.left_right_note == ("rows exchanged (left kidney <- kidney_right, Right Kidney <- kidney_left): "
                                         "mirrored")

    new = match_head_rows(SOURCE, SIDED, left_right=(LATERAL_NEW, "unknown"))
    assert new.rows == {0: 0, 2: 4} and new.new == ["left kidney", "Right Kidney", "adrenal_gland_left"]
    assert new.left_right_note == "rows of left kidney, Right Kidney not carried (they start as new rows): unknown"

    one_side = {"background": 0, "kidney_left": 1, "liver": 2}  # the checkpoint knows the left kidney only
    exchanged = match_head_rows(one_side, SIDED, left_right=(LATERAL_EXCHANGED, "mirrored"))
    assert exchanged.carried == {"background": "background", "liver": "liver", "Right Kidney": "kidney_left"}
    assert exchanged.left_right_note == "rows exchanged (left kidney <- new, Right Kidney <- kidney_left): mirrored"
    only_sided = match_head_rows(one_side, {"background": 0, "left kidney": 1},
                                 left_right=(LATERAL_EXCHANGED, "mirrored"))
    assert only_sided.rows == {} and "once left and right are accounted for" in only_sided.note
    unsided = match_head_rows(SOURCE, {"background": 0, "liver": 1}, left_right=(LATERAL_NEW, "unknown"))
    assert unsided.rows == {0: 0, 1: 4} and unsided.left_right == unsided.left_right_note == ""


def test_carry_rows_copies_rows_and_nothing_else():
    source, target = torch.arange(12.).reshape(6, 2), -torch.ones(4, 2)
    out = carry_rows(source, target, {0: 0, 2: 5})
    assert out.tolist() == [[0, 1], [-1, -1], [10, 11], [-1, -1]] and target.eq(-1).all()
    assert carry_rows(torch.arange(6.), -torch.ones(4), {3: 1}).tolist() == [-1, -1, -1, 1]
    with pytest.raises(ValueError, match="rows of shape"):
        carry_rows(torch.zeros(6, 3), target, {0: 0})
    with pytest.raises(ValueError, match="do not fit"):
        carry_rows(source, target, {4: 0})
    # novel rows from the background row, biases lowered by log(k + 1) for k novel rows
    assert carry_rows(source, target, {0: 0, 2: 5}, background_row=0).tolist() == [[0, 1], [0, 1], [10, 11], [0, 1]]
    bias = carry_rows(torch.arange(6.), -torch.ones(4), {0: 1, 2: 5}, background_row=0)
    assert torch.allclose(bias, torch.tensor([1, 1 - math.log(3), 5, 1 - math.log(3)]))


def unet(classes: int, seed: int) -> torch.nn.Module:
    """A small deep-supervised PlainConvUNet as nnU-Net builds it (4 stages: 3 segmentation outputs)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    network = PlainConvUNet(1, 4, [4, 8, 16, 16], torch.nn.Conv3d, 3, [1, 2, 2, 2], 1, classes, 1, conv_bias=True,
                            norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                            nonlin=torch.nn.LeakyReLU, deep_supervision=True)
    network.apply(network.initialize)
    return network.eval()


def heads(network) -> list[str]:
    return [k for k in network.state_dict() if ".seg_layers." in k]


def test_every_deep_supervision_head_carries_the_known_rows_and_outputs_match_exactly():
    source, target = unet(len(SOURCE), seed=1), unet(len(TARGET) - 1, seed=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    checkpoint = Checkpoint("in-memory", source.state_dict(), "nnU-Net checkpoint", labels=SOURCE, orientation=RAS)
    state, report = transfer_checkpoint(checkpoint, target, TARGET, novel_rows="init", target_orientation=RAS)
    assert len(heads(target)) == 6 and set(report.rows_carried) == set(heads(target))  # 3 outputs x (weight, bias)
    assert all(k not in report.loaded and k not in report.skipped for k in heads(target))
    assert report.rows_carried["decoder.seg_layers.0.weight"] == "rows [0, 1, 2, 4] from checkpoint rows " \
                                                                 "[0, 5, 3, 4], rows [3, 5] new"
    assert report.carried_classes == {"background": "background", "inferior_vena_cava": "postcava",
                                      "Right Kidney": "kidney_right", "liver": "liver"}
    assert report.new_classes == ["heart", "kidney"] and not report.unused and not report.mismatched
    assert report.head == ("4 of 6 output rows carried: background, inferior_vena_cava <- postcava, "
                           "Right Kidney <- kidney_right, liver; new (from the network's initialisation): heart, "
                           "kidney")
    lines = report.lines()
    assert f"Head transfer: {report.head}" in lines and "6 with output rows carried" in lines[0]
    assert any(line.startswith("  rows        decoder.seg_layers.2.bias  (rows [0, 1, 2, 4]") for line in lines)
    for key in heads(target):  # the novel rows keep the network's own initialisation
        assert torch.equal(state[key][[3, 5]], fresh[key][[3, 5]])
    # a head with new rows is a new layer for the fine-tuning schedule, but the weights file keeps its rows
    assert not set(heads(target)) & set(pretrained_names(target, report))
    assert set(heads(target)) <= set(pretrained_names(target, report, with_carried_rows=True))

    target.load_state_dict(state)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected, got = source(x), target(x)
    assert len(got) == 3
    for e, g in zip(expected, got):  # every deep-supervision output: the carried classes' logits are unchanged, up to
        # float32 rounding (a 1x1 convolution may sum in another order for another number of output channels)
        torch.testing.assert_close(g[:, list(CARRIED)], e[:, list(CARRIED.values())], rtol=1e-6, atol=1e-6)


DEVICES = ["meta", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_a_cpu_checkpoint_transfers_onto_a_network_on_another_device(device):
    """The trainer builds its network on its device (cuda) before the weights (read to the CPU) are transferred:
    every tensor of the transferred state, carried head rows included, lies on the network's device. ``meta``
    stands in for a GPU where there is none: a loaded tensor left on the CPU shows there; the rows copied into a
    head on another device fail only on a real GPU (the ``cuda`` case)."""
    source, target = unet(len(SOURCE), seed=1), unet(len(TARGET) - 1, seed=2).to(device)
    checkpoint = Checkpoint("in-memory", source.state_dict(), "nnU-Net checkpoint", labels=SOURCE, orientation=RAS)
    state, report = transfer_checkpoint(checkpoint, target, TARGET, target_orientation=RAS)
    assert set(report.rows_carried) == set(heads(target)) and report.loaded
    assert {tensor.device.type for tensor in state.values()} == {device}
    target.load_state_dict(state)
    if device == "cuda":
        for key in heads(target):
            assert torch.equal(state[key][list(CARRIED)].cpu(), source.state_dict()[key][list(CARRIED.values())])


def test_novel_rows_from_the_background_keep_every_prediction_of_the_pretrained_model():
    source = unet(len(SOURCE), seed=1)
    with torch.no_grad():  # a confident background row, as after pre-training
        source.decoder.seg_layers[-1].bias[0] += 2
    labels = {"background": 0, "heart": 1, "aorta": 2, "left kidney": 3, "trachea": 4, "kidney_right": 5,
              "liver": 6, "inferior_vena_cava": 7}  # every class of the checkpoint, in another order, and 2 novel
    target = unet(len(labels), seed=2)
    checkpoint = Checkpoint("in-memory", source.state_dict(), "nnU-Net checkpoint", labels=SOURCE, orientation=RAS)
    state, report = transfer_checkpoint(checkpoint, target, labels, target_orientation=RAS)
    assert report.head.endswith("new (from the background row, bias - log(k+1)): heart, trachea")
    for key in heads(target):
        assert torch.equal(state[key][[1, 4]], state[key][[0, 0]] - (math.log(3) if key.endswith("bias") else 0))
    target.load_state_dict(state)
    to_source = torch.tensor([0, 0, 1, 2, 0, 3, 4, 5])  # target row -> checkpoint row (novel rows: background)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        for e, g in zip(source(x), target(x)):
            assert torch.equal(to_source[g.argmax(1)], e.argmax(1))  # the same segmentation, in other values
            assert (g[:, [1, 4]] < g[:, [0]]).all()


def test_a_head_without_bias_keeps_novel_rows_as_initialised():
    """Copies of the background row could not start below it without a bias: the novel rows keep their
    initialisation (as ``novel_rows="init"``), the seen rows are carried, and the report says why."""
    def without_bias(network):
        layers = network.decoder.seg_layers
        for i, layer in enumerate(layers):
            layers[i] = torch.nn.Conv3d(layer.in_channels, layer.out_channels, 1, bias=False)
        return network

    source, target = without_bias(unet(len(SOURCE), seed=1)), without_bias(unet(len(TARGET) - 1, seed=2))
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    checkpoint = Checkpoint("in-memory", source.state_dict(), "nnU-Net checkpoint", labels=SOURCE, orientation=RAS)
    state, report = transfer_checkpoint(checkpoint, target, TARGET, target_orientation=RAS)
    assert "new (from the network's initialisation): heart, kidney" in report.head
    assert report.head.endswith("(novel rows keep the network's initialisation: the head decoder.seg_layers.0 has "
                                "no bias to start them below the background)")
    for key in heads(target):
        assert torch.equal(state[key][[3, 5]], fresh[key][[3, 5]])
        assert torch.equal(state[key][list(CARRIED)], source.state_dict()[key][list(CARRIED.values())])


def test_a_head_whose_rows_are_all_known_is_pretrained_and_off_means_fresh():
    source, target = unet(len(SOURCE), seed=1), unet(3, seed=2)
    checkpoint = Checkpoint("in-memory", source.state_dict(), "nnU-Net checkpoint", labels=SOURCE)
    subset = {"background": 0, "liver": 1, "aorta": 2}
    state, report = transfer_checkpoint(checkpoint, target, subset)
    assert set(heads(target)) <= set(report.loaded) and not report.rows_carried and report.new_classes == []
    assert report.adapted["decoder.seg_layers.1.weight"].startswith("output rows [0, 4, 1] of the checkpoint's 6")
    assert set(heads(target)) <= set(pretrained_names(target, report))
    assert torch.equal(state["decoder.seg_layers.2.bias"], source.state_dict()["decoder.seg_layers.2.bias"][[0, 4, 1]])

    fresh = target.state_dict()
    state, report = transfer_checkpoint(checkpoint, target, subset, head_transfer=False)
    assert set(heads(target)) <= set(report.skipped) and report.head == \
        "output rows not carried (head transfer turned off); every row initialised fresh"
    assert all(torch.equal(state[k], fresh[k]) for k in heads(target)) and not report.carried_classes
    _, report = transfer_checkpoint(checkpoint, target, subset, encoder_only=True)
    assert "encoder-only transfer" in report.head and set(heads(target)) <= set(report.skipped)


def test_left_right_mirrored_exchanges_the_rows_in_every_head_once_through_a_weights_file(tmp_path):
    """The same labels as the checkpoint, but the target's patches present left-right the other way: the heads are not
    loaded whole, each kidney takes the other side's rows, in every deep-supervision head; the weights file records
    the target's orientation, so loading it into that target keeps the rows where they are."""
    source, target = unet(len(SOURCE), seed=1), unet(len(SOURCE), seed=2)
    checkpoint = Checkpoint("in-memory", source.state_dict(), "nnU-Net checkpoint", labels=SOURCE, orientation=RAS)
    state, report = transfer_checkpoint(checkpoint, target, SOURCE, target_orientation=LPS)
    assert set(heads(target)) <= set(report.loaded) and report.left_right == LATERAL_EXCHANGED
    for key in heads(target):
        assert torch.equal(state[key], source.state_dict()[key][[0, 1, 3, 2, 4, 5]])
    assert ("Left and right: rows exchanged (kidney_left <- kidney_right, kidney_right <- kidney_left): left-right "
            "points the other way in the target's patches (checkpoint: patch axis 2 grows towards the patient's right; "
            "target: patch axis 2 grows towards the patient's left)") in report.lines()
    target.load_state_dict(state)
    write_nnunet_weights(tmp_path / "w.pth", target, state, report, checkpoint, SOURCE,
                         weights_orientation(checkpoint, report, LPS))
    written = read_checkpoint(tmp_path / "w.pth")
    assert written.orientation == LPS
    again, report2 = transfer_checkpoint(written, unet(len(SOURCE), seed=3), SOURCE, target_orientation=LPS)
    assert report2.left_right == LATERAL_KEPT and all(torch.equal(again[k], state[k]) for k in heads(target))

    state, report = transfer_checkpoint(checkpoint, target, SOURCE, target_orientation=RAS)  # alike: whole heads
    assert report.head.startswith("labels identical") and report.left_right == LATERAL_KEPT
    assert all(torch.equal(state[k], source.state_dict()[k]) for k in heads(target))
    for record in (None, {**RAS, "patch_left_right": [1, -1]}):  # unknown, or left-right on another patch axis
        state, report = transfer_checkpoint(checkpoint, target, SOURCE, target_orientation=record)
        assert report.new_classes == ["kidney_left", "kidney_right"] and set(report.rows_carried) == set(heads(target))
        assert report.left_right == LATERAL_NEW and report.carried_classes == {
            n: n for n in ("background", "aorta", "liver", "postcava")}


def test_region_labels_and_unknown_labels_keep_fresh_heads_with_a_reason():
    source, target = unet(len(SOURCE), seed=1), unet(3, seed=2)
    checkpoint = Checkpoint("in-memory", source.state_dict(), "nnU-Net checkpoint", labels=SOURCE)
    _, report = transfer_checkpoint(checkpoint, target, {"background": 0, "kidney": [1, 2], "liver": 2})
    assert report.head.startswith("output rows not carried (refused: region-based labels ('kidney': [1, 2])")
    assert set(heads(target)) <= set(report.skipped)
    _, report = transfer_checkpoint(Checkpoint("x", source.state_dict(), "plain state dict"), target, SOURCE)
    assert "the checkpoint records no labels" in report.head


def test_region_labels_in_another_order_are_not_loaded_whole():
    """Region channels follow the order of ``labels``: the same BraTS regions in another key order are other heads."""
    brats = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    reordered = {"background": 0, "enhancing tumor": [3], "tumor core": [2, 3], "whole tumor": [1, 2, 3]}
    source, target = unet(len(brats), seed=1), unet(len(brats), seed=2)
    checkpoint = Checkpoint("in-memory", source.state_dict(), "nnU-Net checkpoint", labels=brats)
    _, report = transfer_checkpoint(checkpoint, target, reordered)
    assert set(heads(target)) <= set(report.skipped) and "refused: region-based labels" in report.head
    _, report = transfer_checkpoint(checkpoint, target, {k: tuple(v) if k != "background" else v
                                                         for k, v in brats.items()})  # tuples as in nnU-Net's code
    assert set(heads(target)) <= set(report.loaded)


def test_labels_from_the_model_folder_and_through_a_weights_file(tmp_path):
    source, target = unet(len(SOURCE), seed=1), unet(len(TARGET) - 1, seed=2)
    model = tmp_path / "Dataset001_X" / "Trainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps({"labels": SOURCE}))
    torch.save({"network_weights": source.state_dict(), "trainer_name": "nnUNetTrainer", ORIENTATION_KEY: RAS},
               model / "fold_0" / "checkpoint_final.pth")  # no init_args: the model folder's dataset.json tells
    checkpoint = read_checkpoint(model / "fold_0" / "checkpoint_final.pth")
    assert checkpoint.labels == SOURCE and checkpoint.extra["labels_from"] == str(model / "dataset.json")
    assert checkpoint.orientation == RAS
    state, report = transfer_checkpoint(checkpoint, target, TARGET, novel_rows="init", target_orientation=RAS)
    target.load_state_dict(state)
    write_nnunet_weights(tmp_path / "w.pth", target, state, report, checkpoint, TARGET,
                         weights_orientation(checkpoint, report, RAS))

    written = read_checkpoint(tmp_path / "w.pth")  # its own labels; only the carried classes' rows are pre-trained
    assert written.labels == TARGET and written.pretrained_rows == set(report.carried_classes)
    assert set(heads(target)) <= written.pretrained_keys and written.orientation == RAS
    again = unet(len(TARGET) - 1, seed=3)
    fresh = again.state_dict()
    state2, report2 = transfer_checkpoint(written, again, TARGET, novel_rows="init", target_orientation=RAS)
    assert report2.carried_classes == {n: n for n in report.carried_classes} and report2.new_classes == ["heart",
                                                                                                         "kidney"]
    for key in heads(again):
        assert torch.equal(state2[key][list(CARRIED)], state[key][list(CARRIED)])
        assert torch.equal(state2[key][[3, 5]], fresh[key][[3, 5]])  # the file's new rows are not taken


def test_transfer_weights_cli_reports_rows_and_no_head_transfer(planned_phantom_dataset, tmp_path):
    from nnunet_suprem.transfer.apply import build_network_from_plans

    env = planned_phantom_dataset["env"]
    preprocessed = planned_phantom_dataset["raw"].parents[1] / "nnUNet_preprocessed" / "Dataset001_SynthCT"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    labels = {"background": 0, "heart": 1, "Inferior Vena Cava": 2, "Liver": 3, "right kidney": 4}
    torch.manual_seed(1)
    source = build_network_from_plans(plans, {**dataset_json, "labels": labels}, "3d_fullres")
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps({**dataset_json, "labels": labels}))
    torch.save({"network_weights": source.state_dict(), ORIENTATION_KEY: RAS},  # pre-trained on RAS arrays as well
               model / "fold_0" / "checkpoint_final.pth")
    args = [str(model / "fold_0" / "checkpoint_final.pth"), "-d", "1", "-c", "3d_fullres"]
    result = run(cli("transfer-weights", *args, "-o", str(tmp_path / "w.pth")), env)
    assert ("Head transfer: 4 of 17 output rows carried: background, kidney_right <- right kidney, liver <- Liver, "
            "postcava <- Inferior Vena Cava; new (from the background row, bias - log(k+1)): aorta, gall_bladder, "
            "kidney_left, pancreas, spleen") in result.stdout
    assert ("Left and right: rows kept (kidney_right <- right kidney): the checkpoint's and the target's patches "
            "present left-right alike (checkpoint: patch axis 2 grows towards the patient's right; target: patch axis "
            "2 grows towards the patient's right)") in result.stdout
    assert "  rows        decoder.seg_layers.0.weight  (rows [0, 4, 5, 7] from checkpoint rows [0, 4, 3, 2]" \
        in result.stdout
    weights = torch.load(tmp_path / "w.pth", weights_only=True)
    head = "decoder.seg_layers.2.weight"  # full resolution
    assert torch.equal(weights["network_weights"][head][[0, 4, 5, 7]], source.state_dict()[head][[0, 4, 3, 2]])
    assert weights["nnunet_suprem_transfer"]["pretrained_rows"] == ["background", "kidney_right", "liver", "postcava"]
    assert weights[ORIENTATION_KEY] == RAS

    result = run(cli("transfer-weights", *args, "-o", str(tmp_path / "off.pth"), "--no-head-transfer"), env)
    assert "Head transfer: output rows not carried (head transfer turned off)" in result.stdout
    off = torch.load(tmp_path / "off.pth", weights_only=True)
    assert off["nnunet_suprem_transfer"]["pretrained_rows"] == []
    assert not any(".seg_layers." in k for k in off["nnunet_suprem_transfer"]["pretrained_keys"])


def train_briefly(network, cases, iterations: int = 100, seed: int = 0, mirror=None) -> None:
    """Adam on whole preprocessed volumes (cross-entropy + soft Dice): a pre-trained model in seconds. ``mirror``: a
    batchgeneratorsv2 mirroring transform applied to each case of a batch (e.g. SuPreMTrainer's)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network.decoder.deep_supervision = False
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), 1e-2)
    images, labels = cases
    for _ in range(iterations):
        pick = torch.randperm(len(images), generator=generator)[:2]
        batch, target = images[pick], labels[pick]
        if mirror is not None:
            mirrored = [mirror(image=image, segmentation=seg[None]) for image, seg in zip(batch, target)]
            batch = torch.stack([case["image"] for case in mirrored])
            target = torch.stack([case["segmentation"][0] for case in mirrored])
        logits = network(batch)
        probabilities = logits.softmax(1)
        onehot = torch.nn.functional.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
        overlap = (probabilities * onehot).sum((0, 2, 3, 4))
        total = probabilities.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4))
        soft_dice = ((2 * overlap + 1e-5) / (total + 1e-5))[1:].mean()
        loss = torch.nn.functional.cross_entropy(logits, target) + 1 - soft_dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()


def preprocessed_cases(folder, identifiers, strides):
    """(images [n, 1, *shape], labels [n, *shape]) of preprocessed cases, zero-padded along each axis to a multiple
    of the network's total downsampling (``strides``: the plans' per-stage strides)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    dataset = nnUNetDatasetBlosc2(str(folder), identifiers)
    loaded = [tuple(np.asarray(a) for a in dataset.load_case(i)[:2]) for i in identifiers]
    multiples = np.prod(strides, axis=0)
    shape = [-(-max(d.shape[axis + 1] for d, _ in loaded) // m) * m for axis, m in enumerate(multiples)]
    images, labels = torch.zeros(len(loaded), 1, *shape), torch.zeros(len(loaded), *shape, dtype=torch.long)
    for i, (data, seg) in enumerate(loaded):
        region = tuple(slice(0, n) for n in data.shape[1:])
        images[(i, 0, *region)] = torch.from_numpy(data[0]).float()
        labels[(i, *region)] = torch.from_numpy(np.maximum(seg[0], 0)).long()  # -1 outside the body mask
    return images, labels


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    total = prediction.sum() + reference.sum()
    return 1.0 if total == 0 else 2 * float((prediction & reference).sum()) / float(total)


def test_zero_iterations_after_transfer_predict_seen_classes_as_the_pretrained_model(planned_phantom_dataset,
                                                                                     tmp_path):
    """The issue's test: the transferred model, not fine-tuned at all, segments the classes the checkpoint knows
    (other names and label values in the target, novel classes besides) on held-out cases with Dice within 0.02 of
    the pre-trained model itself; with novel rows from the background row the segmentations are identical."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_suprem.training.case_geometry import preprocessed_orientation
    from nnunet_suprem.transfer.apply import build_network_from_plans

    raw = planned_phantom_dataset["raw"]
    preprocessed = raw.parents[1] / "nnUNet_preprocessed" / raw.name
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    phantom_json = json.loads((preprocessed / "dataset.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(8 * 2 ** i, 32) for i in range(arch["n_stages"])]  # narrow: seconds to train
    # pre-training: 7 of the phantom's classes (the others are background), in AbdomenAtlas names
    pretrained_classes = ["kidney_left", "kidney_right", "liver", "postcava", "spleen", "lung_left", "lung_right"]
    source_json = {**phantom_json, "labels": {"background": 0, **{c: i + 1 for i, c in enumerate(pretrained_classes)}}}
    to_source = torch.zeros(len(phantom_json["labels"]), dtype=torch.long)
    for name, value in source_json["labels"].items():
        to_source[phantom_json["labels"][name]] = value
    training = sorted(p.stem for p in (preprocessed / "nnUNetPlans_3d_fullres").glob("*.pkl")
                      if not p.stem.startswith("hospB"))  # hospB annotates 4 classes only
    images, labels = preprocessed_cases(preprocessed / "nnUNetPlans_3d_fullres", training, arch["strides"])
    torch.manual_seed(0)
    pretrained = build_network_from_plans(plans, source_json, "3d_fullres")
    train_briefly(pretrained, (images, to_source[labels]), iterations=60)
    model = tmp_path / "Dataset001_SynthCT" / "Pretrained__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    plans_manager = PlansManager(plans)
    orientation = preprocessed_orientation(str(preprocessed), plans_manager, plans_manager.get_configuration(
        "3d_fullres"), phantom_json["labels"], print)  # pre-training and target: the phantoms, RAS
    assert orientation == RAS
    torch.save({"network_weights": pretrained.state_dict(), "init_args": {"dataset_json": source_json},
                ORIENTATION_KEY: orientation}, model / "fold_0" / "checkpoint_final.pth")

    seen = {"liver": "Liver", "postcava": "inferior_vena_cava", "lung_left": "lung (left)",
            "kidney_left": "left kidney", "lung_right": "lung_right"}  # pre-training name -> target name
    target_json = {**phantom_json, "labels": {"background": 0, "heart": 1, "Liver": 2, "inferior_vena_cava": 3,
                                              "lung (left)": 4, "trachea": 5, "left kidney": 6, "lung_right": 7}}
    torch.manual_seed(1)
    transferred = build_network_from_plans(plans, target_json, "3d_fullres")
    state, report = transfer_checkpoint(read_checkpoint(model / "fold_0" / "checkpoint_final.pth"), transferred,
                                        target_json["labels"], target_orientation=orientation)
    transferred.load_state_dict(state)
    assert report.carried_classes == {"background": "background", **{t: s for s, t in seen.items()}}
    assert report.new_classes == ["heart", "trachea"]

    reader = plans_manager.image_reader_writer_class()
    scores, masks = {}, {}
    for arm, network, dataset_json in (("pretrained", pretrained, source_json),
                                       ("transferred", transferred, target_json)):
        network.decoder.deep_supervision = False
        predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), allow_tqdm=False)
        predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("3d_fullres"),
                                        [network.state_dict()], dataset_json, "nnUNetTrainer", None)
        for image in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
            case = image.name.removesuffix("_0000.nii.gz")
            prediction = predictor.predict_single_npy_array(*reader.read_images([str(image)]))
            reference = reader.read_seg(str(raw / "labelsTs" / f"{case}.nii.gz"))[0][0]
            for source_name, target_name in seen.items():
                mask = prediction == dataset_json["labels"][source_name if arm == "pretrained" else target_name]
                masks[arm, case, source_name] = mask
                scores.setdefault(arm, {}).setdefault(source_name, []).append(
                    dice(mask, reference == phantom_json["labels"][source_name]))
    mean = {arm: {c: float(np.mean(v)) for c, v in per_class.items()} for arm, per_class in scores.items()}
    print("held-out Dice:", mean)
    assert min(mean["pretrained"]["lung_left"], mean["pretrained"]["lung_right"]) > 0.5  # a model that segments
    for name in seen:
        assert abs(mean["transferred"][name] - mean["pretrained"][name]) <= 0.02, name
    for (arm, case, name), mask in masks.items():
        if arm == "transferred":
            assert np.array_equal(mask, masks["pretrained", case, name]), (case, name)


def test_finetune_trainer_carries_rows_trains_such_heads_as_new_layers_and_can_turn_it_off(make_trainer, tmp_path):
    from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer, SuPreMFinetuneTrainerNoHeadTransfer
    from nnunet_suprem.transfer.apply import build_network_from_plans

    trainer = make_trainer(cls=SuPreMFinetuneTrainer)
    labels = {"background": 0, "Inferior Vena Cava": 1, "liver": 2, "heart": 3}
    torch.manual_seed(7)
    source = build_network_from_plans(trainer.plans_manager.plans, {**trainer.dataset_json, "labels": labels},
                                      "3d_fullres")
    torch.save({"network_weights": source.state_dict(), "init_args": {"dataset_json": {"labels": labels}}},
               tmp_path / "checkpoint_final.pth")
    trainer.load_pretrained_weights(str(tmp_path / "checkpoint_final.pth"))
    postcava, liver = (trainer.dataset_json["labels"][c] for c in ("postcava", "liver"))
    head = "decoder.seg_layers.2.weight"
    assert torch.equal(trainer.network.state_dict()[head][[0, postcava, liver]], source.state_dict()[head][[0, 1, 2]])
    groups = {g["pretrained"]: set(g["param_names"]) for g in trainer.optimizer.param_groups}
    assert head in groups[False] and "encoder.stages.0.0.convs.0.conv.weight" in groups[True]
    log = open(trainer.log_file).read()
    assert "Head transfer: 3 of 17 output rows carried: background, liver, postcava <- Inferior Vena Cava" in log

    off = make_trainer(cls=SuPreMFinetuneTrainerNoHeadTransfer)
    off.load_pretrained_weights(str(tmp_path / "checkpoint_final.pth"))
    assert "Head transfer: output rows not carried (head transfer turned off)" in open(off.log_file).read()
    assert not torch.equal(off.network.state_dict()[head][liver], source.state_dict()[head][2])


def test_every_row_carried_means_no_head_only_epochs_and_training_steps(make_trainer, tmp_path):
    """The same labels as the checkpoint: every layer is pre-trained, so freezing them would train nothing."""
    from nnunet_suprem.training.case_geometry import preprocessed_orientation
    from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer

    trainer = make_trainer(cls=SuPreMFinetuneTrainer)
    orientation = preprocessed_orientation(trainer.preprocessed_dataset_folder_base, trainer.plans_manager,
                                           trainer.configuration_manager, trainer.dataset_json["labels"], print)
    torch.save({"network_weights": trainer.network.state_dict(), "init_args": {"dataset_json": trainer.dataset_json},
                ORIENTATION_KEY: orientation}, tmp_path / "checkpoint_final.pth")  # as SuPreMTrainer writes it
    trainer.load_pretrained_weights(str(tmp_path / "checkpoint_final.pth"))
    assert {g["pretrained"]: len(g["params"]) for g in trainer.optimizer.param_groups}[False] == 0
    assert trainer.head_epochs == 0
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    assert all(p.requires_grad for p in trainer.network.parameters())
    trainer.train_step(next(trainer.dataloader_train))  # the whole network trains from the first epoch
    trainer.on_train_end()


def test_left_right_through_the_transfer_to_lps_files_read_by_simpleitkio(anisotropic_dataset, tmp_path, monkeypatch,
                                                                          capsys):
    """The issue's configuration: a model pre-trained on RAS arrays (NibabelIOWithReorient), mirrored along left-right
    with the sides' labels swapped as SuPreMTrainer does, transferred to Dataset901, LPS files read by SimpleITKIO
    (the array index grows towards the patient's left, not the right). Its kidneys lie either side of a vertebra in a
    symmetric body, so a network tells the sides by direction only. At zero fine-tuning iterations the transferred
    model puts kidney_left on the patient's left in the target's own held-out images, through transfer-weights and
    through SuPreMFinetuneTrainer; the rows carried as they were put it on the right."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from conftest import anisotropic_case
    from nnunet_suprem.cli import main
    from nnunet_suprem.training.case_geometry import preprocessed_orientation
    from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer
    from nnunet_suprem.training.laterality import LateralMirrorTransform
    from nnunet_suprem.transfer.apply import build_network_from_plans

    raw = Path(anisotropic_dataset["nnUNet_raw"]) / "Dataset901_Aniso"
    preprocessed = tmp_path / "nnUNet_preprocessed"
    target = preprocessed / raw.name  # a copy: its plans get a narrow network, seconds to train
    shutil.copytree(Path(anisotropic_dataset["nnUNet_preprocessed"]) / raw.name, target)
    for name, value in (("nnUNet_raw", anisotropic_dataset["nnUNet_raw"]), ("nnUNet_preprocessed", str(preprocessed)),
                        ("nnUNet_results", str(tmp_path / "results"))):
        monkeypatch.setenv(name, value)
    plans = json.loads((target / "nnUNetPlans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(8 * 2 ** i, 32) for i in range(arch["n_stages"])]
    (target / "nnUNetPlans.json").write_text(json.dumps(plans))
    dataset_json = json.loads((target / "dataset.json").read_text())
    labels = dataset_json["labels"]
    assert plans["image_reader_writer"] == "SimpleITKIO"

    # pre-training on the same cases read with NibabelIOWithReorient (RAS), through nnU-Net's preprocessor
    source_plans = PlansManager({**plans, "dataset_name": "Dataset902_AnisoRAS",
                                 "image_reader_writer": "NibabelIOWithReorient"})
    configuration = source_plans.get_configuration("3d_fullres")
    source = preprocessed / "Dataset902_AnisoRAS"
    (source / configuration.data_identifier).mkdir(parents=True)
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTr").glob("*.nii.gz"))
    for case in cases:
        DefaultPreprocessor(verbose=False).run_case_save(
            str(source / configuration.data_identifier / case), [str(raw / "imagesTr" / f"{case}_0000.nii.gz")],
            str(raw / "labelsTr" / f"{case}.nii.gz"), source_plans, configuration, dataset_json)
    record = preprocessed_orientation(str(source), source_plans, configuration, labels, print)
    assert record == {"reader": "NibabelIOWithReorient", "left_right": [2, -1], "patch_left_right": [2, -1]}
    images, segmentations = preprocessed_cases(source / configuration.data_identifier, cases, arch["strides"])
    torch.manual_seed(0)
    pretrained = build_network_from_plans(plans, dataset_json, "3d_fullres")
    mirror = LateralMirrorTransform((0, 1, 2), 2, [(labels["kidney_left"], labels["kidney_right"])])
    train_briefly(pretrained, (images, segmentations), iterations=30, mirror=mirror)
    checkpoint = tmp_path / "pretrained" / "checkpoint_final.pth"
    checkpoint.parent.mkdir()
    torch.save({"network_weights": pretrained.state_dict(), "init_args": {"dataset_json": dataset_json},
                ORIENTATION_KEY: record}, checkpoint)

    capsys.readouterr()
    assert main(["transfer-weights", str(checkpoint), "-d", "901", "-o", str(tmp_path / "weights.pth")]) == 0
    assert ("Left and right: rows exchanged (kidney_left <- kidney_right, kidney_right <- kidney_left): left-right "
            "points the other way in the target's patches (checkpoint: patch axis 2 grows towards the patient's right; "
            "target: patch axis 2 grows towards the patient's left)") in capsys.readouterr().out
    weights = read_checkpoint(tmp_path / "weights.pth")
    assert weights.orientation == {"reader": "SimpleITKIO", "left_right": [2, 1], "patch_left_right": [2, 1]}
    transferred = build_network_from_plans(plans, dataset_json, "3d_fullres")
    transferred.load_state_dict(weights.state_dict)
    trainer = SuPreMFinetuneTrainer({**plans, "continue_training": False}, "3d_fullres", 0, dataset_json,
                                    device=torch.device("cpu"))
    trainer.initialize()
    trainer.load_pretrained_weights(str(checkpoint))
    assert all(torch.equal(trainer.network.state_dict()[key], weights.state_dict[key]) for key in heads(transferred))
    assert "Left and right: rows exchanged (kidney_left <- kidney_right" in open(trainer.log_file).read()

    held_out = tmp_path / "imagesTs"
    held_out.mkdir()
    rng = np.random.default_rng(1)  # new cases, stored as the target's: LPS
    references = {}
    for case in ("lps_000", "lps_001"):
        ct, reference = anisotropic_case(rng)
        sitk.WriteImage(ct, str(held_out / f"{case}_0000.nii.gz"))
        references[case] = sitk.GetArrayFromImage(reference)
    plans_manager = PlansManager(plans)
    reader = plans_manager.image_reader_writer_class()
    left = {}
    for arm, network in (("transferred", transferred), ("carried as they were", pretrained)):
        network.decoder.deep_supervision = False
        predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), allow_tqdm=False)
        predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("3d_fullres"),
                                        [network.state_dict()], dataset_json, "nnUNetTrainer", None)
        for case, reference in references.items():
            image = reader.read_images([str(held_out / f"{case}_0000.nii.gz")])
            prediction = predictor.predict_single_npy_array(*image)
            kidney_left = prediction == labels["kidney_left"]
            left.setdefault(arm, []).append({side: dice(kidney_left, reference == labels[f"kidney_{side}"])
                                             for side in ("left", "right")})
    print("Dice of the predicted kidney_left with each kidney:", left)
    for case in left["transferred"]:
        assert case["left"] > 0.5 > case["right"]
    for case in left["carried as they were"]:
        assert case["right"] > 0.5 > case["left"]
