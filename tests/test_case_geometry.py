"""SuPreMTrainer's start-up reads the cases' orientation once per dataset, not every case's .pkl at every start.

nnU-Net's .pkl per case holds ``class_locations`` (megabytes on real datasets); stock nnU-Net opens none at
start-up. Thousands of cases with nnU-Net's preprocessed layout and .pkl keys; DDP with the gloo backend.
"""
import builtins
import copy
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_suprem.training.case_geometry import dataset_orientations, summary_path

CASES = 3000
LPS, RAS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
SAGITTAL = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # index axes A, S, L: left-right is nnU-Net's array axis 0


def _write_cases(folder: Path, count: int, direction=LPS, first: int = 0) -> list[str]:
    """``count`` cases in nnU-Net's blosc2 layout; each .pkl has the keys nnU-Net's preprocessing writes."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = [f"case_{i:05d}" for i in range(first, first + count)]
    for case in cases:
        (folder / f"{case}.b2nd").touch()
        (folder / f"{case}_seg.b2nd").touch()
        properties = {"sitk_stuff": {"spacing": (1.5, 1.5, 5.0), "origin": (0.0, 0.0, 0.0), "direction": direction},
                      "spacing": [5.0, 1.5, 1.5], "shape_before_cropping": (12, 96, 96),
                      "bbox_used_for_cropping": [[0, 12], [0, 96], [0, 96]],
                      "shape_after_cropping_and_before_resampling": (12, 96, 96),
                      "class_locations": {c: np.zeros((10, 4), dtype=np.int64) for c in (1, 2, 3)}}
        with open(folder / f"{case}.pkl", "wb") as f:
            pickle.dump(properties, f)
    return cases


@pytest.fixture
def pkl_opens(monkeypatch) -> list[str]:
    """The case .pkl files opened from now on (any reader: load_pickle, pickle.load, ...)."""
    opened, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):
        name = os.path.basename(file) if isinstance(file, (str, os.PathLike)) else ""
        if name.startswith("case_") and name.endswith(".pkl"):
            opened.append(name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opened


@pytest.fixture
def many_cases(anisotropic_dataset, tmp_path, monkeypatch):
    """``(make_trainer, data folder)`` of Dataset903_Many: 3000 cases with the anisotropic dataset's plans."""
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    source = Path(anisotropic_dataset["nnUNet_preprocessed"]) / "Dataset901_Aniso"
    plans = {**json.loads((source / "nnUNetPlans.json").read_text()), "dataset_name": "Dataset903_Many"}
    dataset_json = json.loads((source / "dataset.json").read_text())
    folder = tmp_path / "Dataset903_Many" / plans["configurations"]["3d_fullres"]["data_identifier"]
    _write_cases(folder, CASES)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))

    def make():
        trainer = SuPreMTrainer({**copy.deepcopy(plans), "continue_training": False}, "3d_fullres", 0,
                                dataset_json, device=torch.device("cpu"))
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        return trainer

    return make, folder


@pytest.mark.parametrize("sagittal_cases", [0, 2, 12])
def test_2d_cases_sliced_along_left_right_get_no_swap(anisotropic_dataset, tmp_path, monkeypatch, sagittal_cases):
    """2D patches: a flip of in-plane axis 1 is left-right for axial cases but not for cases sliced along left-right
    (their axis 1 is anterior-posterior), so a mix turns left-right mirroring off instead of swapping their labels."""
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    source = Path(anisotropic_dataset["nnUNet_preprocessed"]) / "Dataset901_Aniso"
    plans = {**json.loads((source / "nnUNetPlans.json").read_text()), "dataset_name": "Dataset904_Mixed2d"}
    folder = tmp_path / "Dataset904_Mixed2d" / plans["configurations"]["2d"]["data_identifier"]
    _write_cases(folder, 12 - sagittal_cases)
    _write_cases(folder, sagittal_cases, SAGITTAL, first=100)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    trainer = SuPreMTrainer({**copy.deepcopy(plans), "continue_training": False}, "2d", 0,
                            json.loads((source / "dataset.json").read_text()), device=torch.device("cpu"))
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    if sagittal_cases == 0:
        assert _decision(trainer) == ((1,), (1, [(1, 2)]), (0,))
    elif sagittal_cases == 12:  # no in-plane axis is left-right: nnU-Net's mirroring, nothing swapped
        assert _decision(trainer) == ((), None, (0, 1))
    else:
        assert _decision(trainer) == ((1,), None, (0,))
        assert "the 2D slices of some cases are cut along the left-right axis" in open(trainer.log_file).read()


