"""SuPreMFinetuneTrainer: loading through the transfer library, the two-phase schedule, exact resume, the CLI."""
import json

import pytest
import torch

from conftest import command, run
from nnunet_suprem.nnunet_env import trainers_dir
from nnunet_suprem.training.finetune_trainer import SuPreMFinetuneTrainer
from nnunet_suprem.training.variants import SuPreMFinetuneTrainer_smoke
from nnunet_suprem.training.schedules import finetune_lr_factors
from nnunet_suprem.transfer.apply import build_network_from_plans


def suprem_style_checkpoint(trainer, path, labels=("liver", "spleen")):
    """A checkpoint in the SuPreM/MONAI layout ({"net": ...}, DDP prefixes) for other classes than the target's."""
    dataset_json = {**trainer.dataset_json, "labels": {"background": 0, **{c: i + 1 for i, c in enumerate(labels)}}}
    torch.manual_seed(123)
    source = build_network_from_plans(trainer.plans_manager.plans, dataset_json, "3d_fullres")
    torch.save({"net": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 10}, path)
    return source


def lrs(trainer) -> dict[bool, float]:
    return {g["pretrained"]: g["lr"] for g in trainer.optimizer.param_groups}


def test_finetune_lr_factors():
    assert finetune_lr_factors(0, 100, 2, 5, 0.1) == (1.0, 0.0)
    assert finetune_lr_factors(1, 100, 2, 5, 0.1)[1] == 0.0
    new, pretrained = finetune_lr_factors(2, 100, 2, 5, 0.1)
    assert pretrained == pytest.approx(new * 0.1 / 6)
    new, pretrained = finetune_lr_factors(7, 100, 2, 5, 0.1)
    assert pretrained == pytest.approx(new * 0.1) and new == pytest.approx((1 - 7 / 100) ** 0.9)


def test_loads_through_the_library_and_splits_the_optimiser(make_trainer, tmp_path):
    trainer = make_trainer(cls=SuPreMFinetuneTrainer)
    source = suprem_style_checkpoint(trainer, tmp_path / "suprem.pth")
    trainer.load_pretrained_weights(str(tmp_path / "suprem.pth"))
    stem = "encoder.stages.0.0.convs.0.conv.weight"
    assert torch.equal(trainer.network.state_dict()[stem], source.state_dict()[stem])
    groups = {g["pretrained"]: set(g["param_names"]) for g in trainer.optimizer.param_groups}
    assert stem in groups[True] and all(".seg_layers." in n for n in groups[False])
    log = open(trainer.log_file).read()
    assert "training checkpoint with weights under 'net'" in log
    assert f"  loaded      {stem}" in log and "segmentation head: re-initialised" in log

    trainer.lr_scheduler.step(0)
    assert lrs(trainer) == {False: trainer.initial_lr, True: 0.0}  # heads only
    trainer.lr_scheduler.step(trainer.head_epochs + trainer.warmup_epochs)
    new, pretrained = lrs(trainer)[False], lrs(trainer)[True]
    assert pretrained == pytest.approx(new * trainer.pretrained_lr_scale)


def test_resume_restores_groups_state_and_schedule(make_trainer, tmp_path):
    first = make_trainer(cls=SuPreMFinetuneTrainer)
    suprem_style_checkpoint(first, tmp_path / "suprem.pth")
    first.load_pretrained_weights(str(tmp_path / "suprem.pth"))
    epoch = first.head_epochs + 1
    first.lr_scheduler.step(epoch)
    for parameter in first.network.parameters():  # one optimiser step so that momentum buffers exist
        parameter.grad = torch.ones_like(parameter)
    first.optimizer.step()
    first.current_epoch = epoch
    first.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))

    resumed = make_trainer(cls=SuPreMFinetuneTrainer, initialize=False)
    resumed.load_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    assert resumed.pretrained_keys and resumed.current_epoch == epoch + 1
    assert [g["param_names"] for g in resumed.optimizer.param_groups] == \
           [g["param_names"] for g in first.optimizer.param_groups]
    for later in (epoch + 1, epoch + 5):
        first.lr_scheduler.step(later)
        resumed.lr_scheduler.step(later)
        assert lrs(resumed) == lrs(first)
    buffers = [resumed.optimizer.state[p]["momentum_buffer"] for p in resumed.network.parameters()]
    assert all(torch.equal(b, first.optimizer.state[p]["momentum_buffer"])
               for b, p in zip(buffers, first.network.parameters()))


