"""The console command, trainer discovery through nnU-Net's own lookup, and the installed layout."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import cli, subprocess_env
from nnunet_suprem.cli import build_parser
from nnunet_suprem.nnunet_env import trainers_dir, with_ext_trainers

REPO = Path(__file__).resolve().parents[1]


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("subcommand", _subcommands())
def test_every_subcommand_has_help(subcommand):
    result = subprocess.run(cli(subcommand, "--help"), capture_output=True, text=True)
    assert result.returncode == 0 and "usage: nnunet-suprem" in result.stdout


def _choices(parser) -> dict:
    return next(a for a in parser._actions if a.dest == "command").choices


@pytest.mark.parametrize("subcommand", _subcommands())
def test_a_run_builds_its_subcommand_as_the_full_parser_does(subcommand):
    lazy, full = _choices(build_parser([subcommand, "--help"])), _choices(build_parser())
    assert list(lazy) == list(full) and lazy[subcommand].format_help() == full[subcommand].format_help()


def test_trainers_dir_imports_neither_torch_nor_another_subcommand(tmp_path):
    code = ("import sys; from nnunet_suprem.cli import COMMANDS, main; main(['trainers-dir']); "
            "print(sorted(m for m in ('torch', 'scipy', 'SimpleITK', 'nnunetv2', *COMMANDS.values()) "
            "if m in sys.modules))")
    # run outside the clone: `python -c` puts the working directory first on sys.path, and the clone's
    # nnunet_suprem/ lacks ext_trainers (setup.py maps it from trainers/ into the installed package only)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert result.stdout.splitlines() == [str(trainers_dir()), "[]"]


def test_trainers_dir_from_a_source_checkout_that_is_not_installed(tmp_path):
    """``python -m nnunet_suprem...`` in a checkout next to a non-editable install imports the checkout, which has
    ``trainers/`` but no ``nnunet_suprem.ext_trainers`` package: its trainers/ is the folder."""
    shutil.copytree(REPO / "nnunet_suprem", tmp_path / "nnunet_suprem")
    shutil.copytree(REPO / "trainers", tmp_path / "trainers")
    code = "from nnunet_suprem.nnunet_env import trainers_dir; print(trainers_dir())"
    printed = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             check=True).stdout  # -S: no site-packages, so no installed nnunet_suprem
    assert Path(printed.strip()) == tmp_path / "trainers"


def test_trainers_dir_holds_the_trainer_modules():
    printed = subprocess.run(cli("trainers-dir"), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(printed) == trainers_dir()
    assert (trainers_dir() / "suprem_trainers.py").is_file()


def test_nnunet_lookup_finds_our_trainers(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        recursive_find_trainer_class_by_name("SuPreMTrainer")
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers_dir()))
    for name in ("SuPreMTrainer", "SuPreMTrainer_smoke", "SuPreMTrainer_1000epochs"):
        found = recursive_find_trainer_class_by_name(name)
        assert found.__name__ == name and issubclass(found, SuPreMTrainer)
    assert recursive_find_trainer_class_by_name("SuPreMTrainer") is SuPreMTrainer  # one class, not a copy


def test_trainer_modules_expose_every_class_under_its_own_name():
    """nnU-Net finds a trainer by its class name (and checkpoints record it): the generated training-length variants
    must be named as exposed; the demo finds their epochs."""
    from nnunet_suprem.ext_trainers import suprem_finetune_trainers, suprem_trainers
    from nnunet_suprem.steps import trainer_epochs
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    exposed = {name: value for module in (suprem_trainers, suprem_finetune_trainers)
               for name, value in vars(module).items() if isinstance(value, type) and issubclass(value, SuPreMTrainer)}
    assert len(exposed) == 25 and all(trainer.__name__ == name for name, trainer in exposed.items())
    assert exposed["SuPreMFinetuneTrainer_12epochs_40iterations"].iterations_per_epoch == 40
    ablation = exposed["SuPreMFinetuneTrainerFullLR_40epochs_25iterations"]
    assert ablation.pretrained_lr_scale == 1 and exposed["SuPreMFinetuneTrainer"].pretrained_lr_scale == 0.1
    assert ablation.epochs == exposed["SuPreMFinetuneTrainer_40epochs_25iterations"].epochs == 40
    assert trainer_epochs("SuPreMTrainer_30epochs_50iterations") == 30 and trainer_epochs("SuPreMTrainer") is None
    assert trainer_epochs("nnUNetTrainer") is None


def test_with_ext_trainers_appends_once():
    env = with_ext_trainers({"nnUNet_extTrainer": "/somewhere/else"})
    assert env["nnUNet_extTrainer"].split(os.pathsep) == ["/somewhere/else", str(trainers_dir())]
    assert with_ext_trainers(env)["nnUNet_extTrainer"] == env["nnUNet_extTrainer"]
    assert with_ext_trainers({})["nnUNet_extTrainer"] == str(trainers_dir())


@pytest.mark.e2e
def test_doctor_names_what_is_missing():
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    result = subprocess.run(cli("doctor"), env=env, capture_output=True, text=True)
    assert result.returncode == 1
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert f"[FIX] {variable}: not set" in result.stdout
        assert f"export {variable}=" in result.stdout
    assert f"export nnUNet_extTrainer={trainers_dir()}" in result.stdout


@pytest.mark.e2e
def test_doctor_is_happy_when_set_up(nnunet_env):
    env = subprocess_env(nnunet_env, nnUNet_extTrainer=str(trainers_dir()))
    result = subprocess.run(cli("doctor"), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "[ok] nnUNet_extTrainer" in result.stdout and "SuPreMTrainer" in result.stdout
    env["nnUNet_extTrainer"] = str(REPO / "tests")  # a directory without our trainers
    result = subprocess.run(cli("doctor"), env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "does not contain the nnunet-suprem trainers" in result.stdout


@pytest.mark.e2e
def test_wheel_ships_the_trainer_and_planner_modules(tmp_path):
    """A non-editable install carries trainers/ as nnunet_suprem/ext_trainers (one source, no copies), and the
    planners in nnunet_suprem/planning."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("nnunet_suprem-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in (p.name for p in (REPO / "trainers").glob("*.py")):
        assert f"nnunet_suprem/ext_trainers/{module}" in names
    assert not any(n.startswith("trainers/") for n in names)
    assert "nnunet_suprem/planning/planners.py" in names
