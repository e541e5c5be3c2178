"""nnunet-suprem evaluate: exact Dice/NSD on hand-computable shapes, label pairing, layouts, statistics, outputs."""
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_suprem.cli import main
from nnunet_suprem.evaluate import evaluate
from nnunet_suprem.evaluate.command import OUTPUTS
from nnunet_suprem.evaluate.folders import open_folder
from nnunet_suprem.evaluate.labels import match_label_sets, parse_label_spec
from nnunet_suprem.evaluate import metrics
from nnunet_suprem.evaluate.metrics import dice, surface, surface_dice
from nnunet_suprem.evaluate.stats import bootstrap_ci, paired_test, summarize

SPACING_XYZ = (3.0, 3.0, 1.0)  # SimpleITK order; numpy arrays are [z, y, x], so array spacing is (1, 3, 3)


def cube(shape=(20, 14, 14), start=(2, 2, 2), size=10) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def write(array: np.ndarray, path: Path, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_dataset_json(folder: Path, labels: dict, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, **labels}, "file_ending": ".nii.gz", **extra}))
    return path


def label_map(masks: dict[int, np.ndarray]) -> np.ndarray:
    out = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    for value, mask in masks.items():
        out[mask] = value
    return out


def case_metrics(summary: dict, case: str) -> dict:
    return next(c for c in summary["metric_per_case"] if c["case"] == case)["metrics"]


# ---------------------------------------------------------------- metrics on hand-computable shapes

def test_dice_of_overlapping_cubes_and_empty_conventions():
    a = cube(size=4, start=(0, 0, 0))
    b = cube(size=4, start=(1, 0, 0))  # overlap 3 x 4 x 4 = 48 of 64 voxels each
    assert dice(a, b) == pytest.approx(2 * 48 / 128)
    assert dice(a, a) == 1.0
    empty = np.zeros_like(a)
    assert dice(a, empty) == 0.0
    assert np.isnan(dice(empty, empty))
    assert surface_dice(a, empty, (1, 1, 1), 5.0) == 0.0
    assert np.isnan(surface_dice(empty, empty, (1, 1, 1), 1.0))


def test_nsd_of_cube_shifted_along_the_fine_axis():
    # 10^3 cube shifted by k = 2 voxels along axis 0 (1 mm), 3 mm across: 488 boundary voxels each.
    # Distances to the other boundary: rings of the overlapping layers 0 mm (8 x 36 voxels), the ring one
    # layer out 1 mm (36), everything else 2 mm (side distances are >= 3 mm). Hence:
    a, b = cube(), cube(start=(4, 2, 2))
    spacing = (1.0, 3.0, 3.0)
    assert surface(a).sum() == 10 ** 3 - 8 ** 3 == 488
    assert surface_dice(a, b, spacing, 0.5) == pytest.approx(288 / 488)
    assert surface_dice(a, b, spacing, 1.0) == pytest.approx(324 / 488)  # inclusive at exactly 1 mm
    assert surface_dice(a, b, spacing, 1.99) == pytest.approx(324 / 488)
    assert surface_dice(a, b, spacing, 2.0) == 1.0
    # the same shift along a 3 mm axis is 6 mm. Within 2 mm: the rings of the overlapping layers (288) and the
    # voxels of the cap inside the other cube that are 1 or 2 mm from its faces across axis 0 (4 x 8 = 32)
    shifted = cube(start=(2, 4, 2))
    assert surface_dice(a, shifted, spacing, 2.0) == pytest.approx((288 + 32) / 488)
    assert surface_dice(a, shifted, spacing, 5.99) < 1.0 == surface_dice(a, shifted, spacing, 6.0)


def _nsd_by_distance_transform(a, b, spacing, tolerance):
    """Reference NSD on the full arrays with scipy's exact Euclidean distance transform."""
    sa, sb = surface(a), surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return ((to_b[sa] <= tolerance + 1e-9).sum() + (to_a[sb] <= tolerance + 1e-9).sum()) / (sa.sum() + sb.sum())


def test_surface_is_the_eroded_difference():
    mask = ndimage.gaussian_filter(np.random.default_rng(1).random((12, 15, 9)), 1.5) > 0.5
    mask[0, 3:6, 3:6] = True  # touches the array border
    assert np.array_equal(surface(mask), mask & ~ndimage.binary_erosion(mask, border_value=0))


