import math

import numpy as np
import pytest
import torch

from nnunet_suprem.training.sampling import (SET_LOCATION_SAMPLES, UNLISTED, set_locations, source_repeats,
                                             source_shares, with_set_locations)
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


# ---------------------------------------------------------------- label sets in foreground oversampling
def _preprocessed_case(folder, identifier, seg):
    """One case saved as nnU-Net's preprocessing saves it (blosc2), its class_locations of the real labels 1, 2."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    properties = {"class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1, 2])}
    nnUNetDatasetBlosc2.save_case(np.zeros(seg.shape, dtype=np.float32), seg, properties, str(folder / identifier))


def test_foreground_oversampling_draws_set_voxels(tmp_path):
    """A KiTS-like case whose kidney is only a set (value 4 = {1, 2}): nnU-Net's loader with full oversampling
    centres every patch on it once the dataset locates sets; without, it has no foreground to draw."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    seg = np.zeros((1, 40, 40, 40), dtype=np.int8)
    seg[0, 30:34, 30:34, 30:34] = 4
    _preprocessed_case(tmp_path, "kits_0000", seg)
    plain = nnUNetDatasetBlosc2(str(tmp_path))
    located = with_set_locations(plain, {4: [1, 2]})
    assert located.identifiers == ["kits_0000"] and plain.load_case("kits_0000")[3]["class_locations"][1] == []
    locations = located.load_case("kits_0000")[3]["class_locations"][4]
    assert locations.dtype == np.int32 and len(locations) == 64 and (seg[tuple(locations.T)] == 4).all()
    assert located.set_locations["kits_0000"][4] is locations  # cached for later draws

    labels = LabelManager({"background": 0, "kidney_left": 1, "kidney_right": 2, "ignore": 3}, None)
    for dataset, holds_set in ((located, True), (plain, False)):
        loader = nnUNetDataLoader(dataset, 8, (8, 8, 8), (8, 8, 8), labels, oversample_foreground_percent=1.0)
        batch = loader.generate_train_batch()
        assert ((batch["target"] == 4).flatten(1).any(1).all()) == holds_set


def test_set_locations_are_bounded_per_set_and_case():
    seg = np.zeros((1, 64, 64, 64), dtype=np.int8)
    seg[0, :, :32] = 5
    seg[0, 0, 40, 40] = 6
    found = set_locations(seg, [5, 6, 7])
    assert sorted(found) == [5, 6] and len(found[5]) == SET_LOCATION_SAMPLES and len(found[6]) == 1
