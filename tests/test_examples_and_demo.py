"""Every example's --smoke mode, and `nnunet-suprem demo --smoke`, run for real (stock nnU-Net commands, CPU).

The examples share one work folder, in the order a user would run them: (c) and (e) use the model (a) pre-trains.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest

from conftest import WORKERS, cli, run
from nnunet_suprem.nnunet_env import trainers_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("examples")


def example_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("nnUNet_extTrainer", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env.update(WORKDIR=str(workdir), nnUNet_def_n_proc=WORKERS,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


def run_example(name: str, workdir: Path) -> str:
    result = run(["bash", str(EXAMPLES / name), "--smoke"], example_env(workdir), timeout=900)
    return result.stdout


def test_every_example_has_a_header_and_a_smoke_mode():
    scripts = sorted(p for p in EXAMPLES.glob("*.sh") if p.name != "common.sh")
    assert len(scripts) == 5
    for script in scripts:
        header = script.read_text().split("\n\n")[0]
        for part in ("# Shows:", "# Needs:", "# Usage:", "--smoke"):
            assert part in header, f"{script.name}: header lacks {part!r}"
        assert script.name in (EXAMPLES / "README.md").read_text(), script.name


def test_real_mode_asks_for_its_inputs(workdir):
    env = example_env(workdir)
    env.update(nnUNet_raw=str(workdir), nnUNet_preprocessed=str(workdir), nnUNet_results=str(workdir))
    result = subprocess.run(["bash", str(EXAMPLES / "abdomenatlas_pretraining.sh")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "usage:" in result.stderr and "--smoke" in result.stderr


@pytest.mark.e2e
def test_a_abdomenatlas_pretraining(workdir):
    out = run_example("abdomenatlas_pretraining.sh", workdir)
    # stock nnUNetv2_train found our trainer through nnUNet_extTrainer, exported as docs/setup.md says
    assert f"Using trainer 'SuPreMTrainer_smoke' from: {trainers_dir()}" in out
    raw = json.loads((workdir / "nnUNet_raw" / "Dataset500_AbdomenAtlas1_1" / "dataset.json").read_text())
    assert raw["partial_labels"]["groups"]  # the hospitals' missing masks became the manifest
    model = workdir / "nnUNet_results" / "Dataset500_AbdomenAtlas1_1" / "SuPreMTrainer_smoke__nnUNetPlans_suprem__3d_fullres"
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
    plans = json.loads((model / "plans.json").read_text())
    assert plans["foreground_intensity_properties_per_channel"]["0"]["percentile_99_5"] == 250.0


@pytest.mark.e2e
def test_b_merge_partial_label_datasets(workdir):
    out = run_example("merge_partial_label_datasets.sh", workdir)
    assert "arota" in out  # the AMOS-like stand-in really names the aorta as AMOS does
    merged = json.loads((workdir / "nnUNet_raw" / "Dataset510_PartialLabelUnion" / "dataset.json").read_text())
    assert {"aorta", "kidney_right", "postcava", "gall_bladder", "spleen"} <= set(merged["labels"])
    groups = merged["partial_labels"]["groups"]
    annotated = sorted((sorted(g["annotated"]) for g in groups.values()), key=len)
    assert annotated[0] == ["spleen"] and len(annotated[1]) == 9 and "bladder" not in annotated[1]
    assert len(groups) == 2  # the AMOS-like cases annotate every merged class: no group needed
    assert not (workdir / "nnUNet_raw" / "Dataset510_PartialLabelUnion" / "imagesTr").exists()  # referenced
    preprocessed = workdir / "nnUNet_preprocessed" / "Dataset510_PartialLabelUnion"
    assert json.loads((preprocessed / "dataset.json").read_text())["partial_labels"] == merged["partial_labels"]
    assert len(list((preprocessed / "nnUNetPlans_3d_fullres").glob("*_seg.b2nd"))) == 6
    model = workdir / "nnUNet_results" / "Dataset510_PartialLabelUnion" / "SuPreMTrainer_smoke__nnUNetPlans__3d_fullres"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()


@pytest.mark.e2e
def test_c_totalsegmentator_finetune_from_the_pretrained_model(workdir):
    run_example("totalsegmentator_muscles_finetune.sh", workdir)
    name = "Dataset520_TotalSegmentator_organs"
    model = workdir / "nnUNet_results" / name / "SuPreMFinetuneTrainer_smoke__nnUNetPlans_transfer__3d_fullres"
    log = next((model / "fold_all").glob("training_log_*.txt")).read_text()
    assert "Pre-trained weights: " in log and "100.0% of the encoder loaded" in log
    evaluation = workdir / "nnUNet_results" / name / "test_predictions" / "evaluation"
    assert {p.name for p in evaluation.iterdir()} == {"per_case.csv", "per_class.csv", "summary.json",
                                                      "dice_boxplot.png"}
    summary = json.loads((evaluation / "summary.json").read_text())
    assert set(summary["mean"]) == {"spleen", "kidney_right", "kidney_left", "liver", "stomach"}
    assert len(summary["metric_per_case"]) == 3  # meta.csv's test cases


@pytest.mark.e2e
def test_d_released_suprem_unet(workdir):
    out = run_example("released_suprem_unet.sh", workdir)
    assert "100.0% of the encoder loaded" in out
    name = "Dataset530_SuPreMTarget"
    model = workdir / "nnUNet_results" / name / "SuPreMFinetuneTrainer_smoke__nnUNetPlans_suprem_unet__3d_fullres"
    log = next((model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "nnunet_suprem.architectures.suprem_unet3d.SuPreMUNet3D has no deep supervision" in log
    assert "Weight transfer:" in log and "100.0% of the encoder loaded" in log
    assert "  loaded      down_tr64.ops.0.conv1.weight" in log and "  loaded      up_tr64.ops.1.bn1.running_var" in log
    # predictions come back on each test image's own grid and orientation
    images = sorted((workdir / "nnUNet_raw" / name / "imagesTs").glob("*_0000.nii.gz"))
    predictions = workdir / "nnUNet_results" / name / "test_predictions_suprem_unet"
    assert len(images) == 3 and len(list(predictions.glob("*.nii.gz"))) == 3
    for image in images:
        prediction = nibabel.load(predictions / image.name.replace("_0000.nii.gz", ".nii.gz"))
        original = nibabel.load(image)
        assert prediction.shape == original.shape and np.allclose(prediction.affine, original.affine, atol=1e-4)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3, 4}


@pytest.mark.e2e
def test_e_direct_inference_and_table3_evaluation(workdir):
    run_example("direct_inference_evaluation.sh", workdir)
    summary = json.loads((workdir / "direct_inference" / "evaluation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"spleen", "kidney_right", "kidney_left", "gall_bladder", "liver", "stomach",
                                    "aorta", "postcava", "pancreas"}
    assert {"Dice", "NSD"} <= set(summary["foreground_mean"])


def test_demo_smoke_runs_the_story_and_resumes(demo_smoke, tmp_path):
    out, env, first = demo_smoke["out"], demo_smoke["env"], demo_smoke["stdout"]
    for step in ("nnunet-suprem merge", "nnunet-suprem plan --preset cpu", "-tr SuPreMTrainer_smoke -p nnUNetPlans_cpu",
                 "nnunet-suprem plan-transfer", "-pretrained_weights", "nnUNetv2_predict", "nnunet-suprem evaluate"):
        assert step in first, step
    assert "| 5 | mean, all |" in first and "| 5 | mean, novel |" in first
    assert first.count("| `nnUNetv2_train ") == 3 and "| total of the steps |" in first  # where the time went
    assert (out / "learning_curves.png").stat().st_size > 0
    pretrained = out / "nnUNet_results" / "Dataset610_DemoPretrain" / "SuPreMTrainer_smoke__nnUNetPlans_cpu__3d_fullres"
    features = json.loads((pretrained / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
    assert features["arch_kwargs"]["features_per_stage"][:3] == [8, 16, 32]  # the cpu preset's narrow U-Net
    study = out / "fewshot"
    table = (study / "summary.md").read_text()
    assert "| 5 | spleen | novel |" in table and "| 5 | liver | seen |" in table  # from the checkpoint's classes
    assert (study / "fewshot.csv").is_file() and (study / "fewshot.png").is_file()
    for arm in ("SuPreMFinetuneTrainer_smoke", "SuPreMTrainer_smoke"):
        assert (study / "nnUNet_results" / "Dataset620_DemoNovel" / f"{arm}__nnUNetPlans_transfer__3d_fullres"
                / "fold_0" / "checkpoint_final.pth").is_file()

    again = run(cli("demo", "--smoke", "--out", str(out), "-device", "cpu"), env).stdout
    assert again.count("done before") == 14 and "| 5 | mean, all |" in again
    refused = subprocess.run(cli("demo", "--fast", "--out", str(out)), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "other settings" in refused.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("keep")
    refused = subprocess.run(cli("demo", "--smoke", "--out", str(tmp_path / "mine")), env=env, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "not a demo folder" in refused.stderr
    assert (tmp_path / "mine" / "data.txt").read_text() == "keep"


@pytest.mark.e2e
def test_gpu_check_cpu_smoke_runs_every_part_and_summarizes(demo_smoke, tmp_path):
    """benchmarks/gpu_check.sh --cpu --smoke: the demo (resumed from the fixture's run, which it only does with the
    same budget and folds), cuda_step.py and a 2-process gloo torchrun on the demo's pre-training dataset; a summary
    with epoch times, Dice rows and cuda_step's table; the logs in $OUT."""
    logs = tmp_path / "out"
    logs.mkdir()
    env = {**demo_smoke["env"], "OUT": str(logs), "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = run(["bash", str(EXAMPLES.parent / "benchmarks" / "gpu_check.sh"), "--cpu", "--smoke", "--work",
                  str(demo_smoke["out"].parent)], env, timeout=900)
    summary = result.stdout[result.stdout.index("\nGPU check"):]
    for line in ("demo --smoke: PASS", "cuda_step: PASS", "torchrun 2 processes: PASS", "| 5 | mean, novel |",
                 "SuPreMTrainer_smoke fold_0: 2 epochs, median epoch", "SuPreMFinetuneTrainer_smoke fold_0: 2 epochs",
                 "SuPreMTrainer_smoke fold_all: 2 epochs", "SuPreMTrainer / nnUNet"):
        assert line in summary, line
    assert summary.strip() == (logs / "summary.txt").read_text().strip()
    assert "done before" in (logs / "demo.log").read_text()  # the fixture's demo, resumed
    assert "The world size is 2" in (logs / "torchrun.log").read_text()
    assert "| 5 | mean, all |" in (logs / "demo_summary.md").read_text()
    assert (logs / "cuda_step.log").is_file()


