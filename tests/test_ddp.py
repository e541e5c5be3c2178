"""Behaviour under DDP as nnU-Net sets it up (SyncBatchNorm conversion, DDP wrapper), run on CPU: 2 processes, gloo."""
import pytest
import copy
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_suprem.architectures.suprem_unet3d import BatchStatisticsNorm3d, SuPreMUNet3D
from nnunet_suprem.training.finetune_trainer import set_requires_grad
from nnunet_suprem.training.walltime import stop_agreed

WORLD = 2


def spawn(worker, tmp_path, *args) -> None:
    """Run ``worker(rank, *args)`` in WORLD processes joined in a gloo process group."""
    mp.spawn(_in_process_group, args=(worker, str(tmp_path / "dist_init"), *args), nprocs=WORLD, join=True)


def _in_process_group(rank: int, worker, init_file: str, *args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def nnunet_ddp(network: nn.Module) -> DDP:
    """What nnUNetTrainer.initialize does under DDP (device_ids only on GPUs)."""
    return DDP(nn.SyncBatchNorm.convert_sync_batchnorm(network))


# ---------------------------------------------------------------- SuPreM U-Net normalisation
def test_sync_batchnorm_conversion_leaves_batch_statistics_norm_alone():
    network = SuPreMUNet3D(1, 3)
    state = network.state_dict()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert sum(isinstance(m, BatchStatisticsNorm3d) for m in converted.modules()) == 14
    assert {k: v.shape for k, v in converted.state_dict().items()} == {k: v.shape for k, v in state.items()}
    # BatchNorm3d's keys, and a BatchNorm3d state dict (also one from before num_batches_tracked) loads
    norm, reference = BatchStatisticsNorm3d(4), nn.BatchNorm3d(4)
    assert list(norm.state_dict()) == list(reference.state_dict())
    old = OrderedDict((k, v) for k, v in reference.state_dict().items() if k != "num_batches_tracked")
    old._metadata = {"": {"version": 1}}
    norm.load_state_dict(old)


def _normalisation_worker(rank: int) -> None:
    torch.manual_seed(0)  # the same network on every rank
    network = SuPreMUNet3D(1, 2)
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        single = {mode: copy.deepcopy(network).train(mode)(x) for mode in (False, True)}
    ddp = nnunet_ddp(network)
    with torch.no_grad():
        assert torch.equal(ddp.eval()(x), single[False])  # what pseudo-Dice and the final validation compute
    output = ddp.train()(x)
    assert torch.equal(output.detach(), single[True])  # each rank normalises with its own batch
    output.mean().backward()


@pytest.mark.e2e
def test_ddp_outputs_equal_single_process(tmp_path):
    spawn(_normalisation_worker, tmp_path)


# ---------------------------------------------------------------- freezing pre-trained layers
def _freezing_worker(rank: int) -> None:
    torch.manual_seed(0)
    network = nnunet_ddp(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    body, head = network.module[0], network.module[2]
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(rank))  # each rank its own data

    def step() -> None:
        network.zero_grad(set_to_none=True)
        network(x).square().sum().backward()

    def same_on_every_rank(grad: torch.Tensor) -> bool:
        gathered = [torch.empty_like(grad) for _ in range(WORLD)]
        dist.all_gather(gathered, grad)
        return all(torch.equal(g, grad) for g in gathered)

    network = set_requires_grad(network, body.parameters(), False)
    for _ in range(2):  # a reducer still expecting the body's gradients fails at the second step
        step()
        assert body.weight.grad is None and same_on_every_rank(head.weight.grad)
    network = set_requires_grad(network, body.parameters(), True)
    step()
    assert same_on_every_rank(body.weight.grad) and same_on_every_rank(head.weight.grad)  # averaged again


@pytest.mark.e2e
def test_ddp_freezing_and_unfreezing(tmp_path):
    spawn(_freezing_worker, tmp_path)


# ---------------------------------------------------------------- wall-time stop
def _stop_agreement_worker(rank: int) -> None:
    assert stop_agreed(rank == 1, torch.device("cpu"))  # only rank 1 caught the signal: every rank stops now
    assert not stop_agreed(False, torch.device("cpu"))


@pytest.mark.e2e
def test_every_rank_stops_after_the_iteration_in_which_one_caught_a_stop_signal(tmp_path):
    spawn(_stop_agreement_worker, tmp_path)
