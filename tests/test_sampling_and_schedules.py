import math

import pytest
import torch

from nnunet_suprem.training.sampling import UNLISTED, source_repeats, source_shares
from nnunet_suprem.training.schedules import WarmupCosineLRScheduler, checkpoint_interval, warmup_cosine_factor


def test_source_balance_weights():
    source_of = {**{f"big{i}": "big" for i in range(100)}, "small0": "small"}
    cases = [*source_of, "plain0", "plain1", "plain2", "plain3"]
    uniform = source_repeats(cases, source_of, alpha=0)
    assert set(uniform.values()) == {1}
    sqrt = source_repeats(cases, source_of, alpha=0.5)
    assert sqrt["big0"] == 1 and sqrt["small0"] == 10 and sqrt["plain0"] == 5
    equal = source_shares(source_repeats(cases, source_of, alpha=1), source_of)
    assert equal["big"] == pytest.approx(1 / 3) and equal["small"] == pytest.approx(1 / 3)
    assert equal[UNLISTED] == pytest.approx(1 / 3)


def test_checkpoint_interval_scales_nnunets_with_the_epochs():
    assert [checkpoint_interval(e, 1000, 50) for e in (1000, 5000, 250, 100, 40, 19, 2)] == [50, 50, 12, 5, 2, 1, 1]
    assert checkpoint_interval(100, 500, 10) == 2  # whatever nnU-Net's own values are


def test_warmup_cosine_schedule_is_a_function_of_the_epoch():
    assert warmup_cosine_factor(0, 4, 100) == pytest.approx(1 / 5)
    assert warmup_cosine_factor(3, 4, 100) == pytest.approx(4 / 5)
    assert warmup_cosine_factor(4, 4, 100) == pytest.approx(1.0)
    assert warmup_cosine_factor(52, 4, 100) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, 4, 100) == pytest.approx(0.0, abs=1e-12)
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": [params[0]]}, {"params": [params[1]], "lr_scale": 0.1}], lr=1.0)
    scheduler = WarmupCosineLRScheduler(optimizer, 1e-3, 4, 100)
    scheduler.step(52)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-5])
    resumed = WarmupCosineLRScheduler(optimizer, 1e-3, 4, 100)
    resumed.step(52)  # resuming at an epoch gives that epoch's lr, whatever happened before
    assert resumed.get_last_lr() == pytest.approx([5e-4, 5e-5])
    assert not math.isnan(warmup_cosine_factor(7, 10, 5))