def test_an_interrupted_training_resumes_with_nnunets_continue_flag(tmp_path):
    from nnunet_suprem.steps import Step, resumable, step_marker

    step = Step("fine-tune", ["nnUNetv2_train", "620", "3d_fullres", "0", "-pretrained_weights", "w.pth"], "train",
                results_folder=tmp_path / "fold_0")
    marker = step_marker(step)
    assert resumable(step, None, marker) == step.command  # nothing trained yet: the command as printed
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "checkpoint_latest.pth").write_bytes(b"")
    # started with this command: the weights are in the checkpoint
    assert resumable(step, marker, marker) == ["nnUNetv2_train", "620", "3d_fullres", "0", "--c"]


def test_a_step_runs_again_when_an_input_changed_or_an_output_is_missing(tmp_path):
    from nnunet_suprem.steps import Step, is_done, run_steps, step_times, time_table

    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a")
    step = Step("copy", ["cp", str(source), str(output)], "copy", inputs=(source,), outputs=(output,))
    run_steps([step], tmp_path, dict(os.environ), "cpu")
    assert output.read_text() == "a" and is_done(step, tmp_path / ".steps_done")
    (title, command, seconds), = step_times(tmp_path)  # what the demo's table of times shows
    assert (title, command) == ("copy", f"cp {source}") and 0 <= seconds < 60
    assert f"| copy | `cp {source}` | {seconds:.0f} | 100 % |" in time_table(step_times(tmp_path))
    output.unlink()
    assert not is_done(step, tmp_path / ".steps_done")
    run_steps([step], tmp_path, dict(os.environ), "cpu")
    source.write_text("bb")
    assert not is_done(step, tmp_path / ".steps_done")
