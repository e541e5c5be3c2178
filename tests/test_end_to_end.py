"""Stock nnU-Net commands drive our trainer: plan/preprocess -> nnUNetv2_train -tr -> nnUNetv2_predict (CPU)."""
import json

import numpy as np
import SimpleITK as sitk

from conftest import command, run
from nnunet_suprem.nnunet_env import trainers_dir, with_ext_trainers

TRAINER = "SuPreMTrainer_smoke"


def test_train_and_predict_with_stock_nnunet_cli(planned_phantom_dataset, tmp_path):
    env, raw = planned_phantom_dataset["env"], planned_phantom_dataset["raw"]
    assert "nnUNet_extTrainer" not in env

    # a user who exported nnUNet_extTrainer as the README says
    train = run(command("nnUNetv2_train", "1", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"),
                {**env, "nnUNet_extTrainer": str(trainers_dir()), "nnUNet_n_proc_DA": "0"})
    assert f"Using trainer '{TRAINER}' from: {trainers_dir()}" in train.stdout
    results = raw.parents[1] / "nnUNet_results" / raw.name / f"{TRAINER}__nnUNetPlans__3d_fullres"
    assert (results / "fold_0" / "checkpoint_final.pth").is_file()
    assert json.loads((results / "fold_0" / "validation" / "summary.json").read_text())["foreground_mean"]

    # our helper adds nnUNet_extTrainer for the child even though the environment lacks it
    out = tmp_path / "predictions"
    run(command("nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "1", "-c", "3d_fullres",
                "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"),
        with_ext_trainers(env))

    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    images = sorted((raw / "imagesTs").iterdir())
    assert len(images) == 3
    for image_path in images:
        case = image_path.name.removesuffix("_0000.nii.gz")
        image, prediction = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert prediction.GetSize() == image.GetSize()
        assert np.allclose(prediction.GetSpacing(), image.GetSpacing())
        assert np.allclose(prediction.GetOrigin(), image.GetOrigin())
        assert np.allclose(prediction.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= set(labels.values())

    # direct-inference evaluation of nnUNetv2_predict's output against the test labels
    evaluation = tmp_path / "evaluation"
    run(command("nnunet-suprem", "evaluate", str(out), str(raw / "labelsTs"), "--pred-labels", str(raw / "dataset.json"),
                "--gt-labels", str(raw / "dataset.json"), "-np", "1", "-o", str(evaluation)), env)
    assert {p.name for p in evaluation.iterdir()} == {"per_case.csv", "per_class.csv", "summary.json", "dice_boxplot.png"}
    summary = json.loads((evaluation / "summary.json").read_text())
    assert [case["case"] for case in summary["metric_per_case"]] == [p.name.removesuffix("_0000.nii.gz") for p in images]
    assert set(summary["mean"]) == set(labels) - {"background"}
    dice = np.array([m["Dice"] for case in summary["metric_per_case"] for m in case["metrics"].values()])
    assert np.isfinite(dice).any() and ((dice[np.isfinite(dice)] >= 0) & (dice[np.isfinite(dice)] <= 1)).all()
