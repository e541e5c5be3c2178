"""Our trainers' checkpoints survive kills: one atomic write of nnU-Net's dict, ``--c`` past a damaged file, and a
clean stop on SLURM's wall-time signals (SIGUSR1, SIGTERM) that ``--c`` continues."""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from nnunetv2.run.run_training import maybe_load_checkpoint
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import command, run
from nnunet_suprem.nnunet_env import trainers_dir
from nnunet_suprem.orientation import ORIENTATION_KEY
from nnunet_suprem.training.checkpoints import CONTINUE_ORDER, read_checkpoint_to_continue
from nnunet_suprem.training.walltime import REQUEUE_EXIT_CODE, StopSignals, warning_ignored
from nnunet_suprem.transfer.checkpoint import load_weights_only

ONE_EPOCH, TWO_EPOCHS = "SuPreMTrainer_1epoch_novalidation", "SuPreMTrainerRecipe_smoke_novalidation"
TRAINER_MODULE = '''
from nnunet_suprem.training.suprem_trainer import SuPreMTrainer, SuPreMTrainerRecipe
from nnunet_suprem.training.variants import SMOKE, training_length


class NoFinalValidation:
    """Skips the final validation: a minute on a CPU, and not what these tests are about."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Final validation skipped (test trainer).")


class SuPreMTrainer_1epoch_novalidation(NoFinalValidation, training_length(SuPreMTrainer, 1, 2, 1)):
    """One epoch: checkpoint_best.pth, then checkpoint_final.pth."""


class SuPreMTrainerRecipe_smoke_novalidation(NoFinalValidation, training_length(SuPreMTrainerRecipe, *SMOKE)):
    """2 epochs of 2 iterations; AdamW counts its steps, so the optimiser state's continuation shows."""
'''


def _truncate(path: Path) -> None:
    """What a kill during an in-place torch.save leaves: the first part of the file."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _save(path: Path, epoch: int) -> None:
    torch.save({"current_epoch": epoch, "network_weights": {"w": torch.ones(4096)}}, path)


def _same(a, b) -> bool:
    """Equal nested checkpoint contents (tensors compared by value)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------- --c past a damaged checkpoint
def test_continue_passes_over_damaged_checkpoints_in_nnunets_order(tmp_path):
    final, latest, best = (tmp_path / name for name in CONTINUE_ORDER)
    _save(latest, 5)
    _save(best, 3)
    _truncate(latest)
    logged = []
    path, checkpoint = read_checkpoint_to_continue(str(latest), logged.append)
    assert (path, checkpoint["current_epoch"]) == (str(best), 3)
    assert logged[0].startswith(f"{latest}: not a readable PyTorch checkpoint") and logged[0].endswith("skipped")
    assert logged[1].startswith(f"Continuing from {best} instead")

    _save(final, 9)
    _truncate(final)
    assert read_checkpoint_to_continue(str(final), logged.append)[0] == str(best)
    best.unlink()
    with pytest.raises(RuntimeError, match=f"Delete {re.escape(f'{final} and {latest}')} to start this training anew"):
        read_checkpoint_to_continue(str(final), logged.append)


