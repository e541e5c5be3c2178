"""convert-totalsegmentator (v1/v2 layouts, meta.csv splits, few-shot subsets) and merge of partial-label datasets."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import WORKERS, command, run, subprocess_env
from nnunet_suprem.convert import merge as merge_module
from nnunet_suprem.convert.merge import merge_datasets
from nnunet_suprem.convert.totalsegmentator import convert_totalsegmentator, few_shot_subset
from nnunet_suprem.fileio import write_image, write_json
from nnunet_suprem.manifest import annotated_classes_by_case, build_manifest
from nnunet_suprem.phantom import HOSPITALS, PHANTOM_CLASSES, case_rng, synthesize_case
from nnunet_suprem.taxonomy import SUPREM_GROUPS, TOTALSEGMENTATOR_V1, TOTALSEGMENTATOR_V2, canonical_name

SHAPE = (20, 20, 16)
HOSPITAL = HOSPITALS["hospA"].with_shape(SHAPE)


def _phantom(index):
    return synthesize_case(HOSPITAL, case_rng(0, HOSPITAL, index))


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def write_totalsegmentator(root: Path, version_classes, splits: dict[str, str], meta=True) -> None:
    """TotalSegmentator layout: phantom organs under their TotalSegmentator names, every other mask empty."""
    phantom_by_canonical = {canonical_name(c): c for c in PHANTOM_CLASSES}
    for index, case in enumerate(splits):
        p = _phantom(index)
        write_image(p.ct, root / case / "ct.nii.gz")
        empty = p.label_map({})
        for name in version_classes:
            organ = phantom_by_canonical.get(canonical_name(name))
            write_image(p.mask(organ) if organ else empty, root / case / "segmentations" / f"{name}.nii.gz")
    if meta:
        lines = ["image_id;age;gender;institute;study_type;split"]
        lines += [f"{case};60;f;A;ct abdomen;{split}" for case, split in splits.items()]
        (root / "meta.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.e2e
def test_totalsegmentator_v2_organs_with_splits(nnunet_env, tmp_path):
    splits = {"s0001": "train", "s0002": "val", "s0003": "test", "s0004": "train"}
    write_totalsegmentator(tmp_path / "ts", TOTALSEGMENTATOR_V2, splits)
    out = convert_totalsegmentator(tmp_path / "ts", 30, "organs", num_processes=1)
    dataset = json.loads((out / "dataset.json").read_text())
    assert out.name == "Dataset030_TotalSegmentator_organs"
    assert list(dataset["labels"])[1:] == list(SUPREM_GROUPS["organs"])
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["s0001.nii.gz", "s0002.nii.gz", "s0004.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["s0003_0000.nii.gz"]
    assert dataset["numTraining"] == 3 and "partial_labels" not in dataset  # every mask present
    liver = _array(out / "labelsTr/s0001.nii.gz") == dataset["labels"]["liver"]
    assert np.array_equal(liver, sitk.GetArrayFromImage(_phantom(0).mask("liver")) == 1)
    ivc = _array(out / "labelsTr/s0001.nii.gz") == dataset["labels"]["inferior_vena_cava"]
    assert np.array_equal(ivc, sitk.GetArrayFromImage(_phantom(0).mask("postcava")) == 1)
    env = subprocess_env(nnunet_env)
    run(command("nnUNetv2_extract_fingerprint", "-d", "30", "--verify_dataset_integrity", "-np", WORKERS), env)


def test_totalsegmentator_v1_few_shot_subset_is_reproducible(nnunet_env, tmp_path):
    splits = {f"s{i:04d}": "train" for i in range(6)}
    write_totalsegmentator(tmp_path / "ts", TOTALSEGMENTATOR_V1, splits, meta=False)
    a = convert_totalsegmentator(tmp_path / "ts", 31, "cardiac", name="A", train_cases=2, seed=4,
                                 classes=["urinary_bladder", "duodenum"])
    b = convert_totalsegmentator(tmp_path / "ts", 32, "cardiac", name="B", train_cases=2, seed=4,
                                 classes=["urinary_bladder", "duodenum"])
    names = lambda d: sorted(p.name for p in (d / "labelsTr").iterdir())  # noqa: E731
    assert names(a) == names(b) and len(names(a)) == 2
    assert few_shot_subset(list(splits), 2, 4) == [n.removesuffix(".nii.gz") for n in names(a)]
    assert json.loads((a / "dataset.json").read_text())["labels"] == {"background": 0, "duodenum": 1,
                                                                      "urinary_bladder": 2}
    with pytest.raises(ValueError, match="only 6 training cases"):
        convert_totalsegmentator(tmp_path / "ts", 33, "organs", train_cases=7)


def test_totalsegmentator_v2_has_no_v1_heart_chambers(nnunet_env, tmp_path):
    write_totalsegmentator(tmp_path / "ts", TOTALSEGMENTATOR_V2, {"s0001": "train"}, meta=False)
    with pytest.raises(ValueError, match="v2 has no masks for.*heart_myocardium"):
        convert_totalsegmentator(tmp_path / "ts", 34, "cardiac")


def write_raw(root: Path, name: str, labels: dict[str, int], organ_of: dict[str, str], cases: range,
              channel: str = "CT", extra: dict | None = None) -> None:
    """A raw dataset with its own label names and values (``organ_of``: label name -> phantom class)."""
    for index in cases:
        p = _phantom(index)
        write_image(p.ct, root / name / "imagesTr" / f"case{index}_0000.nii.gz")
        write_image(p.label_map({organ_of[n]: v for n, v in labels.items() if n in organ_of}),
                    root / name / "labelsTr" / f"case{index}.nii.gz")
    write_json({"channel_names": {"0": channel}, "labels": labels, "numTraining": len(cases),
                "file_ending": ".nii.gz", **(extra or {})}, root / name / "dataset.json")


@pytest.fixture
def two_sources(nnunet_env):
    raw = Path(nnunet_env["nnUNet_raw"])
    write_raw(raw, "Dataset041_Kidneys", {"background": 0, "Right Kidney": 1, "left kidney": 2, "Spleen": 3},
              {"Right Kidney": "kidney_right", "left kidney": "kidney_left", "Spleen": "spleen"}, range(3))
    write_raw(raw, "Dataset042_Vessels", {"background": 0, "inferior vena cava": 1, "Aorta": 2, "liver": 3, "tumor": 4},
              {"inferior vena cava": "postcava", "Aorta": "aorta", "liver": "liver"}, range(3, 6))
    return raw


def test_merge_relabels_and_records_partial_labels(two_sources, nnunet_env, tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"*": {"tumor": None}}))
    out = merge_datasets(["41", "42"], 50, "Merged", mapping_file=mapping, num_processes=2)
    dataset = json.loads((out / "dataset.json").read_text())
    assert list(dataset["labels"]) == ["background", "aorta", "kidney_left", "kidney_right", "liver", "postcava",
                                       "spleen"]
    manifest = annotated_classes_by_case(dataset)
    assert manifest["Kidneys_case0"] == {"kidney_left", "kidney_right", "spleen"}
    assert manifest["Vessels_case4"] == {"aorta", "liver", "postcava"}
    assert dataset["partial_labels"]["groups"].keys() == {"Kidneys", "Vessels"}
    assert not (out / "imagesTr").exists()  # images are referenced, not copied
    entry = dataset["dataset"]["Vessels_case3"]
    assert entry["images"] == ["../Dataset042_Vessels/imagesTr/case3_0000.nii.gz"]
    labels = _array(out / "labelsTr/Vessels_case3.nii.gz")
    p = _phantom(3)
    assert np.array_equal(labels == dataset["labels"]["postcava"], sitk.GetArrayFromImage(p.mask("postcava")) == 1)
    assert np.array_equal(labels == dataset["labels"]["aorta"], sitk.GetArrayFromImage(p.mask("aorta")) == 1)
    assert not (labels == dataset["labels"]["kidney_left"]).any()  # not annotated in that source
    # nnU-Net's integrity check and preprocessing of a merged dataset: tests/test_examples_and_demo.py (example b)


def test_merge_sends_each_case_a_payload_that_does_not_grow_with_the_source(nnunet_env, monkeypatch):
    """Every case's job goes to a worker process pickled; it must not carry the source's whole dataset.json, whose
    manifest lists every case (merging was quadratic in the number of cases)."""
    raw = Path(nnunet_env["nnUNet_raw"])
    listed = [f"case{i}" for i in range(20000)]  # a manifest of the whole release; 2 of its cases are on disk here
    write_raw(raw, "Dataset043_Large", {"background": 0, "liver": 1, "spleen": 2}, {"liver": "liver"}, range(2),
              extra={"partial_labels": build_manifest({"livers": (["liver"], listed)})})
    captured = []
    monkeypatch.setattr(merge_module, "run_conversion", lambda conversion, *args, **kwargs: captured.append(conversion))
    merge_datasets(["43"], 51, "Merged")
    sizes = [len(pickle.dumps(job.convert)) for job in captured[0].jobs]
    assert len(sizes) == 2 and max(sizes) < 4000, sizes


def test_merge_errors_name_the_problem(two_sources, nnunet_env, tmp_path):
    with pytest.raises(ValueError, match=r"Dataset042_Vessels: labels \['tumor'\] match no class"):
        merge_datasets(["41", "42"], 51, "Bad")
    write_raw(two_sources, "Dataset043_MR", {"background": 0, "liver": 1}, {"liver": "liver"}, range(1), channel="T1")
    with pytest.raises(ValueError, match="differ in channel_names"):
        merge_datasets(["41", "43"], 51, "Bad")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"42": {"tumor": "ignore"}}))
    out = merge_datasets(["41", "42"], 52, "WithIgnore", mapping_file=mapping, taxonomy="union")
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels["ignore"] == max(labels.values()) and "tumor" not in labels
    assert not [p for p in two_sources.iterdir() if p.name.startswith(".")]