@pytest.mark.parametrize("search_cost", [0.0, np.inf], ids=["search", "shifts"])
def test_nsd_equals_distance_transform_reference_and_ignores_cropping(monkeypatch, search_cost):
    monkeypatch.setattr(metrics, "SEARCH_COST", search_cost)  # force either algorithm
    rng = np.random.default_rng(0)
    spacing = (2.5, 0.8, 1.1)
    for _ in range(4):
        a = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((24, 30, 28)), 2) > 0.5)
        b = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((24, 30, 28)), 2) > 0.5)
        assert a.any() and b.any()
        box = tuple(slice(min(x.start, y.start), max(x.stop, y.stop))
                    for x, y in zip(ndimage.find_objects(a.view(np.uint8))[0], ndimage.find_objects(b.view(np.uint8))[0]))
        for tolerance in (0.0, 0.8, 1.1, 2.0, 3.3, 6.0):
            expected = _nsd_by_distance_transform(a, b, spacing, tolerance)
            assert surface_dice(a, b, spacing, tolerance) == pytest.approx(expected)
            assert surface_dice(a[box], b[box], spacing, tolerance) == pytest.approx(expected)


# ---------------------------------------------------------------- label sets and class pairing

def test_left_right_names_pair_by_side_not_by_value_or_position():
    matching = match_label_sets(["kidney_left", "kidney_right"], ["Right Kidney", "Left Kidney"])
    assert matching.pairs == (("Right Kidney", "kidney_right"), ("Left Kidney", "kidney_left"))
    assert match_label_sets(["lkid", "rkid"], ["kidney_right", "kidney_left"]).pairs == (
        ("kidney_right", "rkid"), ("kidney_left", "lkid"))
    with pytest.raises(ValueError, match="no prediction class"):
        match_label_sets(["kidney_left"], ["kidney_right"])


def test_synonyms_and_classes_missing_on_either_side():
    matching = match_label_sets(["postcava", "gall_bladder", "pancreas", "liver"],
                                ["liver", "inferior_vena_cava", "gallbladder", "stomach"])
    assert matching.pairs == (("liver", "liver"), ("inferior_vena_cava", "postcava"), ("gallbladder", "gall_bladder"))
    assert matching.prediction_only == ("pancreas",)
    assert matching.reference_only == ("stomach",)
    assert any("pancreas" in m for m in matching.messages()) and any("stomach" in m for m in matching.messages())


def test_explicit_map_and_class_restriction():
    matching = match_label_sets(["liver", "organ_7", "spleen"], ["hepar", "liver", "milz"],
                                mapping={"organ_7": "milz", "liver": "hepar", "spleen": None})
    assert matching.pairs == (("hepar", "liver"), ("milz", "organ_7"))
    assert matching.prediction_only == ("spleen",)
    assert matching.reference_only == ("liver",)
    with pytest.raises(ValueError, match="'brain'"):
        match_label_sets(["liver"], ["liver"], mapping={"brain": "liver"})
    with pytest.raises(ValueError, match="'heart'"):
        match_label_sets(["liver"], ["liver"], mapping={"liver": "heart"})
    restricted = match_label_sets(["postcava", "liver"], ["inferior_vena_cava", "liver"], classes=["IVC"])
    assert restricted.pairs == (("inferior_vena_cava", "postcava"),)
    with pytest.raises(ValueError, match="spleen"):
        match_label_sets(["liver"], ["liver"], classes=["spleen"])


def test_label_specs():
    assert parse_label_spec(["liver", "spleen"]).values == {"liver": 1, "spleen": 2}
    assert parse_label_spec(["spleen=5", "liver=2"]).values == {"spleen": 5, "liver": 2}
    assert parse_label_spec(["abdomenatlas1.0"]).values["stomach"] == 9
    kits = parse_label_spec(["kidney_left", "kidney_right", "kidney=4=kidney_left+kidney_right"])
    assert kits.values == {"kidney_left": 1, "kidney_right": 2}
    assert kits.sets == {"kidney": (4, frozenset({"kidney_left", "kidney_right"}))}
    for bad in (["liver", "spleen=2"], ["liver=1", "spleen=1"], ["liver=1", "liver=2"], ["liver=x"], ["liver=0"],
                ["liver", "both=1=liver+spleen"], ["liver", "spleen", "both=3=liver+pancreas"]):
        with pytest.raises(ValueError):
            parse_label_spec(bad)


