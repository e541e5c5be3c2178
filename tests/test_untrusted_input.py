"""Untrusted input through the CLI: hostile names, damaged files, stale resumes, killed conversions, bad arguments.

Every converter, ``merge`` and ``evaluate`` get the same table of damaged files (truncated at
several points, zero bytes, wrong magic, NaN, 4D); each damaged case must be reported by its
file and never published.
"""
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from tqdm import tqdm

from conftest import cli, command, run, subprocess_env, tree_digest
from nnunet_suprem.cli import main
from nnunet_suprem.convert.abdomenatlas import convert_abdomenatlas
from nnunet_suprem.convert.totalsegmentator import convert_totalsegmentator
from nnunet_suprem.fileio import path_inside, read_image_array, write_image, write_json
from nnunet_suprem.synth import hospitals_from_args, write_abdomenatlas_dataset
from test_convert_totalsegmentator_and_merge import write_raw

SHAPE = (16, 16, 12)


def _truncate(fraction):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
    return damage


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _wrong_magic(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


def _flipped_byte(path: Path) -> None:
    """One corrupted byte inside the compressed data: only the gzip checksum (or the inflater) notices."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def _nan(path: Path) -> None:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array[0, 0, 0] = np.nan
    damaged = sitk.GetImageFromArray(array)
    damaged.CopyInformation(image)
    sitk.WriteImage(damaged, str(path), True)


def _four_d(path: Path) -> None:
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(path), True)


DAMAGE = {  # kind: (damage function, words the report must contain)
    "truncated_10": (_truncate(0.10), "truncated"),
    "truncated_50": (_truncate(0.50), "truncated"),
    "truncated_90": (_truncate(0.90), "truncated"),
    "truncated_99": (_truncate(0.99), "truncated"),
    "zero_bytes": (_zero_bytes, "empty"),
    "wrong_magic": (_wrong_magic, "not a valid gzip file"),
    "flipped_byte": (_flipped_byte, "not a valid gzip file"),
    "nan": (_nan, "NaN"),
    "four_d": (_four_d, "4D"),
}


def _error_line(stderr: str, subcommand: str) -> str:
    """The one error line of ``stderr`` (progress bars may share the stream); fails unless there is exactly one."""
    lines = re.findall(rf"nnunet-suprem {subcommand}: error: [^\r\n]*", stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    after = stderr.split(lines[0], 1)[1]
    assert not after.strip() or "\r" in after, f"more than one line of error: {after!r}"  # only a bar's redraw
    return lines[0]


def _report(dataset_or_staging: Path) -> dict:
    return json.loads((dataset_or_staging / "conversion_report.json").read_text())


def _assert_reported_not_published(report: dict, damaged: dict[str, Path], dataset: Path) -> None:
    """Each damaged case is skipped with a fatal problem naming its damaged file and the damage."""
    assert sorted(report["skipped_cases"]) == sorted(damaged)
    for case, file in damaged.items():
        problems = [p for p in report["problems"] if p["case"] == case]
        assert problems and all(p["fatal"] and p["file"] == str(file) for p in problems), (case, problems)
        assert DAMAGE[case.split("-", 1)[1]][1] in problems[0]["problem"], (case, problems)
    published = {p.name.split(".")[0].removesuffix("_0000") for p in dataset.rglob("*.nii.gz")}
    assert not published & set(damaged)


def _atlas(src: Path, cases: int = 1) -> Path:
    write_abdomenatlas_dataset(src, hospitals_from_args(["hospA"], [], SHAPE), cases)
    return src / "hospA_0000"


def test_convert_abdomenatlas_reports_every_damaged_file(nnunet_env, tmp_path):
    src = tmp_path / "atlas"
    good = _atlas(src)
    damaged = {}
    for kind, (damage, _) in DAMAGE.items():
        for part, file in (("ct", "ct.nii.gz"), ("mask", "segmentations/liver.nii.gz")):
            case = f"{part}-{kind}"
            shutil.copytree(good, src / case)
            damage(src / case / file)
            damaged[case] = src / case / file
    assert main(["convert-abdomenatlas", str(src), "-d", "61", "-np", "1"]) == 0
    dataset = Path(nnunet_env["nnUNet_raw"]) / "Dataset061_AbdomenAtlas"
    _assert_reported_not_published(_report(dataset), damaged, dataset)
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == ["hospA_0000.nii.gz"]


def test_convert_totalsegmentator_reports_every_damaged_mask(nnunet_env, tmp_path):
    """A copy that keeps only two classes' masks: the release cannot be detected and is named with --release."""
    src = tmp_path / "ts"
    good = _atlas(src)
    for mask in (good / "segmentations").iterdir():
        if mask.name not in ("liver.nii.gz", "spleen.nii.gz"):
            mask.unlink()
    with pytest.raises(ValueError, match=r"cannot tell the TotalSegmentator release.*--release v1\|v2"):
        convert_totalsegmentator(src, 62, "organs", classes=["liver", "spleen"])
    damaged = {}
    for kind, (damage, _) in DAMAGE.items():
        case = f"mask-{kind}"
        shutil.copytree(good, src / case)
        damage(src / case / "segmentations/spleen.nii.gz")
        damaged[case] = src / case / "segmentations/spleen.nii.gz"
    assert main(["convert-totalsegmentator", str(src), "-d", "62", "--group", "organs", "--classes", "liver",
                 "spleen", "--release", "v2", "-np", "1"]) == 0
    dataset = Path(nnunet_env["nnUNet_raw"]) / "Dataset062_TotalSegmentator_organs"
    _assert_reported_not_published(_report(dataset), damaged, dataset)
    assert json.loads((dataset / "dataset.json").read_text())["labels"] == {"background": 0, "spleen": 1, "liver": 2}


@pytest.mark.e2e
def test_merge_reports_damaged_files_and_publishes_only_converted_cases(nnunet_env, tmp_path):
    """Damaged labels and images are skipped; the merged dataset.json lists exactly the converted cases, so
    nnU-Net's own integrity check passes."""
    raw = Path(nnunet_env["nnUNet_raw"])
    kinds = list(DAMAGE)
    write_raw(raw, "Dataset063_Src", {"background": 0, "liver": 1, "spleen": 2},
              {"liver": "liver", "spleen": "spleen"}, range(2 + 2 * len(kinds)))
    source = raw / "Dataset063_Src"
    damaged = {}
    for i, kind in enumerate(kinds):
        label, image = source / f"labelsTr/case{2 + 2 * i}.nii.gz", source / f"imagesTr/case{3 + 2 * i}_0000.nii.gz"
        for file in (label, image):
            DAMAGE[kind][0](file)
        damaged[f"Src_case{2 + 2 * i}"], damaged[f"Src_case{3 + 2 * i}"] = label, image
    assert main(["merge", "63", "-d", "64", "--name", "Merged", "-np", "1"]) == 0
    dataset = raw / "Dataset064_Merged"
    report = _report(dataset)
    assert sorted(report["skipped_cases"]) == sorted(damaged)
    for case, file in damaged.items():
        kind = kinds[(int(case.removeprefix("Src_case")) - 2) // 2]
        problems = [p for p in report["problems"] if p["case"] == case]
        assert problems and problems[0]["file"] == str(file) and DAMAGE[kind][1] in problems[0]["problem"], problems
    dataset_json = json.loads((dataset / "dataset.json").read_text())
    assert sorted(dataset_json["dataset"]) == ["Src_case0", "Src_case1"] and dataset_json["numTraining"] == 2
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == ["Src_case0.nii.gz", "Src_case1.nii.gz"]
    run(command("nnUNetv2_plan_and_preprocess", "-d", "64", "-c", "3d_fullres", "-np", "1", "--no_pp",
                "--verify_dataset_integrity"), subprocess_env(nnunet_env))


@pytest.mark.parametrize("labels, key", [
    ({"background": 0, "spleen": 2, "liver": -1}, "liver"),  # measured: every liver voxel became spleen
    ({"background": 0, "liver": 1, "spleen": 1}, "spleen"),
    ({"background": 0, "liver": 1.0, "spleen": 2}, "liver"),
    ({"background": 0, "liver": True, "spleen": 2}, "liver"),
    ({"background": 0, "liver": 0, "spleen": 2}, "liver"),
    ({"background": 3, "liver": 1, "spleen": 2}, "background"),
])
def test_merge_refuses_label_values_it_cannot_map(nnunet_env, capsys, labels, key):
    raw = Path(nnunet_env["nnUNet_raw"])
    write_raw(raw, "Dataset063_Src", {"background": 0, "liver": 1, "spleen": 2},
              {"liver": "liver", "spleen": "spleen"}, range(2))
    json_file = raw / "Dataset063_Src/dataset.json"
    json_file.write_text(json.dumps({**json.loads(json_file.read_text()), "labels": labels}))
    assert main(["merge", "63", "-d", "64", "--name", "Merged", "-np", "1"]) == 2
    error = _error_line(capsys.readouterr().err, "merge")
    assert str(json_file) in error and repr(key) in error, error
    assert not (raw / "Dataset064_Merged").exists()


def test_merge_skips_label_maps_off_their_image_grid(nnunet_env):
    """Measured: a 20-slice label map for a 16-slice image and one 50 mm off were published. Within nnU-Net's own
    tolerance (np.allclose's, relative 1e-5) a label map is still merged."""
    raw = Path(nnunet_env["nnUNet_raw"])
    write_raw(raw, "Dataset063_Src", {"background": 0, "liver": 1, "spleen": 2},
              {"liver": "liver", "spleen": "spleen"}, range(4))
    labels = raw / "Dataset063_Src/labelsTr"

    def rewrite(case: int, change) -> Path:
        image = sitk.ReadImage(str(labels / f"case{case}.nii.gz"))
        write_image(change(image), labels / f"case{case}.nii.gz")
        return labels / f"case{case}.nii.gz"

    def shifted(offset):
        def change(image):
            image.SetOrigin(tuple(o + offset for o in image.GetOrigin()))
            return image
        return change

    grown = rewrite(0, lambda image: sitk.ConstantPad(image, (0, 0, 0), (0, 0, 20 - image.GetSize()[2])))
    moved = rewrite(1, shifted(50.0))
    rewrite(2, shifted(1e-6))
    assert main(["merge", "63", "-d", "64", "--name", "Merged", "-np", "1"]) == 0
    dataset = raw / "Dataset064_Merged"
    report = _report(dataset)
    assert sorted(report["skipped_cases"]) == ["Src_case0", "Src_case1"]
    for case, file, what in (("Src_case0", grown, "size"), ("Src_case1", moved, "origin")):
        problem, = [p for p in report["problems"] if p["case"] == case]
        assert problem["fatal"] and problem["file"] == str(file) and "not on the grid" in problem["problem"] \
            and what in problem["problem"], problem
    assert sorted(json.loads((dataset / "dataset.json").read_text())["dataset"]) == ["Src_case2", "Src_case3"]


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_evaluate_names_a_damaged_prediction(tmp_path, capsys, kind):
    gt, pred, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    labels = np.zeros(SHAPE[::-1], np.uint8)
    labels[2:6, 3:9, 4:10] = 1
    for folder in (gt, pred):
        for case in ("a", "b"):
            write_image(sitk.GetImageFromArray(labels), folder / f"{case}.nii.gz")
    DAMAGE[kind][0](pred / "b.nii.gz")
    assert main(["evaluate", str(pred), str(gt), "--gt-labels", "liver", "--pred-labels", "liver", "--no-nsd",
                 "-np", "1", "-o", str(out)]) == 2
    error = _error_line(capsys.readouterr().err, "evaluate")
    assert str(pred / "b.nii.gz") in error and DAMAGE[kind][1] in error
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("dtype", ["uint8", "int16", ">i2", "uint16", "float32", "float64"])
def test_the_single_decode_reader_matches_simpleitk(tmp_path, dtype):
    """Masks and label maps are decoded once by our checked reader: same voxels and geometry as SimpleITK's."""
    array = (np.random.default_rng(0).random((11, 9, 7)) * 100).astype(dtype)
    image = nib.Nifti1Image(array, np.diag([-0.8, 0.7, 5.0, 1.0]))
    image.header.set_slope_inter(*((2.0, 5.0) if dtype == ">i2" else (1.0, 0.0)))
    for ending in (".nii.gz", ".nii"):
        nib.save(image, tmp_path / f"x{ending}")
        voxels, grid = read_image_array(tmp_path / f"x{ending}")
        reference = sitk.ReadImage(str(tmp_path / f"x{ending}"))
        assert np.allclose(voxels, sitk.GetArrayFromImage(reference)) and voxels.shape == (7, 9, 11)
        assert (grid.GetSpacing(), grid.GetOrigin(), grid.GetDirection()) == \
            (reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())


def test_all_nan_prediction_is_an_error_not_an_empty_one(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_image(sitk.GetImageFromArray(np.ones(SHAPE[::-1], np.uint8)), gt / "a.nii.gz")
    write_image(sitk.GetImageFromArray(np.full(SHAPE[::-1], np.nan, np.float32)), pred / "a.nii.gz")
    assert main(["evaluate", str(pred), str(gt), "--gt-labels", "liver", "--pred-labels", "liver", "--no-nsd",
                 "-np", "1", "-o", str(tmp_path / "out")]) == 2
    assert "NaN" in capsys.readouterr().err


def _hostile_source(raw: Path, case_ids: list[str]) -> Path:
    """A raw dataset whose dataset.json ``dataset`` keys are ``case_ids`` (each pointing at a valid case)."""
    write_raw(raw, "Dataset065_Hostile", {"background": 0, "liver": 1}, {"liver": "liver"}, range(1))
    folder = raw / "Dataset065_Hostile"
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["dataset"] = {case: {"images": ["imagesTr/case0_0000.nii.gz"], "label": "labelsTr/case0.nii.gz"}
                               for case in case_ids}
    write_json(dataset_json, folder / "dataset.json")
    return folder


def test_merge_never_writes_outside_its_dataset(nnunet_env, tmp_path):
    """A dataset.json key that climbs out of the output (the reported exploit) is a skipped case naming the
    dataset.json; nothing is written outside the merged dataset."""
    raw = Path(nnunet_env["nnUNet_raw"])
    target = tmp_path / "PWNED"
    escape = "x/" + "../" * (len(raw.parts) + 3) + str(target).lstrip("/")
    source = _hostile_source(raw, ["good", escape, "..", ".hidden", "new\nline"])
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["merge", "65", "-d", "66", "--name", "Merged", "-np", "1"]) == 0
    assert not list(tmp_path.rglob("PWNED*")) and not Path(str(target) + ".nii.gz").exists()
    dataset = raw / "Dataset066_Merged"
    report = _report(dataset)
    assert len(report["skipped_cases"]) == 4
    assert all(str(source / "dataset.json") in p["file"] for p in report["problems"])
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == ["Hostile_good.nii.gz"]
    added = sorted(set(tmp_path.rglob("*")) - set(before))
    assert all(p.is_relative_to(dataset) for p in added), [p for p in added if not p.is_relative_to(dataset)]


def test_merge_refuses_hostile_dataset_json_fields(nnunet_env, capsys):
    raw = Path(nnunet_env["nnUNet_raw"])
    folder = _hostile_source(raw, ["good"])
    dataset_json = json.loads((folder / "dataset.json").read_text())
    for field, value, message in (("file_ending", "/../../../x.nii.gz", "file_ending"),
                                  ("labels", {"background": 0, "liv\ner": 1}, "control characters"),
                                  ("labels", {"background": 0, "liver\u202e": 1}, "U+202E"),  # bidi override
                                  ("labels", {"background": 0, "liv\u200ber": 1}, "U+200B"),  # zero width
                                  ("labels", {"background": 0, "liver\x85": 1}, "U+0085")):  # C1 control
        write_json({**dataset_json, field: value}, folder / "dataset.json")
        assert main(["merge", "65", "-d", "67", "--name", "Bad"]) == 2
        error = _error_line(capsys.readouterr().err, "merge")
        assert str(folder / "dataset.json") in error and message in error
    assert main(["merge", "Dataset065_Hostile/../Dataset065_Hostile", "-d", "67", "--name", "Bad"]) == 2
    assert "path separator" in capsys.readouterr().err
    assert not [p for p in raw.iterdir() if "067" in p.name]


def test_output_paths_are_checked_to_stay_inside(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    assert path_inside(tmp_path / "out", "labelsTr/a.nii.gz") == tmp_path / "out/labelsTr/a.nii.gz"
    for relative in ("../a.nii.gz", "/etc/passwd", "link/a.nii.gz", "."):
        with pytest.raises(ValueError, match="lies outside"):
            path_inside(tmp_path / "out", relative)


def test_case_folders_that_are_hidden_dangling_odd_or_empty_are_reported(nnunet_env, tmp_path):
    src = tmp_path / "atlas"
    good = _atlas(src)
    shutil.copytree(good, src / ".hidden_case")
    shutil.copytree(good, src / "bad\tname")
    shutil.copytree(good, src / "no_masks")
    shutil.rmtree(src / "no_masks" / "segmentations")
    shutil.copytree(good, src / "other_masks_only")
    for mask in (src / "other_masks_only" / "segmentations").iterdir():
        mask.rename(mask.with_name(f"unrelated_{mask.name}"))
    (src / "dangling").symlink_to(tmp_path / "gone")
    (good / "segmentations" / "._liver.nii.gz").write_bytes(b"AppleDouble junk")
    assert main(["convert-abdomenatlas", str(src), "-d", "68", "-np", "1"]) == 0
    report = _report(Path(nnunet_env["nnUNet_raw"]) / "Dataset068_AbdomenAtlas")
    reasons = {p["case"]: p["problem"] for p in report["problems"]}
    assert "hidden folder" in reasons[".hidden_case"] and "dangling symbolic link" in reasons["dangling"]
    assert "no segmentations/ folder: the case annotates nothing" in reasons["no_masks"]
    assert "no mask of the selected classes" in reasons["other_masks_only"]
    assert "control characters" in reasons[repr("bad\tname")]
    assert report["converted_cases"] == 1
    assert any("._liver.nii.gz" in note for note in report["notes"])


def test_a_case_name_near_the_file_system_limit_converts(nnunet_env, tmp_path):
    """Measured: the temporary name of a legal 242-character case's image was too long and aborted the conversion."""
    src = tmp_path / "atlas"
    good = _atlas(src)
    long = "c" * (255 - len("_0000.nii.gz"))
    shutil.copytree(good, src / long)
    assert main(["convert-abdomenatlas", str(src), "-d", "68", "-np", "1"]) == 0
    dataset = Path(nnunet_env["nnUNet_raw"]) / "Dataset068_AbdomenAtlas"
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [f"{long}_0000.nii.gz", "hospA_0000_0000.nii.gz"]


def _overlapping_case(src: Path) -> Path:
    """One AbdomenAtlas case whose spleen mask overlaps the liver (a warning, fatal only with --strict)."""
    case = _atlas(src)
    liver = sitk.ReadImage(str(case / "segmentations/liver.nii.gz"))
    spleen = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "segmentations/spleen.nii.gz")))
    spleen[sitk.GetArrayFromImage(liver) > 0] = 1
    _write_mask(spleen, liver, case / "segmentations/spleen.nii.gz")
    return case


