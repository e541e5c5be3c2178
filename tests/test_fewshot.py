"""nnunet-suprem fewshot: the study end to end through the real CLI (stock nnU-Net on 16^3 phantoms, CPU), resuming,
refusing other settings; the long table, summary arithmetic and seen/novel groups on hand-made numbers; the interval
over training draws on simulated studies of known truth."""
import csv
import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli, run, subprocess_env
from scipy import stats

from nnunet_suprem.evaluate.stats import TEST_CASES_ONLY, summarize_draws, t_interval
from nnunet_suprem.fewshot.curves import (class_curves, first_epoch_means, group_curve, plot_learning_curves,
                                          read_class_curves)
from nnunet_suprem.fewshot.report import (ARMS, DIFFERENCE, LONG_COLUMNS, class_groups, evaluation_rows,
                                          interval_caption, learned_overview, plot_study, summarize_study,
                                          summary_markdown, unpaired_note, write_long_table, write_summary_csv)
from nnunet_suprem.planning.split import few_shot_splits

# the checkpoint's classes: a side spelled out twice, another case, and a class the target lacks
CHECKPOINT_LABELS = {"background": 0, "Liver": 1, "left lung": 2, "kidney (right)": 3, "celiac_trunk": 4}
DATASET_ID, DATASET, PLANS = "620", "Dataset620_DemoNovel", "nnUNetPlans_transfer"


