"""SuPreMTrainer built in-process on a planned phantom dataset: manifest -> loss, laterality -> mirroring."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import WORKERS, cli, command, run, subprocess_env

from nnunet_suprem.nnunet_env import trainers_dir
from nnunet_suprem.manifest import foreground_labels
from nnunet_suprem.training.laterality import LateralMirrorTransform, lateral_label_pairs
from nnunet_suprem.training.partial_label_loss import MarginalDCandCELoss
from nnunet_suprem.training.suprem_trainer import BatchAnnotatedLoss
from nnunet_suprem.training.variants import SuPreMTrainer_smoke


def test_manifest_selects_the_marginal_loss_and_masks(make_trainer):
    trainer = make_trainer()
    assert isinstance(trainer.loss, BatchAnnotatedLoss)
    assert isinstance(trainer.loss.loss.loss, MarginalDCandCELoss)  # inside nnU-Net's DeepSupervisionWrapper
    labels = trainer.dataset_json["labels"]
    mask = trainer.annotated_mask(["hospB_0000", "hospA_0000"])
    assert mask.shape == (2, len(labels)) and mask[1].all()
    assert {name for name, v in labels.items() if mask[0, v]} == {"background", "liver", "spleen", "kidney_left",
                                                                  "kidney_right"}
    log = open(trainer.log_file).read()
    assert "partial-label manifest found, 3 case(s)" in log


@pytest.mark.parametrize("nnunet_compiles", [True, False])
def test_marginal_loss_is_compiled_when_nnunet_compiles(make_trainer, monkeypatch, nnunet_compiles):
    """nnU-Net compiles its network and Dice loss when ``_do_i_compile()`` says so (CUDA, nnUNet_compile not off)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, *args, **kwargs: compiled.append(module) or module)
    monkeypatch.setattr(SuPreMTrainer_smoke, "_do_i_compile", lambda self: nnunet_compiles)
    trainer = make_trainer()
    assert any(m is trainer.network for m in compiled) == nnunet_compiles
    assert any(m is trainer.loss.loss.loss for m in compiled) == nnunet_compiles


def test_without_manifest_it_is_nnunet(make_trainer):
    trainer = make_trainer(lambda d: d.pop("partial_labels"))
    assert not isinstance(trainer.loss, BatchAnnotatedLoss)
    assert "no 'partial_labels' manifest" in open(trainer.log_file).read()


def test_a_short_variant_saves_checkpoint_latest_as_often_as_nnunet_relative_to_its_length(make_trainer):
    """nnU-Net writes checkpoint_latest.pth every 50 of its 1000 epochs; a 40-epoch variant every 2, so that an
    interrupted demo training continues with --c instead of starting again."""
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer
    from nnunet_suprem.training.variants import (SuPreMFinetuneTrainer_40epochs_25iterations,
                                                 SuPreMTrainer_100epochs_25iterations)

    for cls, epochs, save_every in ((SuPreMTrainer, 1000, 50), (SuPreMTrainer_100epochs_25iterations, 100, 5),
                                    (SuPreMFinetuneTrainer_40epochs_25iterations, 40, 2), (SuPreMTrainer_smoke, 2, 1)):
        trainer = make_trainer(cls=cls, initialize=False)
        assert (trainer.num_epochs, trainer.save_every) == (epochs, save_every), cls.__name__


def test_laterality_configures_mirroring(make_trainer):
    trainer = make_trainer()
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == (0, 1, 2)
    assert trainer.left_right_axes == (2,)  # every phantom hospital is axial: x is left-right
    assert trainer.inference_allowed_mirroring_axes == (0, 1)
    axis, pairs = trainer.lateral_swap
    labels = trainer.dataset_json["labels"]
    assert axis == 2 and (labels["kidney_left"], labels["kidney_right"]) in pairs
    transforms = trainer.get_training_transforms(trainer.configuration_manager.patch_size, (0, 0), None, mirror_axes,
                                                 False)
    lateral = [t for t in transforms.transforms if isinstance(t, LateralMirrorTransform)]
    assert len(lateral) == 1 and lateral[0].allowed_axes == (0, 1, 2)


