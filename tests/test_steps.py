"""The step machinery of the demo and few-shot studies is honest about what is done: outputs deleted after a step
finished redo it, a training restarts when its inputs changed, one process at a time uses a folder (real processes
holding the lock), and a failed first run claims nothing. Cheap commands, no training."""
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from nnunet_suprem.steps import (DONE_FOLDER, Step, StepFailed, claimed_out, is_done, resumable, run_steps,
                                 step_marker)

WRITE = "import pathlib, sys\nfor p in map(pathlib.Path, sys.argv[1:]):\n" \
        "    p.parent.mkdir(parents=True, exist_ok=True)\n    p.write_text('x')"


def writing(step: Step) -> Step:
    """``step`` with a command that only writes its outputs (a file in each output folder)."""
    files = [str(p / "made" if not p.suffix else p) for p in step.outputs]
    return replace(step, command=[sys.executable, "-c", WRITE, *files])


def test_a_demo_step_whose_outputs_were_deleted_is_redone(tmp_path):
    from nnunet_suprem.demo import SMOKE, Demo

    steps = [writing(step) for step in Demo(tmp_path, SMOKE, "cpu", 1).steps()]
    assert all(step.outputs for step in steps)  # every step says what it writes
    run_steps(steps, tmp_path, dict(os.environ), "cpu")
    done = tmp_path / DONE_FOLDER
    assert all(is_done(step, done) for step in steps)
    merge, plan = (next(step for step in steps if word in step.title) for word in ("merge", "plan and preprocess"))
    (merge.outputs[0] / "made").unlink()  # one file the merge wrote, its folder still there
    assert [step.name for step in steps if not is_done(step, done)] == [merge.name, plan.name]  # plan reads it
    run_steps(steps, tmp_path, dict(os.environ), "cpu")
    assert all(is_done(step, done) for step in steps)


def test_a_step_is_redone_when_a_file_under_an_input_folder_changes(tmp_path):
    folder, output = tmp_path / "labels", tmp_path / "out.txt"
    (folder / "case").mkdir(parents=True)
    (folder / "case" / "liver.nii.gz").write_text("old")
    step = writing(Step("score", [], "score", inputs=(folder,), outputs=(output,)))
    run_steps([step], tmp_path, dict(os.environ), "cpu")
    assert is_done(step, tmp_path / DONE_FOLDER)
    (folder / "case" / "liver.nii.gz").write_text("corrected")
    assert not is_done(step, tmp_path / DONE_FOLDER)


def test_a_training_continues_only_from_the_inputs_it_started_with(tmp_path):
    checkpoint = tmp_path / "pretrained.pth"
    checkpoint.write_text("a")
    fold = tmp_path / "fold_0"
    step = Step("fine-tune", ["nnUNetv2_train", "620", "3d_fullres", "0", "-pretrained_weights", str(checkpoint)],
                "train", inputs=(checkpoint,), results_folder=fold)
    fold.mkdir()
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    started = step_marker(step)  # the marker run_steps wrote when the training started
    assert resumable(step, started, step_marker(step))[-1] == "--c"
    checkpoint.write_text("bb")  # another pre-trained checkpoint: the fold's checkpoint came from the old one
    assert resumable(step, started, step_marker(step)) == step.command and not fold.exists()


def hold(out: Path, settings: dict) -> subprocess.Popen:
    """Another process holding ``out`` (as a running demo would) until its stdin closes."""
    code = ("import sys\nfrom pathlib import Path\nfrom nnunet_suprem.steps import claimed_out\n"
            f"with claimed_out(Path({str(out)!r}), {settings!r}, 'demo.json', 'demo'):\n"
            "    print('held', flush=True)\n    sys.stdin.read()")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def test_one_process_at_a_time_uses_a_folder(tmp_path, capsys):
    from dataclasses import asdict

    from nnunet_suprem.cli import main
    from nnunet_suprem.demo import SMOKE

    out = tmp_path / "demo"
    holder = hold(out, {"budget": asdict(SMOKE), "folds": 1})
    try:
        assert main(["demo", "--smoke", "--out", str(out), "-device", "cpu"]) == 2
        error = capsys.readouterr().err.strip()
        assert f"{out} is in use by PID {holder.pid} on {socket.gethostname()} (" in error, error
        assert "wait until it ends, or choose another --out" in error and len(error.splitlines()) == 1
        assert not (out / DONE_FOLDER).exists()  # the refused run wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with claimed_out(out, {"budget": asdict(SMOKE), "folds": 1}, "demo.json", "demo"):  # released when it ended
        pass


def test_a_killed_holder_releases_the_folder(tmp_path):
    out = tmp_path / "study"
    holder = hold(out, {"a": 1})
    holder.kill()
    holder.wait(timeout=60)
    with claimed_out(out, {"a": 1}, "demo.json", "demo"):
        pass


def test_a_failed_first_run_claims_nothing(tmp_path):
    out = tmp_path / "study"
    failing = Step("fails", [sys.executable, "-c", "raise SystemExit(3)"], "fails")
    with claimed_out(out, {"seed": 0}, "demo.json", "demo"), pytest.raises(StepFailed):
        run_steps([failing], out, dict(os.environ), "cpu")
    with claimed_out(out, {"seed": 1}, "demo.json", "demo"):  # other settings: accepted, nothing was done
        run_steps([writing(Step("works", [], "works", outputs=(out / "result.txt",)))], out, dict(os.environ), "cpu")
    assert json.loads((out / "demo.json").read_text()) == {"seed": 1}
    with pytest.raises(ValueError, match=r"holds a demo run with other settings \(seed: 1 there, 2 here\)"):
        with claimed_out(out, {"seed": 2}, "demo.json", "demo"):
            pass


def test_a_failed_training_that_left_a_checkpoint_keeps_the_folder(tmp_path):
    out = tmp_path / "study"
    fold = out / "nnUNet_results" / "fold_0"
    crashes = Step("train", [sys.executable, "-c", WRITE + "\nraise SystemExit(1)", str(fold / "checkpoint_latest.pth")],
                   "train", results_folder=fold)
    with claimed_out(out, {"seed": 0}, "demo.json", "demo"), pytest.raises(StepFailed):
        run_steps([crashes], out, dict(os.environ), "cpu")
    with pytest.raises(ValueError, match="other settings"):  # resumable work is kept: the same command continues
        with claimed_out(out, {"seed": 1}, "demo.json", "demo"):
            pass