# ---------------------------------------------------------------- folders, layouts, partial annotation

def test_swapped_label_values_are_scored_by_name(tmp_path):
    left, right = cube(size=4, start=(2, 2, 2)), cube(size=4, start=(2, 2, 8))
    write(label_map({1: left, 2: right}), tmp_path / "pred" / "c1.nii.gz")
    write_dataset_json(tmp_path / "pred", {"kidney_left": 1, "kidney_right": 2})
    write(label_map({1: right, 2: left}), tmp_path / "gt" / "c1.nii.gz")
    summary = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out",
                       reference_labels=["Right Kidney", "Left Kidney"], num_processes=1)
    assert summary["classes"] == {"Right Kidney": "kidney_right", "Left Kidney": "kidney_left"}
    assert case_metrics(summary, "c1") == {"Right Kidney": {"Dice": 1.0, "NSD": 1.0},
                                           "Left Kidney": {"Dice": 1.0, "NSD": 1.0}}


def test_abdomenatlas_layout_missing_mask_is_not_annotated(tmp_path):
    liver, spleen = cube(size=6, start=(1, 1, 1)), cube(size=4, start=(12, 8, 8))
    for case in ("BDMAP_1", "BDMAP_2"):
        write(label_map({1: liver, 2: np.roll(spleen, 1, axis=0)}), tmp_path / "pred" / f"{case}.nii.gz")
        write(liver, tmp_path / "gt" / case / "segmentations" / "liver.nii.gz")
    write_dataset_json(tmp_path / "pred", {"liver": 1, "spleen": 2})
    write(spleen, tmp_path / "gt" / "BDMAP_1" / "segmentations" / "spleen.nii.gz")  # BDMAP_2 has no spleen mask

    folder = open_folder(tmp_path / "gt")
    assert folder.layout == "mask folders" and set(folder.classes) == {"liver", "spleen"}
    summary = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", num_processes=1)
    assert case_metrics(summary, "BDMAP_1")["spleen"]["Dice"] == pytest.approx(0.75)
    assert all(np.isnan(v) for v in case_metrics(summary, "BDMAP_2")["spleen"].values())
    assert summary["metric_per_case"][1]["not_annotated"] == ["spleen"]
    assert summary["statistics"]["spleen"]["Dice"]["n"] == 1
    assert summary["mean"]["spleen"]["Dice"] == pytest.approx(0.75)  # not diluted by the unannotated case
    rows = list(csv.DictReader(open(tmp_path / "out" / "per_case.csv")))
    assert {(r["case"], r["class"], r["status"]) for r in rows if r["status"] != "ok"} == {
        ("BDMAP_2", "spleen", "not_annotated")}


def test_totalsegmentator_layout_prediction_and_manifest_ground_truth(tmp_path):
    ivc, liver = cube(size=4, start=(2, 2, 2)), cube(size=6, start=(8, 6, 6))
    for case in ("s0001", "s0002"):
        write(ivc, tmp_path / "pred" / case / "segmentations" / "inferior_vena_cava.nii.gz")
        write(np.zeros_like(ivc), tmp_path / "pred" / case / "segmentations" / "liver.nii.gz")  # predicts no liver
        write(label_map({1: liver, 3: ivc}), tmp_path / "raw" / "labelsTs" / f"{case}.nii.gz")
    # s0002 annotates only postcava (the partial-label manifest of nnU-Net raw datasets)
    write_dataset_json(tmp_path / "raw", {"liver": 1, "postcava": 3}, partial_labels={
        "format": "nnunet-suprem/1", "groups": {"ivc_only": {"annotated": ["postcava"], "cases": ["s0002"]}}})
    summary = evaluate(tmp_path / "pred", tmp_path / "raw" / "labelsTs", tmp_path / "out", num_processes=1)
    assert summary["classes"] == {"liver": "liver", "postcava": "inferior_vena_cava"}
    assert case_metrics(summary, "s0001") == {"liver": {"Dice": 0.0, "NSD": 0.0}, "postcava": {"Dice": 1.0, "NSD": 1.0}}
    assert np.isnan(case_metrics(summary, "s0002")["liver"]["Dice"])
    assert case_metrics(summary, "s0002")["postcava"]["Dice"] == 1.0