def test_one_sided_annotation_disables_left_right_mirroring(make_trainer):
    def only_left_kidney(d):
        d["partial_labels"]["groups"]["hospB"]["annotated"] = ["liver", "kidney_left"]

    trainer = make_trainer(only_left_kidney)
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert trainer.lateral_swap is None and trainer.inference_allowed_mirroring_axes == (0, 1)
    transforms = trainer.get_training_transforms(trainer.configuration_manager.patch_size, (0, 0), None, mirror_axes,
                                                 False)
    mirrors = [t for t in transforms.transforms if hasattr(t, "allowed_axes")]
    assert [m.allowed_axes for m in mirrors] == [(0, 1)]
    assert "only one side of a left/right pair" in open(trainer.log_file).read()


def test_train_step_uses_the_batch_annotation(make_trainer):
    trainer = make_trainer()
    patch = trainer.configuration_manager.patch_size
    labels = trainer.dataset_json["labels"]
    target = torch.zeros((2, 1, *patch))
    target[:, :, 4:12, 4:12, 4:12] = labels["kidney_left"]
    scales = trainer._get_deep_supervision_scales()
    targets = [torch.nn.functional.interpolate(target, scale_factor=s, mode="nearest") for s in scales]
    batch = {"data": torch.randn((2, 1, *patch)), "target": targets, "keys": ["hospB_0000", "hospA_0001"]}
    out = trainer.train_step(batch)
    assert out["loss"].shape == () and torch.isfinite(torch.as_tensor(out["loss"]))
    assert trainer.loss.annotated.tolist() == trainer.annotated_mask(batch["keys"]).tolist()


def test_validation_step_equals_nnunet_on_fully_annotated_batches(make_trainer):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = make_trainer()
    trainer.network.eval()
    patch = trainer.configuration_manager.patch_size
    torch.manual_seed(0)
    target = torch.randint(0, len(trainer.dataset_json["labels"]), (2, 1, *patch)).float()
    scales = trainer._get_deep_supervision_scales()
    batch = {"data": torch.randn((2, 1, *patch)), "keys": ["hospA_0000", "hospC_0001"],
             "target": [torch.nn.functional.interpolate(target, scale_factor=s, mode="nearest") for s in scales]}
    ours = trainer.validation_step(batch)
    with torch.no_grad():
        theirs = nnUNetTrainer.validation_step(trainer, batch)
    for key in ("tp_hard", "fp_hard", "fn_hard"):
        assert (ours[key] == theirs[key]).all(), key
    assert abs(float(ours["loss"]) - float(theirs["loss"])) < 1e-5

    batch["keys"] = ["hospB_0000", "hospC_0001"]  # hospB annotates 4 classes: the others count only from hospC
    partial = trainer.validation_step(batch)
    labels = trainer.dataset_json["labels"]
    spleen, aorta = labels["spleen"] - 1, labels["aorta"] - 1
    assert partial["fp_hard"][spleen] == ours["fp_hard"][spleen]
    assert partial["fp_hard"][aorta] < ours["fp_hard"][aorta]


def test_source_balanced_sampling_repeats_small_sources(make_trainer):
    trainer = make_trainer()
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    tr_keys, _ = trainer.do_split()
    counts = {k: dataset_tr.identifiers.count(k) for k in tr_keys}
    hospb = [k for k in tr_keys if k.startswith("hospB")]
    others = [k for k in tr_keys if not k.startswith("hospB")]
    # alpha 0.5: hospB (its own group, smaller) is drawn more often per case than the larger unlisted group
    assert min(counts[k] for k in hospb) >= max(counts[k] for k in others) >= 1
    assert "Source-balanced sampling" in open(trainer.log_file).read()