def test_unfreezing_clears_momentum_gathered_while_frozen(make_trainer, tmp_path):
    trainer = make_trainer(cls=SuPreMFinetuneTrainer)
    suprem_style_checkpoint(trainer, tmp_path / "suprem.pth")
    trainer.load_pretrained_weights(str(tmp_path / "suprem.pth"))
    trainer.lr_scheduler.step(0)
    before = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
    for parameter in trainer.network.parameters():
        parameter.grad = torch.ones_like(parameter)
    trainer.optimizer.step()
    frozen = [n for n in before if n in trainer.pretrained_keys]
    assert all(torch.equal(before[n], dict(trainer.network.named_parameters())[n]) for n in frozen)
    pretrained_group = next(g for g in trainer.optimizer.param_groups if g["pretrained"])
    assert all(p in trainer.optimizer.state for p in pretrained_group["params"])
    trainer.lr_scheduler.step(trainer.head_epochs)
    assert not any(p in trainer.optimizer.state for p in pretrained_group["params"])


def small_batch(trainer, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 1, size, size, size), generator=g).float()
    return {"data": torch.randn((2, 1, size, size, size), generator=g), "keys": ["hospA_0000", "hospA_0001"],
            "target": [torch.nn.functional.interpolate(target, scale_factor=s, mode="nearest")
                       for s in trainer._get_deep_supervision_scales()]}


def test_frozen_layers_stay_out_of_gradient_clipping(make_trainer, tmp_path):
    """While frozen, the heads take the step of a network whose pre-trained layers do not require gradients."""
    steps = {}
    for run_as in ("trainer", "reference", "lr 0 only"):
        torch.manual_seed(0)  # the same fresh heads in every run
        trainer = make_trainer(cls=SuPreMFinetuneTrainer)
        if run_as == "trainer":
            suprem_style_checkpoint(trainer, tmp_path / "suprem.pth")
        trainer.load_pretrained_weights(str(tmp_path / "suprem.pth"))
        marginal = trainer.loss.loss.loss
        marginal.weight_ce = marginal.weight_dice = 100  # a gradient norm above nnU-Net's clipping norm (12)
        pretrained = {n: p for n, p in trainer.network.named_parameters() if n in trainer.pretrained_keys}
        if run_as == "trainer":
            trainer.on_train_epoch_start()  # epoch 0: frozen
        else:
            trainer.lr_scheduler.step(0)
            for p in pretrained.values():
                p.requires_grad_(run_as == "lr 0 only")
        before = {n: p.detach().clone() for n, p in pretrained.items()}
        trainer.train_step(small_batch(trainer))
        steps[run_as] = {n: p.detach().clone() for n, p in trainer.network.named_parameters() if n not in pretrained}
        assert all(torch.equal(p, before[n]) for n, p in pretrained.items())
        if run_as == "trainer":
            assert all(p.grad is None for p in pretrained.values())
            trainer.current_epoch = trainer.head_epochs  # unfrozen: every layer requires gradients again
            trainer.on_train_epoch_start()
            assert all(p.requires_grad for p in trainer.network.parameters())
    assert steps["trainer"].keys() == steps["reference"].keys()
    for name, value in steps["reference"].items():
        assert torch.equal(steps["trainer"][name], value), name
    # had the frozen layers' gradients entered the clipping norm, the heads' step would have been shorter
    assert not all(torch.equal(steps["lr 0 only"][n], v) for n, v in steps["reference"].items())


def test_stock_cli_finetunes_from_a_foreign_checkpoint_and_resumes(planned_phantom_dataset, make_trainer, tmp_path):
    env = {**planned_phantom_dataset["env"], "nnUNet_extTrainer": str(trainers_dir()), "nnUNet_n_proc_DA": "0",
           "nnUNet_results": str(tmp_path / "results")}
    suprem_style_checkpoint(make_trainer(initialize=False), tmp_path / "suprem.pth")
    trainer = SuPreMFinetuneTrainer_smoke.__name__
    train = command("nnUNetv2_train", "1", "3d_fullres", "0", "-tr", trainer, "-device", "cpu")
    result = run([*train, "-pretrained_weights", str(tmp_path / "suprem.pth")], env)
    assert "Weight transfer:" in result.stdout and "100.0% of the encoder loaded" in result.stdout
    assert "segmentation head: re-initialised" in result.stdout
    output = tmp_path / "results" / "Dataset001_SynthCT" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    log = next(output.glob("training_log_*.txt")).read_text()
    assert "  loaded      encoder.stages.0.0.convs.0.conv.weight" in log
    assert "Learning rate of pre-trained layers: 0 (frozen" in log
    assert (output / "checkpoint_final.pth").is_file()
    assert json.loads((output / "validation" / "summary.json").read_text())["foreground_mean"]

    resumed = run([*train, "--c"], env)  # restores the optimiser groups from the checkpoint, then validates
    assert "Weight transfer:" not in resumed.stdout