def test_a_coarse_kits_kidney_is_scored_as_the_union_of_the_predicted_sides(tmp_path, capsys):
    """Ground truth in the manifest's format 2: case k1 labels the kidney as the set "kidney" (value 4, no side),
    case f1 with sides. A fine prediction scores the set in k1 as the union of its kidney_left and kidney_right (its
    sides are not scored there); f1 scores the sides (and no set)."""
    left, right = cube(size=4, start=(2, 2, 2)), cube(size=4, start=(2, 2, 8))
    prediction = label_map({1: left, 2: right})
    for case in ("k1", "f1"):
        write(prediction, tmp_path / "pred" / f"{case}.nii.gz")
    write_dataset_json(tmp_path / "pred", {"kidney_left": 1, "kidney_right": 2})
    write(label_map({4: left | right}), tmp_path / "raw" / "labelsTs" / "k1.nii.gz")
    write(label_map({1: left, 2: np.roll(right, 1, axis=0)}), tmp_path / "raw" / "labelsTs" / "f1.nii.gz")
    write_dataset_json(tmp_path / "raw", {"kidney_left": 1, "kidney_right": 2, "kidney_tumor": 3}, partial_labels={
        "format": "nnunet-suprem/2", "sets": {"kidney": {"value": 4, "classes": ["kidney_left", "kidney_right"]}},
        "groups": {"kits": {"annotated": ["kidney_left", "kidney_right", "kidney_tumor"], "cases": ["k1"]}}})
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "raw" / "labelsTs"), "-o", str(out),
                 "-np", "1", "--no-nsd"]) == 0
    assert "kidney (set: kidney_left + kidney_right)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"]["kidney"] == "kidney_left + kidney_right"
    k1, f1 = case_metrics(summary, "k1"), case_metrics(summary, "f1")
    assert k1["kidney"]["Dice"] == 1.0 and np.isnan(k1["kidney_left"]["Dice"]) and np.isnan(k1["kidney_right"]["Dice"])
    assert f1["kidney_left"]["Dice"] == 1.0 and f1["kidney_right"]["Dice"] == 0.75 and np.isnan(f1["kidney"]["Dice"])
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert {(r["case"], r["class"], r["status"]) for r in rows if r["status"] != "ok"} == {
        ("k1", "kidney_left", "scored_as_set"), ("k1", "kidney_right", "scored_as_set"),
        ("f1", "kidney", "no_set_voxels")}
    assert summary["mean"]["kidney"]["Dice"] == 1.0 and summary["statistics"]["kidney_left"]["Dice"]["n"] == 1


def test_ignore_label_voxels_count_for_nothing(tmp_path):
    organ, ignored = cube(size=4, start=(2, 2, 2)), cube(size=4, start=(2, 2, 8))
    write(label_map({1: organ | ignored}), tmp_path / "pred" / "c1.nii.gz")
    write(label_map({1: organ, 2: ignored}), tmp_path / "gt" / "c1.nii.gz")
    write_dataset_json(tmp_path / "gt", {"liver": 1, "ignore": 2})
    summary = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", prediction_labels=["liver"],
                       num_processes=1)
    assert summary["classes"] == {"liver": "liver"}
    assert case_metrics(summary, "c1")["liver"]["Dice"] == 1.0


def test_nsd_uses_the_spacing_from_the_header(tmp_path):
    # the cube is shifted 2 voxels along z, where the spacing is 1 mm (3 mm in-plane): see the metric test above
    write(cube(), tmp_path / "pred" / "c1.nii.gz")
    write(cube(start=(4, 2, 2)), tmp_path / "gt" / "c1.nii.gz")
    summary = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", prediction_labels=["liver"],
                       reference_labels=["liver"], tolerance=1.0, num_processes=1)
    assert case_metrics(summary, "c1")["liver"]["NSD"] == pytest.approx(324 / 488)
    assert case_metrics(summary, "c1")["liver"]["Dice"] == pytest.approx(0.8)
    dice_only = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out2", prediction_labels=["liver"],
                         reference_labels=["liver"], tolerance=None, num_processes=1)
    assert case_metrics(dice_only, "c1") == {"liver": {"Dice": pytest.approx(0.8)}}