def _write_mask(array: np.ndarray, like: sitk.Image, path: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path), True)


def _clean_conversion(src: Path, tmp_path: Path, monkeypatch) -> str:
    """Digest of a fresh conversion of ``src`` (same ID and name) in another nnUNet_raw."""
    raw = tmp_path / "clean_raw"
    raw.mkdir()
    with monkeypatch.context() as m:
        m.setenv("nnUNet_raw", str(raw))
        return tree_digest(convert_abdomenatlas(src, 69, "Fixed"))


@pytest.mark.parametrize("fix", ["repair the mask", "delete the mask"])
def test_resume_converts_again_cases_whose_sources_changed(nnunet_env, tmp_path, monkeypatch, fix):
    src = tmp_path / "atlas"
    case = _overlapping_case(src)
    arguments = ["convert-abdomenatlas", str(src), "-d", "69", "--name", "Fixed", "-np", "1"]
    assert main([*arguments, "--strict"]) == 2  # the overlap is a problem; nothing published
    spleen = case / "segmentations/spleen.nii.gz"
    if fix == "repair the mask":
        liver = sitk.ReadImage(str(case / "segmentations/liver.nii.gz"))
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(spleen)))
        array[sitk.GetArrayFromImage(liver) > 0] = 0
        _write_mask(array, liver, spleen)
        assert main([*arguments, "--strict"]) == 0  # the same command now passes
    else:
        spleen.unlink()
        assert main(arguments) == 0  # the deleted mask's labels are not published
    dataset = Path(nnunet_env["nnUNet_raw"]) / "Dataset069_Fixed"
    assert tree_digest(dataset) == _clean_conversion(src, tmp_path, monkeypatch)


