"""Does a side-less "kidney" help as a set? Pre-training with the set vs without those kidneys vs mapped to one side.

    python benchmarks/set_labels.py [--epochs 30] [--iterations 20] [--out DIR] [--smoke]

Three phantom sources (``nnunet-suprem synth``, one hospital each, 32^3, organ scale 1.4):
  sided (hospA)  liver, spleen, kidney_left, kidney_right
  other (hospB)  liver, spleen, stomach
  coarse (hospC) liver, stomach and "kidney": both kidneys carry one label, as in KiTS or AbdomenCT-1K.
``nnunet-suprem merge`` makes three pre-training datasets of them:
  (a) set:     no mapping file; "kidney" is a known coarse name and becomes the set {kidney_left, kidney_right},
  (b) dropped: --map {"<coarse>": {"kidney": null}}: the coarse source's kidneys are unannotated,
  (c) left:    --map {"<coarse>": {"kidney": "kidney_left"}}: every coarse kidney is called the left one.
nnU-Net plans and preprocesses each (its own command), SuPreMTrainer pre-trains each in-process with the same
epochs, iterations and seed, and nnU-Net's predictor segments held-out, fully annotated test cases of all three
hospitals. Printed per arm: test Dice per class (nnU-Net's metric code) and the share of the reference kidney voxels
(either side) that the prediction calls kidney_right. CPU unless a GPU is present; artefacts stay in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from common import make_trainer, nnunet_folders, processes, run, test_dice

SOURCES = {"sided": (611, "hospA", "liver,spleen,kidney_left,kidney_right"),
           "other": (612, "hospB", "liver,spleen,stomach"),
           "coarse": (613, "hospC", "liver,stomach,kidney_left,kidney_right")}
COARSE_KIDNEY = "kidney"
TEST = (619, "SetTest")
ARMS = {"(a) set": (621, None), "(b) dropped": (622, None), "(c) left": (623, "kidney_left")}
ALL_CLASSES = "liver,spleen,stomach,kidney_left,kidney_right"
SMOKE = {"epochs": 1, "iterations": 2, "cases": 2, "test_cases": 1}


def raw_folder(dataset_id: int) -> Path:
    return next(Path(os.environ["nnUNet_raw"]).glob(f"Dataset{dataset_id:03d}_*"))


def make_coarse(source: Path) -> None:
    """Give both kidneys of ``source`` one label, "kidney" (labelsTr and dataset.json; values stay consecutive)."""
    dataset = json.loads((source / "dataset.json").read_text())
    old = dataset["labels"]
    names = [n for n in old if not n.startswith("kidney_")] + [COARSE_KIDNEY]
    new = {name: value for value, name in enumerate(names)}
    lut = np.zeros(max(old.values()) + 1, dtype=np.uint8)
    for name, value in old.items():
        lut[value] = new[COARSE_KIDNEY if name.startswith("kidney_") else name]
    for path in sorted((source / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        coarse = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(image)])
        coarse.CopyInformation(image)
        sitk.WriteImage(coarse, str(path), True)
    (source / "dataset.json").write_text(json.dumps({**dataset, "labels": new}, indent=2))


def make_datasets(args, out: Path) -> None:
    """Sources, test cases and the three merged, planned and preprocessed arms (kept when --out holds them)."""
    if all((Path(os.environ["nnUNet_preprocessed"]) / f"Dataset{i}_SetArm{i}" / "nnUNetPlans.json").is_file()
           for i, _ in ARMS.values()):
        return
    common = ("--shape", *map(str, args.shape), "--organ-scale", str(args.organ_scale), "--seed", str(args.seed),
              "--cases", str(args.cases), "-np", str(processes()))
    for name, (dataset_id, hospital, classes) in SOURCES.items():
        run("nnunet-suprem", "synth", "-d", str(dataset_id), "--name", name.capitalize(), "--hospitals", hospital,
            "--annotate", f"{hospital}={classes}", *common)
    make_coarse(raw_folder(SOURCES["coarse"][0]))
    # the same hospitals, seed and case count: the test cases are the ones after every source's training cases
    hospitals = [h for _, h, _ in SOURCES.values()]
    run("nnunet-suprem", "synth", "-d", str(TEST[0]), "--name", TEST[1], "--hospitals", *hospitals,
        "--annotate", *(f"{h}={ALL_CLASSES}" for h in hospitals), "--test-cases", str(args.test_cases), *common)
    sources = [str(i) for i, _, _ in SOURCES.values()]
    coarse = raw_folder(SOURCES["coarse"][0]).name
    for arm, (dataset_id, target) in ARMS.items():
        mapping = []
        if arm != "(a) set":
            (out / f"map{dataset_id}.json").write_text(json.dumps({coarse: {COARSE_KIDNEY: target}}))
            mapping = ["--map", str(out / f"map{dataset_id}.json")]
        run("nnunet-suprem", "merge", *sources, "-d", str(dataset_id), "--name", f"SetArm{dataset_id}", *mapping,
            "-np", str(processes()))
    run("nnUNetv2_plan_and_preprocess", "-d", *(str(i) for i, _ in ARMS.values()), "-c", "3d_fullres", "-np",
        str(processes()), "-npfp", str(processes()))


def right_share(predictions: Path, test: Path, labels: dict[str, int]) -> tuple[float, float]:
    """(predicted, reference) share of the reference kidney voxels (either side) that are kidney_right."""
    kidneys = predicted_right = reference_right = 0
    for reference_path in sorted((test / "labelsTs").glob("*.nii.gz")):
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path)))
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / reference_path.name)))
        kidney = np.isin(reference, [labels["kidney_left"], labels["kidney_right"]])
        kidneys += int(kidney.sum())
        predicted_right += int((kidney & (prediction == labels["kidney_right"])).sum())
        reference_right += int((reference == labels["kidney_right"]).sum())
    return predicted_right / max(1, kidneys), reference_right / max(1, kidneys)


def train_and_evaluate(cls, dataset: str, device: torch.device, seed: int) -> tuple[dict[str, float], float, float,
                                                                                      float]:
    """Per-class test Dice, predicted and reference kidney_right share, and training seconds."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    trainer = make_trainer(cls, dataset, device)
    test = raw_folder(TEST[0])
    test_labels = json.loads((test / "dataset.json").read_text())["labels"]
    if trainer.dataset_json["labels"] != test_labels:
        raise ValueError(f"{dataset} labels {trainer.dataset_json['labels']} differ from the test cases' "
                         f"{test_labels}")
    start = time.perf_counter()
    trainer.run_training()
    seconds = time.perf_counter() - start
    out = Path(trainer.output_folder) / "test_predictions"
    dice = test_dice(trainer, test, out, device)
    return dice, *right_share(out, test, test_labels), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    parser.add_argument("--cases", type=int, default=6, help="training cases per source")
    parser.add_argument("--test-cases", type=int, default=2, help="held-out fully annotated cases per hospital")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 32))
    parser.add_argument("--organ-scale", type=float, default=1.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="a pipeline check: " + ", ".join(f"{k} {v}" for k, v in SMOKE.items())
                             + "; the numbers mean nothing")
    parser.add_argument("--out", help="keep all datasets and results here (default: a temporary folder)")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)

    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer
    from nnunet_suprem.training.variants import training_length

    out = nnunet_folders(args.out, "set_labels_")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    make_datasets(args, out)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # training only: nnU-Net's planning fails with 0
    trainer = training_length(SuPreMTrainer, args.epochs, args.iterations, 1 if args.smoke else 2)
    results = {}
    for arm, (dataset_id, _) in ARMS.items():
        print(f"training {arm} ...", flush=True)
        results[arm] = train_and_evaluate(trainer, f"Dataset{dataset_id}_SetArm{dataset_id}", device, args.seed)

    print(f"\nTest Dice on {args.test_cases * len(SOURCES)} held-out fully annotated cases ({args.epochs} epochs x "
          f"{args.iterations} iterations, {args.cases} training cases per source, seed {args.seed}, {device.type}"
          f"{', SMOKE: numbers mean nothing' if args.smoke else ''}):")
    print(f"{'class':<14}" + "".join(f"{arm:>14}" for arm in ARMS))
    for name in results["(a) set"][0]:
        print(f"{name:<14}" + "".join(f"{results[arm][0][name]:14.3f}" for arm in ARMS))
    reference_share = results["(a) set"][2]
    print(f"{'right share':<14}" + "".join(f"{results[arm][1]:14.3f}" for arm in ARMS)
          + f"   of the reference kidney voxels predicted kidney_right (reference: {reference_share:.3f})")
    print(f"{'training s':<14}" + "".join(f"{results[arm][3]:14.0f}" for arm in ARMS))
    print(f"total {time.perf_counter() - start:.0f} s; artefacts in {out}")


if __name__ == "__main__":
    main()
