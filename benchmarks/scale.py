"""A rehearsal at AbdomenAtlas scale: time and peak memory per stage and per case, at several dataset sizes.

    python benchmarks/scale.py [--cases 1000 3000 10000] [--stages merge plan train bookkeeping] [--out DIR]
    python benchmarks/scale.py --smoke        (20 and 40 cases, 3 iterations: a check that it all runs)

For each number of cases N, writes four partially labelled phantom sources (``nnunet_suprem.synth``, --shape
voxels, together the 25 classes of AbdomenAtlas 1.1: a fully annotated source holding half the cases, whose
phantoms lack 9 of its classes and annotate them as absent, and three sources that annotate a few organs each),
then measures, each command in a fresh process as a user runs it:

- merge: ``nnunet-suprem merge`` of the four sources (the partial-label manifest over them);
- plan: ``nnunet-suprem plan --preset suprem`` at the phantoms' spacing (nnU-Net's fingerprint, planning and
  preprocessing, as our command runs them);
- train: ``torchrun --nproc-per-node 2 -m nnunet_suprem.train`` with gloo on the CPU, ``SuPreMTrainer_scale``
  (``benchmarks/trainers``): per rank, seconds from the launch to the first iteration and for the first --iterations
  iterations, peak memory of each rank and of its data-loader workers;
- bookkeeping: in this process, the validation's bookkeeping over the merged dataset.json: the manifest read
  (``annotated_classes_by_case``, ``group_of_case``), the source-balanced sampling list (``source_repeats``) and
  ``restrict_summary_to_annotated`` on an nnU-Net summary of fold 0's validation cases, every class scored.

With --real-cases K, the per-case cost at clinical size for the extrapolation (docs/scaling.md): K copies of the
real 512x512x48 chest CT of ../shared/data/real-ct with 25 masks (``benchmarks/convert.py``'s cases) through
``nnunet-suprem convert-abdomenatlas`` and ``nnunet-suprem plan --preset suprem`` (1.5 mm, 96^3: SuPreM's recipe).

Printed: a table of wall seconds, CPU seconds (all processes of the stage) and peak resident memory (MB: the largest
process of the stage) per stage and N, and the marginal milliseconds per case between consecutive N (constant when a
stage grows linearly).
--out keeps the datasets and ``scale.json`` (default: a temporary folder, removed). Uses nnUNet_def_n_proc
(default 2) processes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from common import nnunet_folders, processes
from convert import make_cases

from nnunet_suprem.nnunet_env import dataset_folder_name, with_ext_trainers
from nnunet_suprem.phantom import HOSPITALS, PHANTOM_CLASSES
from nnunet_suprem.synth import write_nnunet_dataset
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_1

STAGES = ("merge", "plan", "train", "bookkeeping")
PLANS = "nnUNetPlans_suprem"
TRAINER = "SuPreMTrainer_scale"
BENCHMARK_TRAINERS = Path(__file__).resolve().parent / "trainers"
ABSENT = tuple(c for c in ABDOMENATLAS_1_1 if c not in PHANTOM_CLASSES)
SOURCES = (  # name, hospital, annotated phantom classes (None: all, and the absent ones), share (None: the rest)
    ("Atlas", "hospA", None, None),
    ("Organs", "hospB", ("liver", "spleen", "stomach", "pancreas", "gall_bladder"), 0.2),
    ("Kidneys", "hospC", ("kidney_left", "kidney_right", "adrenal_gland_left", "adrenal_gland_right"), 0.15),
    ("Vessels", "hospA", ("aorta", "postcava", "lung_left", "lung_right"), 0.15),
)


def source_datasets(first_id: int, cases: int, shape: tuple[int, int, int]) -> list[int]:
    """Write the four phantom sources of ``cases`` cases in all (IDs from ``first_id``), unless already there."""
    sizes = [round(cases * share) for *_, share in SOURCES[1:]]
    sizes.insert(0, cases - sum(sizes))
    ids = []
    for offset, ((name, hospital, annotated, _), size) in enumerate(zip(SOURCES, sizes), start=1):
        dataset_id = first_id + offset
        ids.append(dataset_id)
        if (Path(os.environ["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_Scale{name}").is_dir():
            continue
        h = dataclasses.replace(HOSPITALS[hospital].with_shape(shape), annotated=annotated)
        write_nnunet_dataset(dataset_id, f"Scale{name}", [h], size, seed=dataset_id,
                             num_processes=processes(), absent_classes=ABSENT if annotated is None else ())
    return ids


# Runs the command and writes its peak resident memory (MB, the largest process of its tree) and CPU seconds (all of
# its processes) to a file. A small process in between, because a child's peak memory counts the memory its parent
# had when it forked, and this script may be large.
MEASURE = ("import json, resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
           "usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "open(sys.argv[1], 'w').write(json.dumps({'peak_mb': usage.ru_maxrss / 1024, "
           "'cpu_s': usage.ru_utime + usage.ru_stime})); sys.exit(code)")


def timed(command: list[str], env: dict | None = None) -> dict:
    """Wall seconds, CPU seconds and peak resident memory (MB) of a command; fails with its output on an error."""
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage.json"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEASURE, str(usage_file), *command], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}")
        return {"seconds": seconds, **json.loads(usage_file.read_text())}


def script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def merge(sources: list[int], merged: int) -> dict:
    return timed([script("nnunet-suprem"), "merge", *map(str, sources), "-d", str(merged), "--name",
                  f"Scale{merged}", "-np", str(processes()), "--overwrite"])


def plan(merged: int, shape: tuple[int, int, int]) -> dict:
    """Plan and preprocess; then the plans' batch size becomes 2 (nnU-Net's for real CTs; one sample per rank):
    nnU-Net's planner caps it at 5% of the dataset's voxels, which would make it grow with the number of cases."""
    spacing = [f"{s:.3f}" for s in HOSPITALS["hospA"].with_shape(shape).spacing[::-1]]
    stage = timed([script("nnunet-suprem"), "plan", "--preset", "suprem", "-d", str(merged), "--spacing", *spacing,
                   "--patch-size", *map(str, shape), "-np", str(processes()), "--overwrite"])
    plans_file = Path(os.environ["nnUNet_preprocessed"]) / dataset_folder_name(merged) / f"{PLANS}.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["batch_size"] = 2
    plans_file.write_text(json.dumps(plans, indent=2))
    return stage


def train(merged: int, iterations: int, timings: Path) -> dict:
    """2 gloo ranks under torchrun; the stage's numbers and each rank's record (``trainers/scale_trainer.py``)."""
    timings.mkdir(parents=True, exist_ok=True)
    env = with_ext_trainers({**os.environ, "nnUNet_extTrainer": str(BENCHMARK_TRAINERS), "SCALE_TIMINGS": str(timings),
                             "SCALE_ITERATIONS": str(iterations), "SCALE_LAUNCH": repr(time.time()),
                             "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "1"})
    stage = timed([script("torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "nnunet_suprem.train",
                   str(merged), "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"], env)
    return {**stage, "ranks": [json.loads((timings / f"rank{r}.json").read_text()) for r in (0, 1)]}


def validation_summary(cases: list[str], labels: list[int], file_ending: str) -> dict:
    """An nnU-Net ``summary.json`` (as ``compute_metrics_on_folder`` returns it) scoring every label of every case."""
    metrics = {"Dice": 0.5, "IoU": 0.3, "FN": 1, "FP": 1, "TN": 1, "TP": 1, "n_pred": 2, "n_ref": 2}
    per_case = [{"reference_file": f"gt/{c}{file_ending}", "prediction_file": f"pred/{c}{file_ending}",
                 "metrics": {label: dict(metrics) for label in labels}} for c in cases]
    return {"metric_per_case": per_case, "mean": {label: dict(metrics) for label in labels},
            "foreground_mean": dict(metrics)}


def bookkeeping(merged: int) -> dict:
    """Seconds and peak Python memory (MB) of the validation's and sampling's manifest work over the dataset."""
    from nnunet_suprem.manifest import annotated_classes_by_case, group_of_case
    from nnunet_suprem.training.partial_validation import restrict_summary_to_annotated
    from nnunet_suprem.training.sampling import source_repeats

    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset_folder_name(merged)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    fold = json.loads((folder / "splits_final.json").read_text())[0]
    labels = dataset_json["labels"]
    summary = validation_summary(fold["val"], sorted(labels.values()), dataset_json["file_ending"])
    tracemalloc.start()
    start = time.perf_counter()
    by_case = annotated_classes_by_case(dataset_json)
    source_repeats(fold["train"], group_of_case(dataset_json), 0.5)
    annotated = {case: {0, *(labels[c] for c in classes)} for case, classes in by_case.items()}
    restrict_summary_to_annotated(summary, annotated, dataset_json["file_ending"])
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return {"seconds": seconds, "peak_mb": peak, "validation_cases": len(fold["val"])}


def real_size(cases: int, dataset_id: int, root: Path) -> dict:
    """Seconds and peak memory of converting, then planning and preprocessing, ``cases`` real-size CTs."""
    src = root / "real_ct_cases"
    if not src.is_dir():
        make_cases(src, cases)
    convert = timed([script("nnunet-suprem"), "convert-abdomenatlas", str(src), "-d", str(dataset_id), "--name",
                     "ScaleRealCT", "-np", str(processes()), "--overwrite"])
    preprocess = timed([script("nnunet-suprem"), "plan", "--preset", "suprem", "-d", str(dataset_id), "-np",
                        str(processes()), "--overwrite"])
    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset_folder_name(dataset_id)
    return {"cases": cases, "convert": convert, "plan": preprocess,
            "raw_mb": folder_mb(Path(os.environ["nnUNet_raw"]) / dataset_folder_name(dataset_id)),
            "preprocessed_mb": folder_mb(folder / f"{PLANS}_3d_fullres")}


def folder_mb(folder: Path) -> float:
    """Megabytes of the files below ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def run_point(cases: int, first_id: int, stages: list[str], shape: tuple[int, int, int], iterations: int,
              root: Path) -> dict:
    """Every stage at one dataset size; the merged dataset is ``first_id``."""
    start = time.perf_counter()
    sources = source_datasets(first_id, cases, shape)
    result = {"cases": cases, "synth_s": time.perf_counter() - start}
    if "merge" in stages:
        result["merge"] = merge(sources, first_id)
    if "plan" in stages:
        result["plan"] = plan(first_id, shape)
    if "train" in stages:
        result["train"] = train(first_id, iterations, root / f"timings_{first_id}")
    if "bookkeeping" in stages:
        result["bookkeeping"] = bookkeeping(first_id)
    return result