def _convert_in_child(src: str) -> None:
    # tqdm's default write lock is a multiprocessing lock that forked children share with this test's process: a
    # child killed while it holds it (writing its progress bar) would leave it taken and hang this process
    tqdm.set_lock(threading.RLock())
    convert_abdomenatlas(src, 70, "Killed", num_processes=1)


@pytest.mark.e2e
def test_conversion_killed_at_random_moments_resumes_to_the_clean_result(nnunet_env, tmp_path, monkeypatch):
    src = tmp_path / "atlas"
    write_abdomenatlas_dataset(src, hospitals_from_args(["hospA", "hospB"], ["hospB=liver,spleen"], SHAPE), 3)
    context = multiprocessing.get_context("fork")
    clean_raw = tmp_path / "raw_clean"
    clean_raw.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(clean_raw))
    start = time.perf_counter()
    child = context.Process(target=_convert_in_child, args=(str(src),))
    child.start()
    child.join()
    duration = time.perf_counter() - start
    assert child.exitcode == 0
    clean = tree_digest(clean_raw / "Dataset070_Killed")

    rng, kills, trial = random.Random(13), 0, 0
    while kills < 40:
        trial += 1
        assert trial <= 100, f"only {kills} of {trial - 1} runs were killed before finishing"
        raw = tmp_path / f"raw_{trial}"
        raw.mkdir()
        monkeypatch.setenv("nnUNet_raw", str(raw))
        child = context.Process(target=_convert_in_child, args=(str(src),))
        child.start()
        child.join(rng.uniform(0, duration))
        if child.is_alive():
            child.kill()
            kills += 1
        child.join()
        if not (raw / "Dataset070_Killed").exists():
            _convert_in_child(str(src))
        assert [p.name for p in raw.iterdir()] == ["Dataset070_Killed"], f"trial {trial}"
        assert tree_digest(raw / "Dataset070_Killed") == clean, f"trial {trial}"
        shutil.rmtree(raw)