@pytest.mark.parametrize("change", ["size", "spacing", "origin"])
def test_geometry_mismatch_names_both_files(tmp_path, change):
    write(cube(), tmp_path / "pred" / "c1.nii.gz")
    shape, spacing, origin = (20, 14, 14), SPACING_XYZ, (0.0, 0.0, 0.0)
    if change == "size":
        shape = (21, 14, 14)
    elif change == "spacing":
        spacing = (3.0, 3.0, 1.01)
    else:
        origin = (0.0, 0.001, 0.0)
    write(cube(shape=shape), tmp_path / "gt" / "c1.nii.gz", spacing, origin)
    with pytest.raises(ValueError) as error:
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", prediction_labels=["liver"],
                 reference_labels=["liver"], num_processes=1)
    message = str(error.value)
    assert str(tmp_path / "pred" / "c1.nii.gz") in message and str(tmp_path / "gt" / "c1.nii.gz") in message
    assert change in message


def test_folder_errors(tmp_path):
    write(cube(), tmp_path / "pred" / "c1.nii.gz")
    write(cube(), tmp_path / "gt" / "c1.nii.gz")
    write(cube(), tmp_path / "gt" / "c2.nii.gz")
    with pytest.raises(ValueError, match="--pred-labels"):  # label maps without any dataset.json
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", reference_labels=["liver"])
    with pytest.raises(ValueError, match=r"no prediction for 1 .*c2"):
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", prediction_labels=["liver"],
                 reference_labels=["liver"], num_processes=1)
    summary = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", prediction_labels=["liver"],
                       reference_labels=["liver"], num_processes=1, chill=True)
    assert [c["case"] for c in summary["metric_per_case"]] == ["c1"]
    with pytest.raises(FileNotFoundError, match="nothing"):
        open_folder(tmp_path / "nothing")


# ---------------------------------------------------------------- statistics

def test_summary_and_bootstrap_interval():
    values = [0.70, 0.82, 0.91, 0.88, np.nan, 0.79, 0.95]
    s = summarize(values)
    finite = np.array([v for v in values if np.isfinite(v)])
    assert s.n == 6 and s.mean == pytest.approx(finite.mean()) and s.sd == pytest.approx(finite.std(ddof=1))
    assert finite.min() <= s.ci_low < s.mean < s.ci_high <= finite.max()
    assert bootstrap_ci(values) == bootstrap_ci(values)  # deterministic
    assert summarize([0.5]).n == 1 and np.isnan(summarize([0.5]).sd)
    assert summarize([np.nan]).n == 0


def test_paired_test_detects_a_clearly_better_folder():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.8, 10)
    better = paired_test(a, a + rng.uniform(0.05, 0.1, 10))
    assert better.n == 10 and better.p_value < 0.05 and better.mean_difference > 0.05
    assert paired_test(a, a).p_value == 1.0
    noisy = paired_test(a, a + rng.normal(0, 0.05, 10) * np.array([1, -1] * 5))
    assert noisy.p_value > 0.05
    assert paired_test([0.5, np.nan], [np.nan, 0.7]).n == 0


# ---------------------------------------------------------------- the command

def _comparison_folders(root: Path, cases: int = 8) -> None:
    """GT with spleen + IVC; folder A shifts the spleen by 2 voxels, folder B by 1 (clearly better)."""
    ivc = cube(size=3, start=(14, 9, 9))
    for i in range(cases):
        case = f"case_{i:02d}"
        jitter = i % 3  # cases differ, so the per-case values vary
        gt_spleen = cube(size=8 + jitter, start=(2, 2, 2))
        write(gt_spleen, root / "gt" / case / "segmentations" / "spleen.nii.gz")
        write(ivc, root / "gt" / case / "segmentations" / "IVC.nii.gz")
        write(label_map({1: np.roll(gt_spleen, 2, axis=0), 2: ivc}), root / "a" / f"{case}.nii.gz")
        write(label_map({1: np.roll(gt_spleen, 1, axis=0), 2: ivc}), root / "b" / f"{case}.nii.gz")
    for folder in ("a", "b"):
        write_dataset_json(root / folder, {"spleen": 1, "postcava": 2, "pancreas": 3})


