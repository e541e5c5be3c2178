"""Shared fixtures: temporary nnU-Net folders and a planned phantom dataset for end-to-end tests."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, TypeVar

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N workers' nnU-Net trainings share the cores, each with torch.set_num_threads(cpu_count()); OpenMP
    # threads that wait must sleep, not spin (two smoke trainings at once: 140 s spinning, 61 s passive, 82 s in turn)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from filelock import FileLock

NNUNET_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
E2E_FIXTURES = {"planned_phantom_dataset", "anisotropic_dataset", "demo_smoke"}  # they run nnU-Net
Made = TypeVar("Made")
# nnU-Net's worker pools (nnUNet_def_n_proc) for the tests' commands: each worker is a spawned Python that imports
# torch and nnU-Net first, which on 2 cores costs more than the tiny cases' work (a smoke training: 56 s with one
# export and one metrics worker, 69 s with two each); the tests pass it as -np too
WORKERS = "1"


def pytest_collection_modifyitems(items) -> None:
    """Every test that uses a dataset nnU-Net planned is end to end (``-m "not e2e"``: the fast tier)."""
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def once_per_run(tmp_path_factory, name: str, make: Callable[[Path], Made]) -> Made:
    """``make(folder)`` once per test run, ``folder`` a fresh ``name`` in the run's temporary folder: under
    pytest-xdist the first worker that asks makes it while the others wait, then they read its pickled result."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    folder, result = root / name, root / f"{name}.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if result.is_file():
            return pickle.loads(result.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed to make it left
        folder.mkdir()
        made = make(folder)
        result.write_bytes(pickle.dumps(made))
    return made


def create_splits(preprocessed: Path) -> None:
    """nnU-Net's default 5-fold splits_final.json, written before any test trains on a shared dataset (concurrent
    trainers would each write it)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    folder = next(p for p in sorted(preprocessed.glob("nnUNetPlans_*")) if p.is_dir())  # one configuration's data
    identifiers = sorted(infer_dataset_class(str(folder)).get_identifiers(str(folder)))
    (preprocessed / "splits_final.json").write_text(json.dumps(generate_crossval_split(identifiers, seed=12345,
                                                                                       n_splits=5)))


def nnunet_folders(root: Path) -> dict[str, str]:
    """Create raw/preprocessed/results folders under ``root``; return them as environment variables."""
    env = {}
    for name in NNUNET_VARIABLES:
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    return env


def raw_phantom_dataset(root: Path, dataset_id: int, name: str, hospitals: list[str], num_cases: int,
                        num_test_cases: int = 0) -> dict[str, str]:
    """nnU-Net folders under ``root`` with a raw phantom dataset of the built-in ``hospitals``; returns the folders."""
    from nnunet_suprem.synth import hospitals_from_args, write_nnunet_dataset

    folders = nnunet_folders(root)
    with pytest.MonkeyPatch.context() as mp:
        for variable, value in folders.items():
            mp.setenv(variable, value)
        write_nnunet_dataset(dataset_id, name, hospitals_from_args(hospitals, [], None), num_cases=num_cases,
                             num_test_cases=num_test_cases)
    return folders


def subprocess_env(folders: dict[str, str], **extra: str) -> dict[str, str]:
    """Environment for nnU-Net child processes: our folders, one worker per pool, no inherited extTrainer."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(folders, nnUNet_def_n_proc=WORKERS, **extra)
    return env


def run(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it fails."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                    f"\n--- stderr\n{result.stderr[-4000:]}")
    return result


def command(name: str, *args: str) -> list[str]:
    """A console script (nnUNetv2_train, nnunet-suprem, ...) installed next to this interpreter."""
    return [str(Path(sys.executable).parent / name), *args]


def tree_digest(folder: Path) -> str:
    """SHA-256 over every path below ``folder`` and every file's bytes (equal digests: identical trees)."""
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        digest.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


def cli(*args: str) -> list[str]:
    """The nnunet-suprem command."""
    return command("nnunet-suprem", *args)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> dict[str, str]:
    """Fresh nnU-Net folders, set in this process (nnunetv2 reads them lazily) and returned for children."""
    folders = nnunet_folders(tmp_path / "nnunet")
    for name, value in folders.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("nnUNet_def_n_proc", WORKERS)
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    return folders


@pytest.fixture(scope="session")
def planned_phantom_dataset(tmp_path_factory) -> dict:
    """A 3-hospital phantom dataset (hospB annotates 4 classes only), planned and preprocessed for 3d_fullres."""
    def make(root: Path) -> dict:
        folders = nnunet_folders(root)
        env = subprocess_env(folders)
        run(cli("synth", "-d", "1", "--cases", "3", "--test-cases", "1", "-np", WORKERS,
                "--annotate", "hospB=liver,spleen,kidney_left,kidney_right"), env)
        run(command("nnUNetv2_plan_and_preprocess", "-d", "1", "-c", "3d_fullres", "-np", WORKERS,
                    "--verify_dataset_integrity"), env)
        create_splits(Path(folders["nnUNet_preprocessed"]) / "Dataset001_SynthCT")
        return {"env": env, "dataset_id": 1, "raw": Path(folders["nnUNet_raw"]) / "Dataset001_SynthCT"}

    return once_per_run(tmp_path_factory, "planned", make)


@pytest.fixture
def make_trainer(planned_phantom_dataset, monkeypatch, tmp_path):
    """Builds trainers in-process on the planned phantom dataset (results in a fresh folder)."""
    from nnunet_suprem.training.variants import SuPreMTrainer_smoke

    env = planned_phantom_dataset["env"]
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    preprocessed = planned_phantom_dataset["raw"].parents[1] / "nnUNet_preprocessed" / "Dataset001_SynthCT"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())

    def make(edit_dataset_json=lambda d: None, cls=None, initialize: bool = True, continue_training: bool = False):
        cls = cls or SuPreMTrainer_smoke
        d = copy.deepcopy(dataset_json)
        edit_dataset_json(d)
        trainer = cls({**copy.deepcopy(plans), "continue_training": continue_training}, "3d_fullres", 0, d,
                      device=torch.device("cpu"))
        if initialize:
            trainer.initialize()
        return trainer

    return make


ANISOTROPIC_LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2, "vertebrae_L1": 3}