BAD_ARGUMENTS = {  # subcommand: arguments that pass argparse but cannot work, and words of the error
    "demo": (["--out", "{file}"], "Not a directory"),
    "synth": (["-o", "{folder}"], "already exists"),
    "convert-abdomenatlas": (["{missing}", "-d", "3"], "is not a folder"),
    "convert-totalsegmentator": (["{folder}", "-d", "3", "--group", "organs"], "holds no"),
    "merge": (["201", "999", "-d", "5", "--name", "X"], "no dataset with ID 201"),
    "merge --map": (["201", "-d", "5", "--name", "X", "--map", "{bad_map}"], "is not a non-empty string"),
    "plan": (["--preset", "suprem", "-d", "999"], "no dataset with this ID"),
    "plan-transfer": (["-d", "999", "--pretrained", "{missing}"], "not found"),
    "split": (["-d", "999", "--train-cases", "2"], "no dataset with this ID"),
    "evaluate": (["{missing}", "{folder}", "-o", "{folder}/out"], "is not a folder"),
    "transfer-weights": (["-d", "999", "-o", "{folder}/w.pth", "{file}"], "no dataset with this ID"),
    "import-suprem": (["--arch", "unet", "-d", "999", "{file}"], "no dataset with this ID"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_every_subcommand_answers_bad_arguments_with_one_line(nnunet_env, tmp_path, capsys, case):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("not what was expected\n")
    (tmp_path / "bad_map.json").write_text(json.dumps({"*": {"tumor": ["kidney_left", 3]}}))
    places = {"file": tmp_path / "file", "folder": tmp_path / "folder", "missing": tmp_path / "missing",
              "bad_map": tmp_path / "bad_map.json"}
    arguments, words = BAD_ARGUMENTS[case]
    assert main([case.split()[0], *(a.format(**places) for a in arguments)]) == 2
    captured = capsys.readouterr()
    assert words in _error_line(captured.err, case.split()[0]) and "Traceback" not in captured.out


@pytest.mark.e2e
def test_bad_arguments_exit_2_without_traceback_in_a_real_process(nnunet_env, tmp_path):
    env = subprocess_env(nnunet_env)
    (tmp_path / "map.json").write_text(json.dumps({"*": {"tumor": ["a", "list"]}}))
    for arguments in (["merge", "201", "999", "-d", "5", "--name", "X"],
                      ["merge", "201", "-d", "5", "--name", "X", "--map", str(tmp_path / "map.json")]):
        result = subprocess.run(cli(*arguments), env=env, capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("nnunet-suprem merge: error: ")


def test_small_things(nnunet_env, tmp_path, capsys):
    """synth's folder follows the umask; messages show plain numbers; random bytes are not 'Python objects'."""
    old = os.umask(0o022)
    try:
        write_abdomenatlas_dataset(tmp_path / "synth", hospitals_from_args(["hospA"], [], SHAPE), 1)
    finally:
        os.umask(old)
    assert (tmp_path / "synth").stat().st_mode & 0o777 == 0o755

    case = _atlas(tmp_path / "atlas")
    mask = sitk.ReadImage(str(case / "segmentations/liver.nii.gz"))
    mask.SetSpacing([s * 2 for s in mask.GetSpacing()])
    sitk.WriteImage(mask, str(case / "segmentations/liver.nii.gz"), True)
    assert main(["convert-abdomenatlas", str(tmp_path / "atlas"), "-d", "71", "--classes", "liver"]) == 2
    out = capsys.readouterr().out
    assert "spacing (" in out and "np.float64" not in out

    (tmp_path / "random.pth").write_bytes(random.Random(1).randbytes(4096))
    from nnunet_suprem.transfer.checkpoint import load_weights_only
    with pytest.raises(ValueError) as error:
        load_weights_only(tmp_path / "random.pth")
    assert "not a readable PyTorch checkpoint" in str(error.value) and "Python objects" not in str(error.value)