def test_continue_from_a_truncated_checkpoint_latest_left_by_an_older_version(make_trainer):
    """nnU-Net's own --c (``maybe_load_checkpoint``) picks checkpoint_latest.pth, truncated by a kill while an older
    version wrote it in place: the training continues from checkpoint_best.pth, or names the file to delete."""
    trainer = make_trainer()
    folder = Path(trainer.output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainer.current_epoch = 2
    trainer.save_checkpoint(str(folder / "checkpoint_best.pth"))
    trainer.current_epoch = 4
    trainer.save_checkpoint(str(folder / "checkpoint_latest.pth"))
    _truncate(folder / "checkpoint_latest.pth")

    resumed = make_trainer(continue_training=True, initialize=False)
    maybe_load_checkpoint(resumed, continue_training=True, validation_only=False)
    assert resumed.current_epoch == 3
    log = Path(resumed.log_file).read_text()
    assert f"{folder / 'checkpoint_latest.pth'}: not a readable PyTorch checkpoint" in log
    assert f"Continuing from {folder / 'checkpoint_best.pth'} instead" in log

    (folder / "checkpoint_best.pth").unlink()
    with pytest.raises(RuntimeError, match=f"Delete {re.escape(str(folder / 'checkpoint_latest.pth'))} to start"):
        maybe_load_checkpoint(make_trainer(continue_training=True, initialize=False), True, False)


# ---------------------------------------------------------------- one atomic write
def test_a_checkpoint_is_nnunets_plus_the_orientation_record(make_trainer, tmp_path):
    """The checkpoint is built in one piece (so that it is written once, atomically): nnU-Net's dict, exactly as
    nnU-Net's save_checkpoint writes it, plus the training orientation."""
    trainer = make_trainer()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # records the training orientation
    trainer.logger.log("train_losses", 0.5, 0)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    trainer.save_checkpoint(str(folder / "ours.pth"))
    nnUNetTrainer.save_checkpoint(trainer, str(folder / "nnunet.pth"))
    ours, nnunet = load_weights_only(folder / "ours.pth"), load_weights_only(folder / "nnunet.pth")
    assert trainer.training_orientation is not None and ours.pop(ORIENTATION_KEY) == trainer.training_orientation
    assert _same(ours, nnunet)
    assert sorted(p.name for p in folder.iterdir()) == ["nnunet.pth", "ours.pth"]  # no temporary left behind


@pytest.fixture
def user_trainers_env(planned_phantom_dataset, tmp_path) -> dict[str, str]:
    """Environment for nnUNetv2_train with the trainers of :data:`TRAINER_MODULE` in a user's nnUNet_extTrainer
    folder, results in ``tmp_path / "results"``."""
    ext = tmp_path / "user_trainers"
    ext.mkdir()
    (ext / "interruptible_trainers.py").write_text(TRAINER_MODULE)
    return {**planned_phantom_dataset["env"], "nnUNet_extTrainer": f"{trainers_dir()}{os.pathsep}{ext}",
            "nnUNet_results": str(tmp_path / "results")}


def _train(trainer: str, *options: str) -> list[str]:
    return command("nnUNetv2_train", "1", "3d_fullres", "0", "-tr", trainer, "-device", "cpu", *options)


def _fold(env: dict[str, str], trainer: str) -> Path:
    return Path(env["nnUNet_results"]) / "Dataset001_SynthCT" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"


def _logs(fold: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(fold.glob("training_log_*.txt"))}


def _kill_when_written(process: subprocess.Popen, folder: Path, name: str, killed: threading.Event) -> None:
    """SIGKILL ``process`` as soon as a file whose name contains ``name`` appears in ``folder`` (its write begun)."""
    while process.poll() is None:
        if folder.is_dir() and any(name in entry for entry in os.listdir(folder)):
            process.kill()
            killed.set()
            return
        time.sleep(0.001)


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_to_continue_from(user_trainers_env, tmp_path):
    env, fold = {**user_trainers_env, "nnUNet_n_proc_DA": "0"}, _fold(user_trainers_env, ONE_EPOCH)
    with open(tmp_path / "killed.txt", "w") as output:
        training = subprocess.Popen(_train(ONE_EPOCH), env=env, stdout=output, stderr=subprocess.STDOUT)
        killed = threading.Event()
        watcher = threading.Thread(target=_kill_when_written, args=(training, fold, "checkpoint_final", killed))
        watcher.start()
        training.wait(timeout=600)
        watcher.join()
    assert killed.is_set() and training.returncode == -signal.SIGKILL, (tmp_path / "killed.txt").read_text()[-3000:]
    assert not (fold / "checkpoint_final.pth").exists()  # the kill came while its temporary was written
    best = load_weights_only(fold / "checkpoint_best.pth")  # the checkpoint before it, where --c continues

    before = _logs(fold)
    run(_train(ONE_EPOCH, "--c"), env)
    final = load_weights_only(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 1 and _same(final["network_weights"], best["network_weights"])
    rerun, = (text for name, text in _logs(fold).items() if name not in before)
    assert "Epoch 0" not in rerun and "Training done." in rerun  # continued (finished), not started anew


# ---------------------------------------------------------------- wall-time signals
def test_stop_signals_are_noted_while_forked_workers_ignore_sigusr1_and_end_on_sigterm():
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    assert stop.install()
    try:
        worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
        worker.start()
        os.kill(worker.pid, signal.SIGUSR1)
        worker.join(1)
        assert worker.is_alive() and stop.received is None  # SIGUSR1's default action would have ended it
        os.kill(worker.pid, signal.SIGTERM)  # how nnU-Net's data loaders and multiprocessing stop their workers
        worker.join(10)
        assert worker.exitcode == -signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.received == signal.SIGTERM  # the training process is still here, with the request noted
    finally:
        stop.uninstall()
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before


def test_workers_spawned_in_the_final_validation_ignore_sigusr1():
    """nnU-Net's export workers are spawned (no handler is inherited), and the final validation cannot resume
    midway: SLURM's warning, which reaches every process of the job, must not end them."""
    with warning_ignored():
        worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=True)
        worker.start()
    try:
        os.kill(worker.pid, signal.SIGUSR1)
        worker.join(2)
        assert worker.is_alive()
    finally:
        worker.kill()


def _adam_steps(checkpoint: dict) -> set[int]:
    return {int(state["step"]) for state in checkpoint["optimizer_state"]["state"].values()}


def _wait_for_log(fold: Path, text: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if any(text in log for log in _logs(fold).values()):
            return
        time.sleep(0.1)
    pytest.fail(f"the training never logged {text!r} (exit code {process.poll()})")


def test_sigusr1_mid_epoch_stops_with_a_checkpoint_that_continue_resumes(user_trainers_env, tmp_path):
    """SLURM's wall-time warning (``--signal=USR1@600``) reaches every process of the job: here the training's whole
    process group, its data-augmentation workers included. It stops after the current iteration with exit code
    124; ``--c`` repeats only the interrupted epoch, with the learning rate, the optimiser state and the log."""
    env, fold = {**user_trainers_env, "nnUNet_n_proc_DA": "1"}, _fold(user_trainers_env, TWO_EPOCHS)
    with open(tmp_path / "stopped.txt", "w") as output:
        training = subprocess.Popen(_train(TWO_EPOCHS), env=env, stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            _wait_for_log(fold, "Epoch 1", training)
            os.killpg(training.pid, signal.SIGUSR1)
            assert training.wait(timeout=600) == REQUEUE_EXIT_CODE, (tmp_path / "stopped.txt").read_text()[-3000:]
        finally:
            if training.poll() is None:
                os.killpg(training.pid, signal.SIGKILL)
    assert "Traceback" not in (tmp_path / "stopped.txt").read_text()  # no worker died of the signal
    first = _logs(fold)
    log, = first.values()
    done = int(re.search(r"SIGUSR1: stopping after iteration (\d) of 2 of epoch 1\.", log).group(1))
    assert done < 2  # mid-epoch
    lr = float(re.search(r"Epoch 1 \n.*Current learning rate: ([0-9.e-]+)", log).group(1))
    stopped = load_weights_only(fold / "checkpoint_latest.pth")
    assert stopped["current_epoch"] == 1  # the interrupted epoch is not counted as finished
    assert {len(values) for values in stopped["logging"].values()} == {1}  # the log of the finished epoch 0 only
    assert _adam_steps(stopped) == {2 + done}

    run(_train(TWO_EPOCHS, "--c"), env)
    rerun, = (text for name, text in _logs(fold).items() if name not in first)
    assert "Epoch 1" in rerun and "Epoch 0" not in rerun
    final = load_weights_only(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 2 and {len(values) for values in final["logging"].values()} == {2}
    assert final["logging"]["train_losses"][0] == stopped["logging"]["train_losses"][0]  # the log continued
    assert final["logging"]["lrs"] == [stopped["logging"]["lrs"][0], pytest.approx(lr)]
    assert _adam_steps(final) == {4 + done}  # Adam's state continued: only the interrupted epoch's steps repeat


SLURM_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "slurm" / "pretrain_multinode.sbatch"
FAKE_SLURM = {
    "srun": '#!/bin/bash\nexec "$@"\n',  # one node, one task: the task is the command itself
    "scontrol": '#!/bin/bash\ncase "$1" in\n  show) echo 127.0.0.1 ;;\n  requeue) echo "$2" >> "$REQUEUED" ;;\n'
                '  *) exit 1 ;;\nesac\n',
}


def test_the_slurm_example_stops_at_the_wall_time_requeues_and_finishes(user_trainers_env, tmp_path):
    """examples/slurm's sbatch script with stand-ins for srun and scontrol: SLURM's warning to the batch shell
    (``--signal=B:USR1@600``) reaches the rank through torchrun, the rank saves and exits, the script requeues the
    job; the requeued job (the same script) continues with --c and finishes."""
    bin_dir = tmp_path / "fake_slurm"
    bin_dir.mkdir()
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    requeued = tmp_path / "requeued.txt"
    env = {**user_trainers_env, "PATH": f"{bin_dir}{os.pathsep}{Path(command('torchrun')[0]).parent}{os.pathsep}"
                                        f"{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node001", "SLURM_NNODES": "1", "SLURM_GPUS_PER_NODE": "1",
           "SLURM_CPUS_PER_TASK": "2", "RDZV_PORT": str(port), "REQUEUED": str(requeued), "nnUNet_n_proc_DA": "0"}
    job = ["bash", str(SLURM_EXAMPLE), "1", TWO_EPOCHS, "3d_fullres", "0", "-device", "cpu"]
    fold = _fold(user_trainers_env, TWO_EPOCHS)
    with open(tmp_path / "first_job.txt", "w") as output:
        batch = subprocess.Popen(job, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_log(fold, "Epoch 1", batch)
            os.kill(batch.pid, signal.SIGUSR1)  # B: the batch shell alone is warned
            assert batch.wait(timeout=600) == 0, (tmp_path / "first_job.txt").read_text()[-3000:]
        finally:
            if batch.poll() is None:
                os.killpg(batch.pid, signal.SIGKILL)
    assert requeued.read_text() == "4242\n" and not (fold / "checkpoint_final.pth").exists()
    assert load_weights_only(fold / "checkpoint_latest.pth")["current_epoch"] == 1
    assert re.search(r"SIGUSR1: stopping after iteration \d of 2 of epoch 1\.", "".join(_logs(fold).values()))

    second = run(job, env)  # the requeued job
    assert requeued.read_text() == "4242\n" and "requeueing" not in second.stdout
    assert load_weights_only(fold / "checkpoint_final.pth")["current_epoch"] == 2