def anisotropic_case(rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """96 x 96 x 12 voxels of 1.5 x 1.5 x 5 mm (5 mm slices like clinical CT), LPS: x grows to the patient's left."""
    shape, spacing, shift = (96, 96, 12), (1.5, 1.5, 5.0), rng.uniform(-5, 5, 3)
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s - d for n, s, d in zip(shape, spacing, shift)],
                          indexing="ij")
    ct = np.where((x / 65) ** 2 + (y / 50) ** 2 <= 1, 40.0, -1000.0)
    labels = np.zeros(shape, dtype=np.uint8)
    for name, centre_x, radii, hu in (("kidney_left", 40, (15, 15, 25), 160), ("kidney_right", -40, (15, 15, 25), 160),
                                      ("vertebrae_L1", 0, (10, 10, np.inf), 500)):  # the vertebra marks the midline
        inside = ((x - centre_x) / radii[0]) ** 2 + ((y - 15) / radii[1]) ** 2 + (z / radii[2]) ** 2 <= 1
        ct[inside], labels[inside] = hu, ANISOTROPIC_LABELS[name]
    ct += rng.normal(0, 20, shape)

    def image(array: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        result.SetSpacing(spacing)
        return result

    return image(ct.astype(np.int16)), image(labels)


@pytest.fixture(scope="session")
def anisotropic_dataset(tmp_path_factory) -> dict[str, str]:
    """Dataset901_Aniso: five anisotropic cases (kidneys either side of a vertebra), planned and preprocessed by
    nnU-Net for 2d and 3d_fullres; returns the nnU-Net folders."""
    def make(root: Path) -> dict[str, str]:
        folders = nnunet_folders(root)
        raw = Path(folders["nnUNet_raw"]) / "Dataset901_Aniso"
        for sub in ("imagesTr", "labelsTr"):
            (raw / sub).mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(5):
            ct, labels = anisotropic_case(rng)
            sitk.WriteImage(ct, str(raw / "imagesTr" / f"aniso_{i:03d}_0000.nii.gz"))
            sitk.WriteImage(labels, str(raw / "labelsTr" / f"aniso_{i:03d}.nii.gz"))
        (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": ANISOTROPIC_LABELS,
                                                      "numTraining": 5, "file_ending": ".nii.gz"}))
        run(command("nnUNetv2_plan_and_preprocess", "-d", "901", "-c", "2d", "3d_fullres", "-np", WORKERS),
            subprocess_env(folders))
        create_splits(Path(folders["nnUNet_preprocessed"]) / "Dataset901_Aniso")
        return folders

    return once_per_run(tmp_path_factory, "anisotropic", make)


@pytest.fixture(scope="session")
def demo_smoke(tmp_path_factory) -> dict:
    """``nnunet-suprem demo --smoke`` run once (stock nnU-Net children): its folder, what it printed, the environment
    it ran in. The demo's test checks the story; the few-shot tests start from its planned target."""
    def make(root: Path) -> dict:
        out, env = root / "demo", subprocess_env({})
        stdout = run(cli("demo", "--smoke", "--out", str(out), "-device", "cpu"), env, timeout=900).stdout
        return {"out": out, "stdout": stdout, "env": env}

    return once_per_run(tmp_path_factory, "demo", make)