def print_table(results: list[dict], iterations: int) -> None:
    header = "| stage | " + " | ".join(f"{r['cases']} cases" for r in results) + " | marginal ms/case |"
    print(header + "\n|" + " --- |" * (len(results) + 2))

    def line(name: str, values: list[float], unit: str, per_case: bool) -> None:
        cells = [(f"{v:.0f} MB" if unit == "MB" else f"{v:.3g} s")
                 + (f" ({v / r['cases'] * 1e3:.3g} ms/case)" if per_case else "")
                 for v, r in zip(values, results)]
        marginal = ", ".join(f"{(b - a) / (rb['cases'] - ra['cases']) * 1e3:.3g} ms"
                             for a, b, ra, rb in zip(values, values[1:], results, results[1:])) if per_case else ""
        print(f"| {name} | " + " | ".join(cells) + f" | {marginal} |")

    stages = [(key, name) for key, name in (("merge", "merge"), ("plan", "plan + preprocess"),
                                            ("bookkeeping", "validation bookkeeping")) if key in results[0]]
    for key, name in stages:
        line(f"{name}: time", [r[key]["seconds"] for r in results], "s", True)
        if key != "bookkeeping":
            line(f"{name}: CPU time", [r[key]["cpu_s"] for r in results], "s", True)
        line(f"{name}: peak memory", [r[key]["peak_mb"] for r in results], "MB", False)
    if "train" in results[0]:
        for rank in (0, 1):
            line(f"train, rank {rank}: launch to first iteration",
                 [r["train"]["ranks"][rank]["first_iteration_s"] for r in results], "s", True)
        line(f"train, rank 0: {iterations} iterations", [r["train"]["ranks"][0]["iterations_s"] for r in results],
             "s", False)
        for rank in (0, 1):
            line(f"train, rank {rank}: peak memory", [r["train"]["ranks"][rank]["peak_rss_mb"] for r in results],
                 "MB", False)
        line("train: data-loader worker peak memory",
             [max(x["worker_peak_rss_mb"] for x in r["train"]["ranks"]) for r in results], "MB", False)