def test_recipe_trainer_uses_adamw_warmup_cosine(planned_phantom_dataset, monkeypatch, tmp_path):
    from nnunet_suprem.training.schedules import WarmupCosineLRScheduler
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainerRecipe

    env = planned_phantom_dataset["env"]
    monkeypatch.setenv("nnUNet_preprocessed", env["nnUNet_preprocessed"])
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    preprocessed = planned_phantom_dataset["raw"].parents[1] / "nnUNet_preprocessed" / "Dataset001_SynthCT"
    plans = {**json.loads((preprocessed / "nnUNetPlans.json").read_text()), "continue_training": False}
    trainer = SuPreMTrainerRecipe(plans, "3d_fullres", 0, json.loads((preprocessed / "dataset.json").read_text()),
                                  device=torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert isinstance(trainer.lr_scheduler, WarmupCosineLRScheduler) and trainer.lr_scheduler.warmup_steps == 20
    trainer.lr_scheduler.step(20)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def _kidney_order_signs(trainer, axis: int, batches: int) -> list[int]:
    """For each training sample with both kidneys: the sign of (left - right) kidney centroid along ``axis``."""
    labels = trainer.dataset_json["labels"]
    loader, _ = trainer.get_dataloaders()
    signs = []
    for _ in range(batches):
        target = next(loader)["target"][0]
        for sample in target[:, 0]:
            left, right = (torch.nonzero(sample == labels[k]).float() for k in ("kidney_left", "kidney_right"))
            if len(left) and len(right):
                signs.append(int(torch.sign(left[:, axis].mean() - right[:, axis].mean())))
    return signs


def test_training_batches_keep_left_and_right_apart(make_trainer, monkeypatch):
    """Through nnU-Net's real data loader: our mirroring never puts kidney_left on the right; nnU-Net's does."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    torch.manual_seed(0)
    np.random.seed(0)
    ours = make_trainer()
    ours.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    axis = ours.left_right_axes[0]
    ours_signs = _kidney_order_signs(ours, axis, batches=8)
    assert len(ours_signs) >= 8 and len(set(ours_signs)) == 1  # every case is RAS: one consistent side

    stock = make_trainer(cls=nnUNetTrainer)  # same dataset, nnU-Net's own augmentation
    stock_signs = _kidney_order_signs(stock, axis, batches=8)
    assert set(stock_signs) == {-1, 1}  # nnU-Net mirrors kidney_left onto the right side


@pytest.mark.parametrize("cls", ["SuPreMTrainer", "SuPreMFinetuneTrainer"])
def test_a_non_finite_train_loss_stops_the_training(make_trainer, cls):
    """nnU-Net logs 'train_loss nan' and trains on to exit code 0; our trainers stop at the end of that epoch."""
    from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer
    from test_finetune_trainer import small_batch

    trainer = make_trainer(cls=SuPreMFinetuneTrainer if cls == "SuPreMFinetuneTrainer" else None)
    trainer.on_train_epoch_end([trainer.train_step(small_batch(trainer))])  # a finite epoch 0 goes on
    trainer.current_epoch = 1
    batch = small_batch(trainer)
    batch["data"][0, 0, 0, 0, 0] = float("nan")
    outputs = [trainer.train_step(small_batch(trainer)), trainer.train_step(batch)]
    with pytest.raises(RuntimeError, match=r"the mean train loss of epoch 1 is nan: the training diverged or its "
                                           r"data hold NaN or infinite values"):
        trainer.on_train_epoch_end(outputs)
    assert "the mean train loss of epoch 1 is nan" in open(trainer.log_file).read()


def test_a_step_skipped_by_amp_does_not_stop_the_training(make_trainer):
    """Under AMP (CUDA) a NaN or infinite loss now and then is normal: the gradient scaler skips that step."""
    from test_finetune_trainer import small_batch

    trainer = make_trainer()
    trainer.grad_scaler = torch.amp.GradScaler("cpu")  # nnU-Net's train_step takes its AMP path with a scaler
    batch = small_batch(trainer)
    batch["data"][0, 0, 0, 0, 0] = float("nan")
    outputs = [trainer.train_step(small_batch(trainer)), trainer.train_step(batch), trainer.train_step(small_batch(trainer))]
    assert [bool(np.isfinite(output["loss"])) for output in outputs] == [True, False, True]
    trainer.on_train_epoch_end(outputs)  # goes on
    assert np.isnan(trainer.logger.get_value("train_losses", step=0))
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    assert "1 of the 3 iterations of epoch 0 in this process had a non-finite loss" in open(trainer.log_file).read()


def _with_kidney_set(d: dict, classes=("kidney_left", "kidney_right")) -> int:
    """Add the label set "kidney" (format 2) to a dataset.json; returns its value."""
    value = max(d["labels"].values()) + 1
    d["partial_labels"]["format"] = "nnunet-suprem/2"
    d["partial_labels"]["sets"] = {"kidney": {"value": value, "classes": list(classes)}}
    return value


def test_label_sets_reach_the_loss_the_sampling_and_the_left_right_swap(make_trainer):
    trainer = make_trainer(_with_kidney_set)
    labels = trainer.dataset_json["labels"]
    value = max(labels.values()) + 1
    marginal = trainer.loss.loss.loss
    assert marginal.set_values == [value] and marginal.set_classes == [[labels["kidney_left"], labels["kidney_right"]]]
    assert "label sets (one of their classes): kidney" in open(trainer.log_file).read()
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    axis, pairs = trainer.lateral_swap
    assert pairs == lateral_label_pairs(foreground_labels(trainer.dataset_json))[0]  # the set is kept as it is
    dataset_tr, dataset_val = trainer.get_tr_and_val_datasets()
    assert dataset_tr.set_values == dataset_val.set_values == [value]
    assert dataset_tr.load_case(dataset_tr.identifiers[0])[3]["class_locations"].keys() >= {labels["liver"]}

    one_sided = make_trainer(lambda d: _with_kidney_set(d, ("kidney_left", "liver")))
    one_sided.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert one_sided.lateral_swap is None  # its mirror image is no set: no left-right mirroring
    assert "['set kidney'] cannot be swapped by value" in open(one_sided.log_file).read()


@pytest.mark.e2e
def test_stock_commands_train_and_predict_with_a_coarse_kidney(nnunet_env, tmp_path):
    """hospB labels its kidneys without side (the set "kidney"): nnU-Net plans and preprocesses it, nnUNetv2_train
    trains SuPreMTrainer on it, validation scores the set, and nnUNetv2_predict never writes the set's value."""
    env = subprocess_env(nnunet_env)
    run(cli("synth", "-d", "29", "--cases", "3", "--test-cases", "1", "-np", WORKERS,
            "--annotate", "hospB=liver,spleen,kidney_left,kidney_right"), env)
    raw = next(Path(nnunet_env["nnUNet_raw"]).glob("Dataset029_*"))
    dataset = json.loads((raw / "dataset.json").read_text())
    labels, value = dataset["labels"], _with_kidney_set(dataset)
    (raw / "dataset.json").write_text(json.dumps(dataset))
    for case in dataset["partial_labels"]["groups"]["hospB"]["cases"]:
        path = str(raw / "labelsTr" / f"{case}.nii.gz")
        image = sitk.ReadImage(path)
        seg = sitk.GetArrayFromImage(image)
        seg[np.isin(seg, [labels["kidney_left"], labels["kidney_right"]])] = value
        coarse = sitk.GetImageFromArray(seg)
        coarse.CopyInformation(image)
        sitk.WriteImage(coarse, path)
    run(command("nnUNetv2_plan_and_preprocess", "-d", "29", "-c", "3d_fullres", "-np", WORKERS), env)
    trainer = "SuPreMTrainer_smoke"
    plugin_env = {**env, "nnUNet_extTrainer": str(trainers_dir()), "nnUNet_n_proc_DA": "0"}
    result = run(command("nnUNetv2_train", "29", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"), plugin_env)
    assert f"label sets (one of their classes): kidney ({value}: kidney_left + kidney_right)" in result.stdout
    model = Path(nnunet_env["nnUNet_results"]) / raw.name / f"{trainer}__nnUNetPlans__3d_fullres"
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    assert str(value) in summary["mean"]  # the set's row, scored on the validation cases that hold it

    out = tmp_path / "predicted"
    run(command("nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "29", "-c", "3d_fullres",
                "-tr", trainer, "-f", "0", "-device", "cpu", "--disable_progress_bar", "-npp", "1", "-nps", "1"),
        plugin_env)
    predictions = sorted(out.glob("*.nii.gz"))
    assert predictions and all(sitk.GetArrayFromImage(sitk.ReadImage(str(p))).max() < value for p in predictions)