@pytest.fixture(scope="module")
def target(demo_smoke, tmp_path_factory) -> dict:
    """The smoke demo's target (16^3 phantoms, 6 training and 3 test cases, planned onto the pre-trained network),
    read only; a checkpoint for its network with other labels."""
    from nnunet_suprem.transfer.apply import build_network_from_plans

    out = demo_smoke["out"]
    env = subprocess_env({name: str(out / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    preprocessed = out / "nnUNet_preprocessed" / DATASET
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    dataset_json = {**json.loads((preprocessed / "dataset.json").read_text()), "labels": CHECKPOINT_LABELS}
    network = build_network_from_plans(plans, dataset_json, "3d_fullres")
    checkpoint = tmp_path_factory.mktemp("target") / "pretrained_other_labels.pth"
    torch.save({"network_weights": network.state_dict(), "init_args": {"dataset_json": dataset_json}}, checkpoint)
    return {"env": env, "preprocessed": preprocessed, "checkpoint": checkpoint}


def fewshot_args(target: dict, out: Path, *extra: str) -> list[str]:
    return cli("fewshot", "-d", DATASET_ID, "-p", PLANS, "--pretrained", str(target["checkpoint"]),
               "--train-cases", "5", "--pretrained-trainer", "SuPreMFinetuneTrainer_smoke",
               "--scratch-trainer", "SuPreMTrainer_smoke", "--out", str(out), "-device", "cpu", "-np", "1", *extra)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(target, tmp_path_factory) -> tuple[Path, str]:
    """A finished study on the target (its folder, and what the command printed)."""
    out = tmp_path_factory.mktemp("study") / "study"
    return out, run(fewshot_args(target, out), target["env"], timeout=900).stdout


@pytest.mark.e2e
def test_fewshot_runs_stock_commands_resumes_and_refuses_other_settings(target, study, tmp_path):
    (out, first), env = study, target["env"]
    dataset = DATASET
    assert (f"$ nnUNetv2_train {dataset} 3d_fullres 0 -tr SuPreMFinetuneTrainer_smoke -p {PLANS} -device cpu "
            f"-pretrained_weights {target['checkpoint']}") in first
    assert f"$ nnUNetv2_train {dataset} 3d_fullres 0 -tr SuPreMTrainer_smoke -p {PLANS} -device cpu\n" in first
    assert "$ nnUNetv2_predict -i " in first and "$ nnunet-suprem evaluate " in first
    # the user's folders are only read: no split written there, no model
    assert not (target["preprocessed"] / "splits_final.json").exists()
    assert not (Path(env["nnUNet_results"]) / dataset).exists()
    own = out / "nnUNet_preprocessed" / dataset
    assert (own / f"{PLANS}_3d_fullres").is_symlink() and (own / "dataset.json").is_symlink()
    cases = sorted(p.name[:-len(".nii.gz")] for p in (target["preprocessed"] / "gt_segmentations").iterdir())
    splits = json.loads((own / "splits_final.json").read_text())
    assert splits == few_shot_splits(cases, 5)  # one fold per (N, draw)

    rows = read_csv(out / "fewshot.csv")
    assert tuple(rows[0]) == LONG_COLUMNS
    classes = [c for c in json.loads((target["preprocessed"] / "dataset.json").read_text())["labels"]
               if c != "background"]
    assert len(rows) == 2 * 3 * len(classes)  # arms x test cases x classes
    group = {row["class"]: row["group"] for row in rows}
    assert {c for c, g in group.items() if g == "seen"} == {"liver", "lung_left", "kidney_right"}
    assert group["spleen"] == group["kidney_left"] == group["lung_right"] == "novel"
    assert all(0 <= float(row["Dice"]) <= 1 for row in rows if row["Dice"] != "nan")
    assert any(row["NSD"] not in ("", "nan") for row in rows)
    summary = read_csv(out / "summary.csv")
    assert {(r["metric"], r["group"], r["arm"]) for r in summary if r["class"] == ""} == {
        (m, g, a) for m in ("Dice", "NSD") for g in ("seen", "novel", "all")
        for a in ("pretrained", "scratch", "pretrained-scratch")}
    text = (out / "summary.md").read_text()
    assert "| 5 | liver | seen |" in text and "| 5 | mean, novel |" in text and text in first
    assert run(cli("fewshot-report", str(out)), env).stdout.startswith(text)  # no INTERIM: every run is evaluated
    assert (out / "fewshot.png").stat().st_size > 0
    # nnU-Net's per-class pseudo Dice of a real run, named by the target's labels: what the demo's curves plot
    curves = read_class_curves(out / "nnUNet_results" / dataset / f"SuPreMTrainer_smoke__{PLANS}__3d_fullres"
                               / "fold_0")
    assert list(curves) == classes and {len(c) for c in curves.values()} == {2}  # 2 epochs of the smoke trainer

    again = run(fewshot_args(target, out), env).stdout
    assert again.count("done before") == 6 and "$ " not in again
    test_case = sorted((out / "predictions" / "scratch" / "N5_draw0").glob("*.nii.gz"))[0]
    test_case.unlink()
    redo = run(fewshot_args(target, out), env).stdout
    assert redo.count("done before") == 4  # the prediction, then its evaluation
    assert "$ nnUNetv2_predict" in redo and "-tr SuPreMTrainer_smoke -f 0 " in redo and test_case.is_file()
    assert "$ nnunet-suprem evaluate" in redo

    refused = subprocess.run(fewshot_args(target, out, "--draws", "2"), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "other settings (draws: 1 there, 2 here)" in refused.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.txt").write_text("keep")
    refused = subprocess.run(fewshot_args(target, mine), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "not a fewshot folder" in refused.stderr


@pytest.mark.e2e
def test_a_study_reuses_the_scratch_arm_of_a_finished_one(target, study, tmp_path):
    """Another recipe against the same baseline: only the pre-trained arm trains, the report pairs it with the
    finished study's scratch arm; a study with other settings, or an unfinished one, is refused."""
    (baseline, _), env = study, target["env"]
    out = tmp_path / "recipe"
    printed = run(fewshot_args(target, out, "--scratch-from", str(baseline)), env, timeout=900).stdout
    assert "-tr SuPreMFinetuneTrainer_smoke" in printed and "-tr SuPreMTrainer_smoke" not in printed
    assert printed.count("$ ") == 3  # train, predict, evaluate: the pre-trained arm only
    assert not (out / "nnUNet_results" / DATASET / f"SuPreMTrainer_smoke__{PLANS}__3d_fullres").exists()
    assert f"(scratch arm of {baseline})" in (out / "summary.md").read_text()
    rows = read_csv(out / "fewshot.csv")
    scratch = [row for row in rows if row["arm"] == "scratch"]
    assert scratch and scratch == [row for row in read_csv(baseline / "fewshot.csv") if row["arm"] == "scratch"]
    assert len(rows) == 2 * len(scratch)  # and its own pre-trained arm, scored on the same cases and classes
    assert "done before" in run(fewshot_args(target, out, "--scratch-from", str(baseline)), env).stdout

    refused = subprocess.run(fewshot_args(target, tmp_path / "other", "--scratch-from", str(baseline), "--seed", "1"),
                             env=env, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert "other settings (seed: 0 there, 1 here): its scratch arm cannot be reused" in refused.stderr
    refused = subprocess.run(fewshot_args(target, tmp_path / "chain", "--scratch-from", str(out)), env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and f"reuses the scratch arm of {baseline}" in refused.stderr
    assert not (tmp_path / "other").exists() and not (tmp_path / "chain").exists()


@pytest.mark.e2e
def test_bad_input_is_one_line_naming_the_problem(target, tmp_path):
    env = target["env"]
    training_images = Path(env["nnUNet_raw"]) / DATASET / "imagesTr"
    for extra, message in ((["--train-cases", "5", "6"], "--train-cases must be between 1 and 5"),
                           (["--scratch-trainer", "a/x"], "trainer 'a/x' contains a path separator"),
                           (["--test-images", str(tmp_path / "none")], "test folder not found (--test-images)"),
                           (["--test-images", str(training_images)], "6 test case(s) are training cases of ")):
        args = fewshot_args(target, tmp_path / "out", *extra)
        if extra[0] == "--train-cases":  # replaces the sizes
            index = args.index("--train-cases")
            del args[index:index + 2]
        result = subprocess.run(args, env=env, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_one_fold_per_size_and_draw_in_the_studys_own_folder(tmp_path, monkeypatch):
    from nnunet_suprem.fewshot.study import FewShot, Study

    source = tmp_path / "nnUNet_preprocessed" / "Dataset005_Few"
    (source / "gt_segmentations").mkdir(parents=True)
    (source / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    cases = [f"case_{i:02d}" for i in range(12)]
    for case in cases:
        (source / "gt_segmentations" / f"{case}.nii.gz").touch()
    (source / "splits_final.json").write_text("[]")  # the user's own split stays theirs
    images = tmp_path / "imagesTs"
    images.mkdir()
    (images / "test_001_0000.nii.gz").touch()
    study = Study(str(source), "plans", "3d_fullres", "w.pth", (5, 10), 2, 3, "A", "B", str(images), "labels", None)
    fewshot = FewShot(tmp_path / "out", study, "cpu", 1)
    assert fewshot.runs() == [(5, 0, 0), (5, 1, 1), (10, 0, 2), (10, 1, 3)]  # (N, draw, fold)
    assert fewshot.prepare(cases) == ["test_001.nii.gz"]
    own = tmp_path / "out" / "nnUNet_preprocessed" / "Dataset005_Few"
    splits = json.loads((own / "splits_final.json").read_text())
    assert splits == few_shot_splits(cases, 5, 3, 2) + few_shot_splits(cases, 10, 3, 2)
    assert (own / "gt_segmentations").resolve() == (source / "gt_segmentations").resolve()
    assert json.loads((source / "splits_final.json").read_text()) == []
    steps = fewshot.steps(["test_001.nii.gz"])
    assert [s.name for s in steps[:6]] == ["train_pretrained_N5_draw0", "train_scratch_N5_draw0",
                                           "predict_pretrained_N5_draw0", "predict_scratch_N5_draw0",
                                           "evaluate_pretrained_N5_draw0", "evaluate_scratch_N5_draw0"]
    assert steps[-6].command[:4] == ["nnUNetv2_train", "Dataset005_Few", "3d_fullres", "3"]
    assert "--no-nsd" in steps[-1].command
    monkeypatch.delenv("nnUNet_def_n_proc", raising=False)  # nnU-Net's default would be 8 export workers
    assert fewshot.environment()["nnUNet_def_n_proc"] == "1"
    monkeypatch.setenv("nnUNet_def_n_proc", "3")  # the user's choice stays
    assert fewshot.environment()["nnUNet_def_n_proc"] == "3"


def test_a_study_refuses_test_cases_that_are_training_cases(tmp_path):
    from nnunet_suprem.fewshot.study import Study

    source = tmp_path / "Dataset005_Few"
    source.mkdir()
    (source / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    images = tmp_path / "imagesTs"
    images.mkdir()
    for case in ("case_07", "test_001", "case_03"):
        (images / f"{case}_0000.nii.gz").touch()
    study = Study(str(source), "plans", "3d_fullres", "w.pth", (5,), 1, 0, "A", "B", str(images), "labels", None)
    cases = [f"case_{i:02d}" for i in range(12)]
    with pytest.raises(ValueError, match=r"imagesTs: 2 test case\(s\) are training cases of .*Dataset005_Few "
                                         r"\(case_03, case_07\): test on held-out cases only \(--test-images\)"):
        study.check_held_out(cases)
    study.check_held_out([c for c in cases if c not in ("case_03", "case_07")])


def test_a_reused_scratch_arm_needs_the_same_settings_and_a_finished_study(tmp_path):
    from dataclasses import asdict, replace

    from nnunet_suprem.fewshot.study import SETTINGS_FILE, FewShot, Study, check_scratch_source
    from nnunet_suprem.steps import prepare_out

    cases = [f"case_{i}" for i in range(8)]
    baseline = Study("pre/Dataset005_Few", "plans", "3d_fullres", "a.pth", (5,), 2, 0, "A", "B", "imagesTs",
                     "labelsTs", None)
    prepare_out(tmp_path / "base", {**asdict(baseline), "training_cases": cases}, SETTINGS_FILE, "fewshot")
    recipe = replace(baseline, pretrained_trainer="C", checkpoint="b.pth", scratch_from=str(tmp_path / "base"))
    check_scratch_source(recipe, cases)  # another recipe and checkpoint against the same baseline
    for change, message in (({"draws": 3}, "draws: 2 there, 3 here"), ({"scratch_trainer": "D"}, "scratch_trainer"),
                            ({"tolerance": 2.0}, "tolerance: None there, 2.0 here")):
        with pytest.raises(ValueError, match=f"other settings \\({message}"):
            check_scratch_source(replace(recipe, **change), cases)
    with pytest.raises(ValueError, match="training_cases"):
        check_scratch_source(recipe, cases[:-1])
    with pytest.raises(FileNotFoundError, match="not a fewshot folder"):
        check_scratch_source(replace(recipe, scratch_from=str(tmp_path)), cases)

    fewshot = FewShot(tmp_path / "recipe", recipe, "cpu", 1)
    assert fewshot.arms == ("pretrained",)
    assert fewshot.evaluation("scratch", 5, 1) == tmp_path / "base" / "evaluation" / "scratch" / "N5_draw1"
    assert fewshot.model_folder("pretrained").parents[2] == tmp_path / "recipe"
    for check in (fewshot.check_reused_arms, fewshot.report):  # the report waits for the reused arm
        with pytest.raises(FileNotFoundError, match="N5_draw0/summary.json not found: finish the study in .*, then "
                                                    "run this command again"):
            check()
    for draw in range(2):
        (fewshot.evaluation("scratch", 5, draw)).mkdir(parents=True)
        (fewshot.evaluation("scratch", 5, draw) / "summary.json").write_text("{}")
    fewshot.check_reused_arms()



def _hand_made_study(tmp_path, draws: int):
    """(folder, Study, FewShot) of a study prepared in ``tmp_path / "study"`` with a checkpoint that names
    CHECKPOINT_LABELS; nothing run, so tests write its evaluations by hand."""
    from dataclasses import asdict

    from nnunet_suprem.fewshot.study import SETTINGS_FILE, FewShot, Study
    from nnunet_suprem.steps import prepare_out

    checkpoint = tmp_path / "pretrained.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "init_args": {"dataset_json": {"labels": CHECKPOINT_LABELS}}},
               checkpoint)
    study = Study("pre/Dataset005_Few", "plans", "3d_fullres", str(checkpoint), (5,), draws, 0, "A", "B", "imagesTs",
                  "labelsTs", None)
    out = tmp_path / "study"
    prepare_out(out, {**asdict(study), "training_cases": ["c"]}, SETTINGS_FILE, "fewshot")
    return out, study, FewShot(out, study, "cpu", 1)


def test_fewshot_report_writes_interim_numbers_from_the_evaluated_runs(tmp_path, capsys):
    """A running study's interim report pairs only the (N, draw) runs both arms evaluated; once all are, it is the
    report the study itself writes at its end."""
    from nnunet_suprem.cli import main

    out, study, fewshot = _hand_made_study(tmp_path, draws=2)

    def evaluated(arm: str, draw: int, dice: float) -> None:
        folder = fewshot.evaluation(arm, 5, draw)
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(evaluation({"a": {"liver": dice, "spleen": dice / 2}})))

    assert main(["fewshot-report", str(tmp_path)]) == 2
    assert f"fewshot-report: error: {tmp_path}: not a fewshot folder" in capsys.readouterr().err
    evaluated("pretrained", 0, 0.9)
    assert main(["fewshot-report", str(out)]) == 2
    assert f"error: {out}: no (N, draw) has been evaluated by both arms yet" in capsys.readouterr().err
    evaluated("scratch", 0, 0.5)
    evaluated("pretrained", 1, 0.7)  # draw 1's scratch arm is still training
    assert main(["fewshot-report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("INTERIM, 1 of 2 runs evaluated (N=5 draw 0). Dataset005_Few: A from pretrained.pth")
    assert {row["draw"] for row in read_csv(out / "fewshot.csv")} == {"0"}
    assert (f"| 5 | liver | seen | 0.900 [0.900, 0.900] | 0.500 [0.500, 0.500] | 0.400 [0.400, 0.400] | +0.400 | "
            f"{TEST_CASES_ONLY} |") in printed  # one draw evaluated
    assert (out / "summary.md").read_text().strip() in printed

    evaluated("scratch", 1, 0.3)
    main(["fewshot-report", str(out)])
    final = (out / "summary.md").read_text()
    low, high = t_interval([0.4, 0.4])
    assert not final.startswith("INTERIM") and "Student t-interval over the draw means" in final
    assert "| 5 | liver | seen | 0.800 [" in final
    assert f"| 0.400 [{low:.3f}, {high:.3f}] | +0.400, +0.400 | Student t over 2 draw means |" in final
    assert fewshot.report() + "\n" == final and {row["draw"] for row in read_csv(out / "fewshot.csv")} == {"0", "1"}


def test_a_studys_command_line_and_settings_file_give_back_the_study(tmp_path, monkeypatch):
    """benchmarks/transfer.py --ablate runs the demo's study again from its settings file, as a command line."""
    from dataclasses import asdict, replace

    from nnunet_suprem.cli import build_parser
    from nnunet_suprem.fewshot.study import SETTINGS_FILE, Study, read_study, study_command, study_from_args
    from nnunet_suprem.steps import prepare_out

    preprocessed = tmp_path / "nnUNet_preprocessed" / "Dataset005_Few"
    preprocessed.mkdir(parents=True)
    for variable in ("nnUNet_raw", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))
    demo = Study(str(preprocessed), "plans", "3d_fullres", str(tmp_path / "a.pth"), (5, 10), 2, 3, "A", "B",
                 str(tmp_path / "imagesTs"), str(tmp_path / "labelsTs"), None)
    prepare_out(tmp_path / "demo", {**asdict(demo), "training_cases": ["c"]}, SETTINGS_FILE, "fewshot")
    assert read_study(tmp_path / "demo") == demo  # tolerance None is not recorded, and comes back
    for study in (demo, replace(demo, pretrained_trainer="C", tolerance=2.0, scratch_from=str(tmp_path / "demo"))):
        command, env = study_command(study, tmp_path / "out", 2)
        assert command[:4] == ["nnunet-suprem", "fewshot", "-d", "5"]
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        args = build_parser().parse_args(command[1:])
        assert study_from_args(args) == study and args.out == str(tmp_path / "out") and args.num_processes == 2


def test_seen_and_novel_follow_the_checkpoints_class_names_and_synonyms():
    known = ["Liver", "inferior_vena_cava", "kidney (right)"]
    assert class_groups(["liver", "postcava", "kidney_right", "kidney_left", "spleen"], known) == {
        "liver": "seen", "postcava": "seen", "kidney_right": "seen", "kidney_left": "novel", "spleen": "novel"}
    assert class_groups(["liver"], None) == {"liver": "unknown"}  # a checkpoint without class names


def evaluation(case_scores: dict) -> dict:
    """An evaluate summary.json with Dice per case and class."""
    return {"metric_per_case": [{"case": case, "metrics": {c: {"Dice": v} for c, v in scores.items()}}
                                for case, scores in case_scores.items()]}


def two_draw_rows() -> list[dict]:
    """Long-table rows of a study at N = 5 with two draws, two test cases, a seen and a novel class."""
    groups = {"liver": "seen", "spleen": "novel"}
    nan = float("nan")
    scores = {  # (arm, draw) -> case -> class -> Dice
        ("pretrained", 0): {"a": {"liver": 0.9, "spleen": 0.5}, "b": {"liver": 0.7, "spleen": nan}},
        ("pretrained", 1): {"a": {"liver": 0.8, "spleen": 0.3}, "b": {"liver": 0.6, "spleen": 0.1}},
        ("scratch", 0): {"a": {"liver": 0.5, "spleen": 0.1}, "b": {"liver": 0.5, "spleen": 0.2}},
        ("scratch", 1): {"a": {"liver": 0.4, "spleen": 0.3}, "b": {"liver": 0.2, "spleen": 0.1}},
    }
    return [row for (arm, draw), cases in scores.items()
            for row in evaluation_rows(evaluation(cases), arm, 5, draw, groups)]


def test_learned_overview_marks_the_classes_an_arm_has_not_learned():
    summary = summarize_study(two_draw_rows())
    text = learned_overview(summary)
    assert "| 5 | liver | seen | 0.750 | 0.400 (not learned) | +0.350 |" in text
    assert "| 5 | spleen | novel | 0.350 (not learned) | 0.150 (not learned) | +0.200 |" in text
    assert "N = 5, seen classes learned: pretrained 1 of 1, scratch 0 of 1" in text
    assert "N = 5, novel classes learned: pretrained 0 of 1, scratch 0 of 1" in text
    assert "| 5 | spleen | novel | 0.350 | 0.150 (not learned) |" in learned_overview(summary, threshold=0.3)


def test_long_table_and_summary_arithmetic(tmp_path):
    rows = two_draw_rows()
    write_long_table(tmp_path / "fewshot.csv", rows)
    table = read_csv(tmp_path / "fewshot.csv")
    assert table[0] == {"arm": "pretrained", "N": "5", "draw": "0", "case": "a", "class": "liver", "group": "seen",
                        "Dice": "0.9", "NSD": "nan"}
    assert len(table) == 16

    summary = {(r["group"], r["class"], r["arm"], r["draw"]): r for r in summarize_study(rows)}
    assert {r["metric"] for r in summarize_study(rows)} == {"Dice"}  # NSD was not computed
    liver = summary[("seen", "liver", "pretrained", "")]
    assert liver["n"] == 4 and liver["draws"] == 2 and liver["cases"] == 2
    assert liver["mean"] == pytest.approx((0.9 + 0.7 + 0.8 + 0.6) / 4)
    assert (liver["ci_low"], liver["ci_high"]) == pytest.approx(t_interval([0.8, 0.7]))  # over the draw means
    assert liver["interval"] == "Student t over 2 draw means"
    draw_1 = summary[("seen", "liver", "pretrained", 1)]
    assert draw_1["mean"] == pytest.approx(0.7) and draw_1["draws"] == 1 and draw_1["interval"] == TEST_CASES_ONLY
    # per unit (draw, case): the group mean over its classes scored by both arms
    every = summary[("all", "", "pretrained", "")]
    assert every["mean"] == pytest.approx(np.mean([0.7, 0.7, 0.55, 0.35]))
    spleen_difference = summary[("novel", "spleen", "pretrained-scratch", "")]
    assert spleen_difference["n"] == 3  # paired only where both arms are scored
    assert spleen_difference["mean"] == pytest.approx(np.mean([0.4, 0.0]))  # the mean of the draw means
    assert summary[("novel", "spleen", "scratch", "")]["mean"] == pytest.approx(np.mean([0.1, 0.2]))
    # draw 0, case b: liver only in both arms (the pre-trained arm did not score the spleen there)
    per_draw = [summary[("all", "", "pretrained-scratch", draw)]["mean"] for draw in (0, 1)]
    assert per_draw == pytest.approx([np.mean([0.7 - 0.3, 0.7 - 0.5]), np.mean([0.55 - 0.35, 0.35 - 0.15])])
    assert summary[("all", "", "pretrained-scratch", "")]["mean"] == pytest.approx(np.mean(per_draw))
    for (group, name, arm, draw), row in summary.items():
        if arm == DIFFERENCE:
            assert row["mean"] == pytest.approx(summary[(group, name, "pretrained", draw)]["mean"]
                                                - summary[(group, name, "scratch", draw)]["mean"])
    assert summary[("seen", "", "scratch", "")]["mean"] == summary[("seen", "liver", "scratch", "")]["mean"]

    text = summary_markdown(summarize_study(rows), "title")
    assert "| 5 | liver | seen | 0.750 [" in text and "| 5 | mean, all |  | 0.575 [" in text
    assert "| +0.300, +0.200 | Student t over 2 draw means |" in text  # mean, all: the difference in each draw
    plot_study(summarize_study(rows + [{**row, "N": 10} for row in rows]), tmp_path / "fewshot.png", "title")
    assert (tmp_path / "fewshot.png").stat().st_size > 0


def test_learning_curves_per_class_group(tmp_path):
    """Columns of nnU-Net's per-class pseudo Dice follow the label values, not the dataset.json key order."""
    labels = {"background": 0, "spleen": 3, "liver": 1, "kidney_left": 2}
    checkpoint = {"init_args": {"dataset_json": {"labels": labels}},
                  "logging": {"dice_per_class_or_region": [[0.8, 0.0, 0.1], [0.9, 0.2, float("nan")]]}}
    curves = class_curves(checkpoint)
    assert curves == {"liver": [0.8, 0.9], "kidney_left": [0.0, 0.2], "spleen": [0.1, curves["spleen"][1]]}
    groups = {"liver": "seen", "kidney_left": "novel", "spleen": "novel"}
    np.testing.assert_allclose(group_curve(curves, groups, "novel"), [0.05, 0.2])  # a NaN epoch is left out
    scratch = {"liver": [0.0, 0.3], "kidney_left": [0.0, 0.1], "spleen": [0.0, 0.1]}
    first = first_epoch_means({"pretrained": [curves], "scratch": [scratch, scratch]}, groups)
    assert first == pytest.approx({("pretrained", "seen"): 0.8, ("pretrained", "novel"): 0.05,
                                   ("scratch", "seen"): 0.0, ("scratch", "novel"): 0.0})
    plot_learning_curves({"pretrained": [curves], "scratch": [scratch]}, groups, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no class of group 'seen'"):
        group_curve(scratch, {"liver": "novel"}, "seen")
    with pytest.raises(ValueError, match="region-based"):
        class_curves({"init_args": {"dataset_json": {"labels": {"background": 0, "organ": [1, 2]}}}, "logging": {}})


def test_the_interval_over_draws_is_a_t_interval_on_the_draw_means():
    """The published study: novel-class differences +6.2, +19.8, +26.3 points in its three draws."""
    result = summarize_draws(np.array([[0.062], [0.198], [0.263]]))
    assert result.mean == pytest.approx(0.1743, abs=1e-4) and result.interval == "Student t over 3 draw means"
    assert (result.ci_low, result.ci_high) == pytest.approx((-0.0805, 0.4291), abs=1e-4)
    table = np.array([[0.1, 0.3, np.nan], [0.5, np.nan, np.nan], [np.nan] * 3])  # a draw without a scored case
    result = summarize_draws(table)
    assert result.mean == pytest.approx(0.35)  # the mean of the draw means: each draw weighs the same
    half = stats.t.ppf(0.975, 1) * np.std([0.2, 0.5], ddof=1) / math.sqrt(2)
    assert (result.ci_low, result.ci_high) == pytest.approx((0.35 - half, 0.35 + half))
    one = summarize_draws(table[:1])  # one draw: its test cases only
    assert one.interval == TEST_CASES_ONLY and 0.1 <= one.ci_low < 0.2 < one.ci_high <= 0.3
    constant = summarize_draws(np.full((2, 2), 0.25))
    assert (constant.mean, constant.ci_low, constant.ci_high) == (0.25, 0.25, 0.25)
    empty = summarize_draws(np.full((2, 2), np.nan))
    assert math.isnan(empty.mean) and math.isnan(empty.ci_low) and empty.interval == ""


TRUTH, DRAW_SD, CASE_SD, TEST_CASES = 0.10, 0.10, 0.05, 12


def simulated_studies(rng: np.random.Generator, studies: int, draws: int) -> np.ndarray:
    """studies x draws x test cases paired differences: the truth, plus an effect per training draw (its spread:
    DRAW_SD), plus noise per test case."""
    return (TRUTH + rng.normal(0, DRAW_SD, (studies, draws, 1))
            + rng.normal(0, CASE_SD, (studies, draws, TEST_CASES)))


def crossed_bootstrap(tables: np.ndarray, resamples: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The interval the study reported before issue #26, per study: a percentile bootstrap resampling draws and
    test cases independently (the same resamples for every study, as its fixed seed gave)."""
    studies, draws, cases = tables.shape
    rng = np.random.default_rng(0)
    draw_counts = rng.multinomial(draws, np.full(draws, 1 / draws), size=resamples)
    case_counts = rng.multinomial(cases, np.full(cases, 1 / cases), size=resamples)
    weights = (draw_counts[:, :, None] * case_counts[:, None, :]).reshape(resamples, -1) / (draws * cases)
    low, high = np.percentile(tables.reshape(studies, -1) @ weights.T, [2.5, 97.5], axis=1)
    return low, high


def test_the_interval_over_draws_covers_the_truth_in_simulated_studies():
    """Simulated studies of known truth: the 95% interval covers it in about 95% of studies at 5 and 10 draws, and
    at 3 draws is never narrower than the spread of the draw means; the crossed bootstrap it replaces covers it in
    about 75% at 3 draws, and one draw's interval over test cases, in about 20%: hence its label."""
    rng = np.random.default_rng(0)
    for draws, studies in ((1, 500), (3, 2000), (5, 2000), (10, 2000)):
        tables = simulated_studies(rng, studies, draws)
        results = [summarize_draws(table) for table in tables]
        low, high = (np.array([getattr(r, side) for r in results]) for side in ("ci_low", "ci_high"))
        coverage = np.mean((low <= TRUTH) & (TRUTH <= high))
        draw_means = tables.mean(axis=2)
        spread = draw_means.max(axis=1) - draw_means.min(axis=1)
        old_low, old_high = crossed_bootstrap(tables)
        old_coverage = np.mean((old_low <= TRUTH) & (TRUTH <= old_high))
        if draws == 1:
            assert {r.interval for r in results} == {TEST_CASES_ONLY}
            assert coverage < 0.3 and old_coverage < 0.3  # the same interval, now labelled for what it omits
        else:
            assert {r.interval for r in results} == {f"Student t over {draws} draw means"}
            assert 0.93 <= coverage <= 0.97, (draws, coverage)
            assert old_coverage < coverage - 0.04, (draws, old_coverage)
        if draws == 3:
            assert np.all(high - low >= spread)
            assert np.mean(old_high - old_low < spread) > 0.5  # mostly narrower than the draws' own spread
            assert old_coverage < 0.8


def test_a_groups_difference_compares_the_same_classes_in_both_arms():
    """A class one arm's evaluation lacks, or a result one arm scored and the other did not (absent from the ground
    truth, predicted by one arm), counts in neither arm, and the report says so."""
    groups = {"liver": "seen", "spleen": "novel", "stomach": "novel"}
    pretrained = {"a": {"liver": 0.9, "spleen": 0.8, "stomach": 0.0},
                  "b": {"liver": 0.7, "spleen": 0.6, "stomach": 0.0}}
    scratch = {"a": {"liver": 0.5, "spleen": 0.4}, "b": {"liver": 0.5, "spleen": float("nan")}}  # no stomach
    rows = [row for draw in (0, 1) for arm, cases in (("pretrained", pretrained), ("scratch", scratch))
            for row in evaluation_rows(evaluation(cases), arm, 5, draw, groups)]
    summary = {(r["group"], r["class"], r["arm"], r["draw"]): r for r in summarize_study(rows)}
    novel = {arm: summary[("novel", "", arm, "")]["mean"] for arm in (*ARMS, DIFFERENCE)}
    assert novel == pytest.approx({"pretrained": 0.8, "scratch": 0.4, DIFFERENCE: 0.4})  # case a's spleen only
    assert summary[("all", "", "pretrained", "")]["mean"] == pytest.approx(np.mean([0.85, 0.7]))  # a: 2, b: 1 class
    assert summary[("all", "", DIFFERENCE, "")]["mean"] == pytest.approx(np.mean([0.4, 0.2]))
    assert summary[("novel", "stomach", "pretrained", "")]["n"] == 0
    assert unpaired_note(rows).splitlines() == ["- Dice, N = 5, spleen: 2 results scored by pretrained only",
                                                "- Dice, N = 5, stomach: 4 results scored by pretrained only"]


def test_one_draw_is_labelled_test_case_variability_only(tmp_path):
    """With one draw the CI is over test cases only: the table, summary.csv and the figure's caption say so."""
    rows = evaluation_rows(evaluation({"a": {"liver": 0.9}, "b": {"liver": 0.7}}), "pretrained", 5, 0,
                           {"liver": "seen"})
    rows += evaluation_rows(evaluation({"a": {"liver": 0.5}, "b": {"liver": 0.6}}), "scratch", 5, 0, {"liver": "seen"})
    summary = summarize_study(rows)
    assert {r["interval"] for r in summary} == {TEST_CASES_ONLY}
    write_summary_csv(tmp_path / "summary.csv", summary)
    table = read_csv(tmp_path / "summary.csv")
    difference = next(r for r in table if r["group"] == "all" and r["arm"] == DIFFERENCE and r["draw"] == "")
    assert difference["interval"] == TEST_CASES_ONLY and float(difference["mean"]) == pytest.approx(0.25)
    assert f"| +0.250 | {TEST_CASES_ONLY} |" in summary_markdown(summary, "title")
    assert interval_caption(summary) == f"95% CI: {TEST_CASES_ONLY}"


def small_study(tmp_path: Path):
    """A study of hand-made files (a preprocessed dataset of 6 cases, 2 test images and labels in a raw dataset
    layout, a checkpoint) whose steps only write their outputs (see test_steps.writing)."""
    from test_steps import writing

    from nnunet_suprem.fewshot.study import FewShot, Study

    source = tmp_path / "nnUNet_preprocessed" / "Dataset005_Few"
    source.mkdir(parents=True)
    (source / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    (source / "plans.json").write_text("{}")
    raw = tmp_path / "Dataset005_Few"
    for folder, suffix in (("imagesTs", "_0000"), ("labelsTs", "")):
        (raw / folder).mkdir(parents=True)
        for case in ("test_1", "test_2"):
            (raw / folder / f"{case}{suffix}.nii.gz").write_text(f"{folder} {case}")
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    (tmp_path / "pretrained.pth").write_text("weights")
    study = Study(str(source), "plans", "3d_fullres", str(tmp_path / "pretrained.pth"), (5,), 1, 0, "A", "B",
                  str(raw / "imagesTs"), str(raw / "labelsTs"), None)
    fewshot = FewShot(tmp_path / "out", study, "cpu", 1)
    steps = [writing(step) for step in fewshot.steps(fewshot.prepare([f"case_{i}" for i in range(6)]))]
    return fewshot, steps


def test_a_corrected_ground_truth_redoes_the_evaluations_and_only_them(tmp_path):
    from nnunet_suprem.steps import DONE_FOLDER, is_done, run_steps

    fewshot, steps = small_study(tmp_path)
    done = fewshot.out / DONE_FOLDER

    def redone() -> list[str]:
        return [step.name for step in steps if not is_done(step, done)]

    run_steps(steps, fewshot.out, dict(os.environ), "cpu")
    assert redone() == []
    (Path(fewshot.study.test_labels) / "test_2.nii.gz").write_text("corrected")
    assert redone() == ["evaluate_pretrained_N5_draw0", "evaluate_scratch_N5_draw0"]
    run_steps(steps, fewshot.out, dict(os.environ), "cpu")
    (Path(fewshot.study.test_labels).parent / "dataset.json").write_text(json.dumps({"labels": {"liver": 2}}))
    assert redone() == ["evaluate_pretrained_N5_draw0", "evaluate_scratch_N5_draw0"]  # the labels' values
    run_steps(steps, fewshot.out, dict(os.environ), "cpu")
    (Path(fewshot.study.test_images) / "test_1_0000.nii.gz").write_text("another image")
    assert redone() == ["predict_pretrained_N5_draw0", "predict_scratch_N5_draw0"]  # then their evaluations
    run_steps(steps, fewshot.out, dict(os.environ), "cpu")
    Path(fewshot.study.checkpoint).write_text("other weights")
    assert redone() == ["train_pretrained_N5_draw0"]
    run_steps(steps, fewshot.out, dict(os.environ), "cpu")
    assert redone() == []


def test_tampered_summaries_and_settings_are_refused_naming_the_file(tmp_path, capsys):
    from dataclasses import asdict

    from nnunet_suprem.cli import main
    from nnunet_suprem.fewshot.study import SETTINGS_FILE, read_study

    out, study, fewshot = _hand_made_study(tmp_path, draws=1)
    summaries = {arm: fewshot.evaluation(arm, 5, 0) / "summary.json" for arm in ARMS}
    for arm, path in summaries.items():
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(evaluation({"a": {"liver": 0.9}})))
    assert main(["fewshot-report", str(out)]) == 0
    capsys.readouterr()
    for tampered, message in ((evaluation({"a": {"liver": 7.5}}), "case a, class liver: Dice 7.5 is not a number in "
                                                                   "[0, 1]"),
                              (evaluation({"../../x": {"liver": 0.5}}), "case '../../x' starts with '.'"),
                              ({"metric_per_case": "all"}, "not an evaluation summary"), ("[", "not valid JSON")):
        summaries["scratch"].write_text(tampered if isinstance(tampered, str) else json.dumps(tampered))
        assert main(["fewshot-report", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert f"{summaries['scratch']}: {message}" in error and len(error.splitlines()) == 1, error
    settings_file = out / SETTINGS_FILE
    for change, message in (({"sizes": ["../../x"]}, "training-set sizes must be integers >= 1, got ['../../x']"),
                            ({"draws": 0}, "--draws must be at least 1, got 0"),
                            ({"plans": "../p"}, "plans name '../p' starts with '.'"),
                            ({"tolerance": "1"}, "--tolerance must be >= 0 mm, got '1'")):
        settings_file.write_text(json.dumps({**asdict(study), **change}))
        with pytest.raises(ValueError, match=re.escape(f"{settings_file}: {message}")):
            read_study(out)