def print_real(real: dict) -> None:
    print(f"real-size CTs (512x512x48, 25 masks), {real['cases']} cases, {processes()} processes:")
    for key, name in (("convert", "convert-abdomenatlas"), ("plan", "plan --preset suprem (1.5 mm, 96^3)")):
        stage = real[key]
        print(f"  {name}: {stage['seconds']:.1f} s wall, {stage['seconds'] / real['cases']:.2f} s/case; CPU "
              f"{stage['cpu_s']:.1f} s, {stage['cpu_s'] / real['cases']:.2f} s/case; peak {stage['peak_mb']:.0f} MB")
    print(f"  disk per case: raw {real['raw_mb'] / real['cases']:.1f} MB, preprocessed "
          f"{real['preprocessed_mb'] / real['cases']:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="*", default=[1000, 3000, 10000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 16, 16), help="voxels per phantom")
    parser.add_argument("--iterations", type=int, default=50, help="training iterations timed")
    parser.add_argument("--out", help="folder for the datasets and scale.json (default: temporary, removed)")
    parser.add_argument("--real-cases", type=int, default=0,
                        help="also convert, plan and preprocess this many real-size CTs (default: 0, none)")
    parser.add_argument("--smoke", action="store_true", help="20 and 40 cases, 3 iterations")
    args = parser.parse_args()
    if args.smoke:
        args.cases, args.iterations = [20, 40], 3
    if "bookkeeping" in args.stages and "train" not in args.stages:
        parser.error("--stages bookkeeping needs train (fold 0's split is nnU-Net's, made when training starts)")
    root = nnunet_folders(args.out, "suprem_scale_")
    try:
        results = []
        for index, cases in enumerate(args.cases):
            results.append(run_point(cases, 800 + 10 * index, args.stages, tuple(args.shape), args.iterations, root))
            print(json.dumps(results[-1]), flush=True)
        real = real_size(args.real_cases, 899, root) if args.real_cases else None
        (root / "scale.json").write_text(json.dumps({"points": results, "real_size": real}, indent=1))
        if results:
            print_table(results, args.iterations)
        if real:
            print_real(real)
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
