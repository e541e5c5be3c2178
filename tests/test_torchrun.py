"""``torchrun -m nnunet_suprem.train``: the launch's errors, two torchrun "nodes" of one CPU process each training our
trainers with gloo, and two DDP ranks computing what one process computes on the same global batch."""
import contextlib
import copy
import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import command
from test_ddp import spawn
from nnunet_suprem.nnunet_env import trainers_dir
from nnunet_suprem.train import TORCHRUN_VARIABLES, main
from nnunet_suprem.training.finetune_trainer import unwrap
from nnunet_suprem.transfer.checkpoint import load_weights_only
from nnunet_suprem.training.variants import SuPreMFinetuneTrainer_smoke, SuPreMTrainer_smoke

TORCHRUN_ENV = {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


# ---------------------------------------------------------------- the launch's one-line errors
def _launch_error(monkeypatch, capsys, argv: list[str], environment: dict[str, str]) -> str:
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert not dist.is_initialized()  # stopped before joining a process group
    message = str(raised.value.code)
    assert message.startswith("nnunet_suprem.train: error: ") and "\n" not in message
    return message


def test_without_torchrun_it_says_how_to_launch(monkeypatch, capsys):
    message = _launch_error(monkeypatch, capsys, ["1", "3d_fullres", "0", "-device", "cpu"], {})
    assert "no rendezvous" in message and "torchrun" in message and "-m nnunet_suprem.train" in message


def test_num_gpus_under_torchrun_is_an_error(monkeypatch, capsys):
    message = _launch_error(monkeypatch, capsys, ["1", "3d_fullres", "0", "-num_gpus", "2"], TORCHRUN_ENV)
    assert "-num_gpus" in message and "--nproc-per-node" in message


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_stock_trainer_across_nodes_or_on_cpu_is_an_error(monkeypatch, capsys, device):
    message = _launch_error(monkeypatch, capsys, ["1", "3d_fullres", "0", "-device", device], TORCHRUN_ENV)
    assert "nnUNetTrainer is nnU-Net's" in message and "cuda:r" in message


# ---------------------------------------------------------------- two torchrun nodes on 127.0.0.1
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_nodes(args: list[str], env: dict[str, str], timeout: float = 900) -> str:
    """Launch ``torchrun ... -m nnunet_suprem.train ARGS`` twice, as node 0 and node 1 of one c10d rendezvous of one
    process each; fail with their output unless both succeed. Returns node 0's output."""
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-id", "test",
                  "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
    launches = [subprocess.Popen(command("torchrun", *rendezvous, "--node-rank", str(node), "-m",
                                         "nnunet_suprem.train", *args),
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for node in (0, 1)]
    outputs = [launch.communicate(timeout=timeout)[0] for launch in launches]
    if any(launch.returncode for launch in launches):
        pytest.fail("\n".join(f"--- node {n} exited {launch.returncode}\n{output[-4000:]}"
                              for n, (launch, output) in enumerate(zip(launches, outputs))))
    return outputs[0]


@pytest.mark.e2e
def test_two_torchrun_nodes_pretrain_and_finetune(planned_phantom_dataset, tmp_path):
    env = {**planned_phantom_dataset["env"], "nnUNet_extTrainer": str(trainers_dir()), "nnUNet_n_proc_DA": "0",
           "OMP_NUM_THREADS": "1", "nnUNet_results": str(tmp_path / "results")}
    results = tmp_path / "results" / "Dataset001_SynthCT"
    pretrained = results / f"{SuPreMTrainer_smoke.__name__}__nnUNetPlans__3d_fullres" / "fold_0"
    output = torchrun_two_nodes(["1", "3d_fullres", "0", "-tr", SuPreMTrainer_smoke.__name__, "-device", "cpu"], env)
    assert "The world size is 2" in output
    finetuned = results / f"{SuPreMFinetuneTrainer_smoke.__name__}__nnUNetPlans__3d_fullres" / "fold_0"
    torchrun_two_nodes(["1", "3d_fullres", "0", "-tr", SuPreMFinetuneTrainer_smoke.__name__, "-device", "cpu",
                        "-pretrained_weights", str(pretrained / "checkpoint_final.pth")], env)
    for folder in (pretrained, finetuned):
        assert (folder / "checkpoint_final.pth").is_file() and not (folder / "checkpoint_latest.pth").exists()
        assert json.loads((folder / "validation" / "summary.json").read_text())["foreground_mean"]
        log, = folder.glob("training_log_*.txt")  # rank 0 alone writes the log
        assert "partial-label manifest found" in log.read_text()
    assert "100.0% of the encoder loaded" in log.read_text()  # -pretrained_weights reached our loader on rank 0
    checkpoint = load_weights_only(str(finetuned / "checkpoint_final.pth"))
    assert checkpoint["trainer_name"] == SuPreMFinetuneTrainer_smoke.__name__ and checkpoint["current_epoch"] == 2


# ---------------------------------------------------------------- 2 ranks compute what 1 process computes
STEPS = 3


@contextlib.contextmanager
def float64_default():
    """Networks and losses built in float64. In float32 the roundoff of a 2-way all-reduce, grown over momentum
    steps, reached 3.5e-6 on the first convolution's weights (the tolerance's order) depending on the drawn batches;
    in float64 every tensor agrees to 4e-8 except the lowest-resolution head (see the test)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _trainer(preprocessed: Path, batch_size: int = 2) -> SuPreMTrainer_smoke:
    """SuPreMTrainer_smoke on the CPU with the batch Dice on (nnU-Net reduces it over every rank under DDP), at a
    quarter of the planned width (float64 convolutions are slow on CPUs)."""
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    configuration.update(batch_dice=True, batch_size=batch_size)
    architecture = configuration["architecture"]["arch_kwargs"]
    architecture["features_per_stage"] = [width // 4 for width in architecture["features_per_stage"]]
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    return SuPreMTrainer_smoke({**plans, "continue_training": False}, "3d_fullres", 0, dataset_json,
                               device=torch.device("cpu"))


def _share(batch: dict, rank: int, size: int) -> dict:
    part = slice(rank * size, (rank + 1) * size)
    return {"data": batch["data"][part], "target": [t[part] for t in batch["target"]], "keys": batch["keys"][part]}


def _train_steps(trainer, batches: list[dict], initial: dict, rank: int = 0) -> dict:
    """``STEPS`` of the trainer's own train_step from ``initial`` weights, each on this rank's share of a batch."""
    unwrap(trainer.network).load_state_dict(initial)
    for batch in batches:
        trainer.train_step(_share(batch, rank, trainer.batch_size))
    return copy.deepcopy(unwrap(trainer.network).state_dict())


def _ranks_worker(rank: int, preprocessed: Path, batches_file: Path, result_file: Path) -> None:
    with float64_default():
        _train_save_and_resume(rank, preprocessed, batches_file, result_file)


def _train_save_and_resume(rank: int, preprocessed: Path, batches_file: Path, result_file: Path) -> None:
    with pytest.raises(ValueError, match="batch size 3 of configuration '3d_fullres' does not divide over 2 DDP"):
        _trainer(preprocessed, batch_size=3).initialize()
    trainer = _trainer(preprocessed)
    trainer.initialize()
    assert trainer.device == torch.device("cpu") and trainer.batch_size == 1 and trainer.is_ddp
    inputs = torch.load(batches_file, weights_only=False)
    weights = _train_steps(trainer, inputs["batches"], inputs["initial"], rank)
    if rank == 0:
        torch.save(weights, result_file)
    checkpoint = str(result_file.with_name("checkpoint_latest.pth"))
    trainer.current_epoch = 1
    trainer.save_checkpoint(checkpoint)  # rank 0 writes
    dist.barrier()
    resumed = _trainer(preprocessed)
    resumed.load_checkpoint(checkpoint)  # what --c does on every rank: this rank's device, the same state
    assert resumed.current_epoch == 2 and resumed.device == torch.device("cpu")
    for key, value in unwrap(resumed.network).state_dict().items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.e2e
def test_two_ranks_compute_what_one_process_computes(planned_phantom_dataset, monkeypatch, tmp_path):
    env = planned_phantom_dataset["env"]
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    preprocessed = Path(env["nnUNet_preprocessed"]) / "Dataset001_SynthCT"
    with float64_default():
        single = _trainer(preprocessed)
        single.initialize()
    loader, _ = single.get_dataloaders()
    # the same global batches for both, the last one with a partial-label case (hospB: 44% of the draws)
    batches = [next(loader) for _ in range(STEPS - 1)]
    batches.append(next(batch for batch in iter(lambda: next(loader), None)
                        if any(key.startswith("hospB") for key in batch["keys"])))
    for batch in batches:  # augmented in float32 (batchgenerators' kernels), trained in float64
        batch["data"] = batch["data"].double()
    initial = copy.deepcopy(unwrap(single.network).state_dict())
    torch.save({"batches": batches, "initial": initial}, tmp_path / "batches.pt")
    spawn(_ranks_worker, tmp_path, preprocessed, tmp_path / "batches.pt", tmp_path / "ranks.pt")
    with float64_default():
        expected = _train_steps(single, batches, initial)
    distributed = torch.load(tmp_path / "ranks.pt", weights_only=True)
    assert expected[next(iter(expected))].dtype == distributed[next(iter(distributed))].dtype == torch.float64
    moved = max((expected[k] - initial[k]).abs().max().item() for k in initial if initial[k].is_floating_point())
    assert moved > 1e-3  # the steps changed the weights far beyond the tolerances below
    for key, value in expected.items():
        # nnU-Net weights the lowest-resolution head 0 in one process (no gradient: SGD leaves it alone) and 1e-6
        # under DDP (which rejects unused parameters): it moves by gradient and weight decay there (1.1e-6 measured).
        tolerance = dict(rtol=1e-4, atol=1e-5) if key.startswith("decoder.seg_layers.0.") else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(distributed[key], value, **tolerance, msg=lambda message: f"{key}: {message}")