def test_cli_writes_every_output_and_compares_two_folders(tmp_path, capsys):
    _comparison_folders(tmp_path)
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "a"), str(tmp_path / "gt"), "-o", str(out), "-np", "1",
                 "--compare", str(tmp_path / "b"), "--tolerance", "1.0"]) == 0
    printed = capsys.readouterr().out
    assert "IVC (pred. postcava)" in printed and "spleen" in printed and "skipped, not in the ground truth: pancreas" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 8
    first = summary["metric_per_case"][0]
    assert set(first) >= {"prediction_file", "reference_file", "metrics"}
    assert first["prediction_file"].endswith("case_00.nii.gz") and first["reference_file"].endswith("case_00")
    assert set(first["metrics"]) == {"spleen", "IVC"} and set(first["metrics"]["spleen"]) == {"Dice", "NSD"}
    assert summary["mean"]["IVC"] == {"Dice": 1.0, "NSD": 1.0}
    assert 0 < summary["mean"]["spleen"]["Dice"] < summary["comparison"]["mean"]["spleen"]["Dice"] < 1
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        (summary["mean"]["spleen"]["Dice"] + summary["mean"]["IVC"]["Dice"]) / 2)
    assert summary["skipped"]["prediction_only"] == ["pancreas"]
    tests = summary["comparison"]["paired_tests"]
    assert tests["spleen"]["Dice"]["p_value"] < 0.05 and tests["spleen"]["Dice"]["mean_difference"] > 0
    assert tests["IVC"]["Dice"]["p_value"] == 1.0
    low, high = summary["statistics"]["spleen"]["Dice"]["ci95"]
    assert low <= summary["mean"]["spleen"]["Dice"] <= high

    per_case = list(csv.DictReader(open(out / "per_case.csv")))
    assert len(per_case) == 8 * 2 and {r["class"] for r in per_case} == {"spleen", "IVC"}
    per_class = {r["class"]: r for r in csv.DictReader(open(out / "per_class.csv"))}
    assert per_class["IVC"]["prediction_class"] == "postcava"
    assert float(per_class["spleen"]["Dice_p"]) < 0.05
    assert float(per_class["spleen"]["Dice_mean"]) == pytest.approx(summary["mean"]["spleen"]["Dice"])
    assert (out / "dice_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_the_library_logs_and_the_cli_prints(tmp_path, capsys, caplog, monkeypatch):
    logger = logging.getLogger("nnunet_suprem")
    monkeypatch.setattr(logger, "handlers", [])  # as in a fresh process: main() has not run
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    write(cube(), tmp_path / "pred" / "c1.nii.gz")
    write(cube(), tmp_path / "gt" / "c1.nii.gz")
    arguments = dict(prediction_labels=["liver"], reference_labels=["liver"], num_processes=1)
    with caplog.at_level(logging.INFO, logger="nnunet_suprem"):
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", **arguments)
    assert capsys.readouterr().out == "" and "mean of classes" in caplog.text
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--pred-labels", "liver",
                 "--gt-labels", "liver", "-o", str(tmp_path / "out"), "-np", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"1 cases; wrote {', '.join(OUTPUTS)} to {tmp_path / 'out'}"


def test_cli_reports_bad_input_as_an_error(tmp_path, capsys):
    write(cube(), tmp_path / "pred" / "c1.nii.gz")
    write(cube(shape=(20, 14, 15)), tmp_path / "gt" / "c1.nii.gz")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--pred-labels", "liver",
                 "--gt-labels", "liver", "-o", str(tmp_path / "out"), "-np", "1"]) == 2
    error = capsys.readouterr().err
    assert ("nnunet-suprem evaluate: error: geometry mismatch between "
            f"{tmp_path / 'pred' / 'c1.nii.gz'} and {tmp_path / 'gt' / 'c1.nii.gz'}: size (14, 14, 20) != (15, 14, 20)") in error
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_parallel_run_matches_serial(tmp_path):
    _comparison_folders(tmp_path, cases=3)
    serial = evaluate(tmp_path / "a", tmp_path / "gt", tmp_path / "s", num_processes=1)
    parallel = evaluate(tmp_path / "a", tmp_path / "gt", tmp_path / "p", num_processes=2)
    assert parallel["metric_per_case"] == serial["metric_per_case"]