def _decision(trainer) -> tuple:
    return trainer.left_right_axes, trainer.lateral_swap, trainer.inference_allowed_mirroring_axes


@pytest.mark.parametrize("one_case_mirrored", [False, True])
def test_startup_reads_each_pkl_once_per_dataset_with_the_same_decision(many_cases, pkl_opens, one_case_mirrored):
    make, folder = many_cases
    if one_case_mirrored:  # one RAS case among LPS ones: no left-right mirroring, whichever way it is read
        _write_cases(folder, 1, RAS, first=1234)
    pkl_opens.clear()
    first = make()
    summary = Path(summary_path(str(folder)))
    assert len(pkl_opens) == CASES and summary.is_file()  # read once, to write the summary
    assert summary.parent == folder.parent and not [p for p in folder.iterdir() if "suprem" in p.name]
    pkl_opens.clear()
    second = make()
    assert pkl_opens == []  # like stock nnU-Net: no case .pkl at start-up
    assert _decision(second) == _decision(first)
    os.utime(folder / "case_00007.pkl", ns=(1, 1))  # preprocessed again: the summary no longer holds
    pkl_opens.clear()
    third = make()
    assert len(pkl_opens) == CASES and _decision(third) == _decision(first)
    if one_case_mirrored:
        assert _decision(first) == ((2,), None, (0, 1))
        assert "cases differ in which way the left-right axis points" in open(second.log_file).read()
    else:
        assert _decision(first) == ((2,), (2, [(1, 2)]), (0, 1))

    _write_cases(folder, 1, RAS, first=CASES)  # a new case (re-preprocessing removes the whole folder)
    pkl_opens.clear()
    assert _decision(make()) == ((2,), None, (0, 1)) and len(pkl_opens) == CASES + 1


WORKER = """
import builtins, json, os, sys
import torch.distributed as dist
from nnunet_suprem.training.case_geometry import dataset_orientations

opened, real_open = [], builtins.open
def counting_open(file, *args, **kwargs):
    if os.path.basename(str(file)).startswith("case_") and str(file).endswith(".pkl"):
        opened.append(file)
    return real_open(file, *args, **kwargs)
builtins.open = counting_open
dist.init_process_group("gloo")
folder = sys.argv[1]
cases = [f[:-5] for f in os.listdir(folder) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd")]
orientations = dataset_orientations(folder, cases, lambda message: None)
print(json.dumps({"opened": len(opened), "orientations": sorted(orientations.items())}))
dist.destroy_process_group()
"""


def _gloo_run(folder: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)}) for rank in range(2)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), outputs
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


@pytest.mark.e2e
def test_ddp_ranks_share_the_reading_and_agree(tmp_path):
    folder = tmp_path / "nnUNetPlans_3d_fullres"
    cases = _write_cases(folder, 1000) + _write_cases(folder, 1, RAS, first=1000)
    expected = dataset_orientations(str(folder), cases, print)  # one process
    Path(summary_path(str(folder))).unlink()
    first = _gloo_run(folder)
    assert [r["opened"] for r in first] == [501, 500]  # each rank reads its share of the cases
    assert first[0]["orientations"] == first[1]["orientations"] == json.loads(json.dumps(sorted(expected.items())))
    second = _gloo_run(folder)  # rank 0 reads the summary rank 0 wrote, and broadcasts it
    assert [r["opened"] for r in second] == [0, 0] and second[0]["orientations"] == first[0]["orientations"]


@pytest.mark.parametrize("tamper", [
    lambda summary: [summary],
    lambda summary: {**summary, "orientations": "x"},
    lambda summary: {**summary, "orientations": {case: [7, 3] for case in summary["orientations"]}},
    lambda summary: {**summary, "orientations": {case: "ab" for case in summary["orientations"]}},
    lambda summary: {**summary, "orientations": dict(list(summary["orientations"].items())[1:])},
], ids=["a list", "orientations not a mapping", "no axis and sign", "not pairs", "a case missing"])
def test_a_damaged_summary_is_made_again(tmp_path, tamper):
    """A summary that parses but is not one this plugin wrote crashed every start or gave wrong orientations."""
    folder = tmp_path / "data"
    cases = _write_cases(folder, 3)
    truth = dataset_orientations(str(folder), cases, print)
    summary = Path(summary_path(str(folder)))
    summary.write_text(json.dumps(tamper(json.loads(summary.read_text()))))
    assert dataset_orientations(str(folder), cases, print) == truth
    assert json.loads(summary.read_text())["orientations"] == {case: list(truth[case]) for case in cases}
