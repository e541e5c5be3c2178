"""merge with set-valued labels: mapping lists, side-less names, nnU-Net's region-based KiTS23 layout and the table of
public datasets (#29 items 1, 3, 4)."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import WORKERS, cli, command, run, subprocess_env
from nnunet_suprem.convert.merge import label_regions, merge_datasets
from nnunet_suprem.fileio import write_image, write_json
from nnunet_suprem.manifest import annotated_classes_by_case, label_sets
from nnunet_suprem.phantom import HOSPITALS, case_rng, synthesize_case
from nnunet_suprem.public_datasets import PUBLIC_DATASETS
from nnunet_suprem.taxonomy import (KNOWN_CLASSES, TOTALSEGMENTATOR_V1, TOTALSEGMENTATOR_V2, both_sides,
                                    canonical_name, set_name)

# nnU-Net's own KiTS23 conversion (nnunetv2/dataset_conversion/Dataset220_KiTS2023.py), as it writes dataset.json
KITS23_REGIONS = {"labels": {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2},
                  "regions_class_order": [1, 3, 2], "overwrite_image_reader_writer": "NibabelIOWithReorient",
                  "name": "KiTS2023", "description": "KiTS2023"}


def write_blocks(root: Path, folder: str, dataset_json: dict, values: list[int], cases: int = 1) -> None:
    """A raw dataset whose cases hold each of ``values`` in its own 2-voxel slab (tiny, any label layout)."""
    for index in range(cases):
        labels = np.repeat(np.array([0, *values], dtype=np.uint16), 2)[:, None, None] * np.ones((1, 3, 3), np.uint16)
        image = sitk.GetImageFromArray(labels)
        write_image(sitk.Cast(image, sitk.sitkInt16), root / folder / "imagesTr" / f"case{index}_0000.nii.gz")
        write_image(image, root / folder / "labelsTr" / f"case{index}.nii.gz")
    write_json({"channel_names": {"0": "CT"}, "numTraining": cases, "file_ending": ".nii.gz", **dataset_json},
               root / folder / "dataset.json")


def merged(out: Path) -> tuple[dict, np.ndarray]:
    dataset = json.loads((out / "dataset.json").read_text())
    first = sorted((out / "labelsTr").iterdir())[0]
    return dataset, sitk.GetArrayFromImage(sitk.ReadImage(str(first)))


def test_side_less_names_and_sets_of_one_class():
    assert both_sides("Kidneys") == both_sides("kidney") == ("kidney_left", "kidney_right")
    assert both_sides("adrenal glands") == ("adrenal_gland_left", "adrenal_gland_right")
    assert both_sides("femora") == both_sides("head of femur") == ("femur_left", "femur_right")
    assert both_sides("kidney_left") is None and both_sides("liver") is None and both_sides("tumor") is None
    assert set_name(["kidney_left", "kidney_right", "kidney_tumor"]) == "kidney_or_kidney_tumor"


def test_region_layouts_are_checked(tmp_path):
    json_file = tmp_path / "dataset.json"
    regions = label_regions(KITS23_REGIONS, json_file)
    assert regions == {"background": {0}, "kidney": {1, 2, 3}, "masses": {2, 3}, "tumor": {2}}
    crossing = {**KITS23_REGIONS, "labels": {"background": 0, "a": [1, 2], "b": [2, 3]}, "regions_class_order": [1, 3]}
    with pytest.raises(ValueError, match=f"{json_file}: labels 'a' and 'b' are regions that overlap without nesting"):
        label_regions(crossing, json_file)
    with pytest.raises(ValueError, match="regions_class_order gives region 'kidney' the value 2"):
        label_regions({**KITS23_REGIONS, "regions_class_order": [2, 3, 1]}, json_file)
    with pytest.raises(ValueError, match="need regions_class_order"):
        label_regions({"labels": KITS23_REGIONS["labels"]}, json_file)


def test_kits23_regions_become_classes_and_sets(nnunet_env):
    """Value 1 (kidney less masses) is 'a kidney', 3 (masses less tumour) 'a cyst', 2 the tumour."""
    raw = Path(nnunet_env["nnUNet_raw"])
    write_blocks(raw, "Dataset220_KiTS2023", KITS23_REGIONS, [1, 2, 3])
    dataset, labels = merged(merge_datasets(["220"], 50, "Kits", taxonomy="union"))
    assert dataset["labels"] == {"background": 0, "kidney_left": 1, "kidney_right": 2, "kidney_cyst_left": 3,
                                 "kidney_cyst_right": 4, "kidney_tumor": 5}
    assert label_sets(dataset) == {6: ("kidney", {"kidney_left", "kidney_right"}),
                                   7: ("kidney_cyst", {"kidney_cyst_left", "kidney_cyst_right"})}
    assert np.unique(labels[:, 0, 0]).tolist() == [0, 5, 6, 7] and labels[2, 0, 0] == 6 and labels[4, 0, 0] == 5
    assert "partial_labels" in dataset and not dataset["partial_labels"]["groups"]  # annotates every class


def test_mapping_lists_and_side_less_names_share_one_set(nnunet_env, tmp_path):
    """A list in --map is a set; 'kidneys' of another source is the same set, one value; a set of one class is it."""
    raw = Path(nnunet_env["nnUNet_raw"])
    write_blocks(raw, "Dataset061_Coarse", {"labels": {"background": 0, "renal": 1, "Kidneys": 2, "liver": 3}},
                 [1, 2, 3])
    write_blocks(raw, "Dataset062_Sided", {"labels": {"background": 0, "left kidney": 1, "right kidney": 2,
                                                      "lung": 3, "right lung": 4, "organ": 5}}, [1, 2, 5])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"61": {"renal": ["kidney_right", "kidney_left"]}, "62": {"organ": ["spleen"]}}))
    with pytest.raises(ValueError, match=r"Dataset062_Sided: labels \['lung'\] match no class"):
        merge_datasets(["61", "62"], 51, "Sets", mapping_file=mapping)  # 'lung' beside 'right lung' is no set
    mapping.write_text(json.dumps({"61": {"renal": ["kidney_right", "kidney_left"]},
                                   "62": {"organ": ["spleen"], "lung": None}}))
    dataset, labels = merged(merge_datasets(["61", "62"], 51, "Sets", mapping_file=mapping))
    assert dataset["labels"] == {"background": 0, "kidney_left": 1, "kidney_right": 2, "liver": 3, "spleen": 4,
                                 "lung_right": 5}
    assert dataset["partial_labels"]["sets"] == {"kidney": {"value": 6, "classes": ["kidney_left", "kidney_right"]}}
    assert labels[:, 0, 0].tolist() == [0, 0, 6, 6, 6, 6, 3, 3]
    by_case = annotated_classes_by_case(dataset)
    assert by_case["Coarse_case0"] == {"kidney_left", "kidney_right", "liver"}
    assert by_case["Sided_case0"] == {"kidney_left", "kidney_right", "lung_right", "spleen"}
    mapping.write_text(json.dumps({"61": {"renal": ["kidney_right", "tumor_x"]}}))
    with pytest.raises(ValueError, match=r"--map names classes outside abdomenatlas1.1: \['tumor_x'\]"):
        merge_datasets(["61"], 52, "Bad", mapping_file=mapping)


# Each public dataset as it comes: folder name, dataset.json name and labels in the dataset's own order and spelling.
PUBLIC_SOURCES = {
    "Dataset218_AMOS2022_postChallenge_task1": ["spleen", "right kidney", "left kidney", "gall bladder", "esophagus",
                                                "liver", "stomach", "arota", "postcava", "pancreas",
                                                "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
                                                "prostate/uterus"],
    "Dataset011_BTCV": ["spleen", "rkid", "lkid", "gall", "eso", "liver", "sto", "aorta", "IVC", "veins", "pancreas",
                        "rad", "lad"],
    "Dataset012_WORD": ["liver", "spleen", "kidney_left", "kidney_right", "stomach", "gallbladder", "esophagus",
                        "pancreas", "duodenum", "colon", "intestine", "adrenal", "rectum", "bladder", "Head_of_femur_L",
                        "Head_of_femur_R"],
    "Dataset022_FLARE22": ["liver", "right kidney", "spleen", "pancreas", "aorta", "IVC", "RAG", "LAG", "gallbladder",
                           "esophagus", "stomach", "duodenum", "left kidney"],
    "Dataset221_KiTS23": ["kidney", "tumor", "cyst"],
    "Dataset003_Liver": ["liver", "cancer"],
    "Dataset006_Lung": ["cancer"],
    "Dataset007_Pancreas": ["pancreas", "cancer"],
    "Dataset008_HepaticVessel": ["Vessel", "Tumour"],
    "Dataset009_Spleen": ["spleen"],
    "Dataset010_Colon": ["colon cancer primaries"],
    "Dataset013_CTORG": ["liver", "bladder", "lungs", "kidneys", "bone", "brain"],
    "Dataset014_AbdomenCT1K": ["liver", "kidney", "spleen", "pancreas"],
    "Dataset015_TotalSegmentator": list(TOTALSEGMENTATOR_V1),
    "Dataset016_TotalSegmentatorV2": list(TOTALSEGMENTATOR_V2),
    "Dataset023_AbdomenAtlas1.1Mini": ["aorta", "gall_bladder", "kidney_left", "kidney_right", "liver", "pancreas",
                                       "postcava", "spleen", "stomach"],
}
DATASET_NAMES = {"Dataset013_CTORG": "CT-ORG", "Dataset014_AbdomenCT1K": "AbdomenCT-1K", "Dataset003_Liver": "LiTS",
                 "Dataset016_TotalSegmentatorV2": "TotalSegmentator_v2"}


def test_public_datasets_merge_without_a_mapping_file(nnunet_env):
    raw = Path(nnunet_env["nnUNet_raw"])
    for folder, names in PUBLIC_SOURCES.items():
        dataset_json = {"labels": {"background": 0, **{n: i + 1 for i, n in enumerate(names)}},
                        "name": DATASET_NAMES.get(folder, folder[11:])}
        write_blocks(raw, folder, dataset_json, list(range(1, len(names) + 1)))
    dataset, _ = merged(merge_datasets(list(PUBLIC_SOURCES), 70, "Public", taxonomy="union", num_processes=2))
    labels, sets = dataset["labels"], dataset["partial_labels"]["sets"]
    lesions = {"liver_tumor", "pancreas_tumor", "kidney_tumor", "kidney_cyst_left", "kidney_cyst_right", "lung_tumor",
               "colon_tumor", "hepatic_vessel_tumor"}
    assert lesions <= set(labels) and set(labels) - {"background"} <= KNOWN_CLASSES
    assert not {"cancer", "tumour", "kidney", "lungs", "bone", "adrenal", "prostate_uterus"} & set(labels)
    assert {name: set(s["classes"]) for name, s in sets.items()} == {
        "kidney": {"kidney_left", "kidney_right"}, "kidney_cyst": {"kidney_cyst_left", "kidney_cyst_right"},
        "lung": {"lung_left", "lung_right"}, "adrenal_gland": {"adrenal_gland_left", "adrenal_gland_right"},
        "liver_or_liver_tumor": {"liver", "liver_tumor"}, "pancreas_or_pancreas_tumor": {"pancreas", "pancreas_tumor"},
        "kidney_or_kidney_cyst_or_kidney_tumor": {"kidney_left", "kidney_right", "kidney_tumor", "kidney_cyst_left",
                                                  "kidney_cyst_right"}}
    assert min(s["value"] for s in sets.values()) == max(labels.values()) + 1
    by_case = annotated_classes_by_case(dataset)
    assert by_case["Liver_case0"] == {"liver", "liver_tumor"} and by_case["Colon_case0"] == {"colon_tumor"}
    assert by_case["Pancreas_case0"] == {"pancreas", "pancreas_tumor"} and by_case["Lung_case0"] == {"lung_tumor"}
    assert by_case["CTORG_case0"] == {"liver", "bladder", "lung_left", "lung_right", "kidney_left", "kidney_right",
                                      "brain"}
    assert "prostate" not in by_case["AMOS2022_postChallenge_task1_case0"]


def test_the_table_names_taxonomy_classes():
    for dataset in PUBLIC_DATASETS:
        for meanings in (dataset.labels, dataset.regions):
            for meaning in meanings.values():
                for name in (meaning,) if isinstance(meaning, str) else meaning or ():
                    assert canonical_name(name) == name and name in KNOWN_CLASSES, (dataset.title, name)


@pytest.mark.e2e
def test_kits23_and_a_sided_source_through_nnunet_planning(nnunet_env):
    """merge (the command) of nnU-Net's KiTS23 layout and a sided source, then nnU-Net's plan_and_preprocess: the
    preprocessed KiTS cases hold the kidney set's value, the network gets one output per real class only."""
    raw = Path(nnunet_env["nnUNet_raw"])
    hospital = HOSPITALS["hospA"].with_shape((24, 24, 16))
    for index in range(3):
        phantom = synthesize_case(hospital, case_rng(0, hospital, index))
        kits = sitk.GetArrayFromImage(phantom.label_map({"kidney_left": 1, "kidney_right": 1, "spleen": 3}))
        kits[(kits == 1) & (np.indices(kits.shape)[0] % 4 == 0)] = 2  # 'tumour' slices through both kidneys
        kits_image = sitk.GetImageFromArray(kits)
        kits_image.CopyInformation(phantom.ct)
        write_image(phantom.ct, raw / "Dataset220_KiTS2023" / "imagesTr" / f"case_{index:05d}_0000.nii.gz")
        write_image(kits_image, raw / "Dataset220_KiTS2023" / "labelsTr" / f"case_{index:05d}.nii.gz")
        write_image(phantom.ct, raw / "Dataset041_Sided" / "imagesTr" / f"s{index}_0000.nii.gz")
        write_image(phantom.label_map({"kidney_left": 1, "kidney_right": 2, "liver": 3}),
                    raw / "Dataset041_Sided" / "labelsTr" / f"s{index}.nii.gz")
    write_json({"channel_names": {"0": "CT"}, "numTraining": 3, "file_ending": ".nii.gz", **KITS23_REGIONS},
               raw / "Dataset220_KiTS2023" / "dataset.json")
    write_json({"channel_names": {"0": "CT"}, "numTraining": 3, "file_ending": ".nii.gz",
                "labels": {"background": 0, "left kidney": 1, "right kidney": 2, "liver": 3}},
               raw / "Dataset041_Sided" / "dataset.json")
    env = subprocess_env(nnunet_env)
    run(cli("merge", "220", "41", "-d", "50", "--name", "KidneySets", "--taxonomy", "union", "-np", WORKERS), env)
    run(command("nnUNetv2_plan_and_preprocess", "-d", "50", "-c", "3d_fullres", "-np", WORKERS), env)

    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    preprocessed = Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset050_KidneySets"
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    sets = label_sets(dataset_json)
    kidney = next(value for value, (name, _) in sets.items() if name == "kidney")
    assert dataset_json["labels"] == {"background": 0, "kidney_left": 1, "kidney_right": 2, "liver": 3,
                                      "kidney_cyst_left": 4, "kidney_cyst_right": 5, "kidney_tumor": 6}
    label_manager = PlansManager(str(preprocessed / "nnUNetPlans.json")).get_label_manager(dataset_json)
    assert label_manager.num_segmentation_heads == 7 and kidney not in label_manager.all_labels
    folder = preprocessed / "nnUNetPlans_3d_fullres"
    cases = nnUNetDatasetBlosc2(str(folder), ["KiTS2023_case_00000", "Sided_s0"])
    kits_seg = np.asarray(cases.load_case("KiTS2023_case_00000")[1])
    sided_seg = np.asarray(cases.load_case("Sided_s0")[1])
    assert kidney in np.unique(kits_seg) and 6 in np.unique(kits_seg) and not np.isin(kits_seg, [1, 2]).any()
    assert {1, 2, 3} <= set(np.unique(sided_seg).tolist()) and not np.isin(sided_seg, list(sets)).any()


@pytest.mark.e2e
def test_set_labels_benchmark_smoke(nnunet_env, tmp_path):
    """benchmarks/set_labels.py --smoke: merge (the command, no mapping file for the set arm), nnU-Net's planning and
    preprocessing, SuPreMTrainer training and nnU-Net's predictor on each arm; no prediction holds a set's value."""
    out = tmp_path / "bench"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "set_labels.py"
    printed = run([sys.executable, str(script), "--smoke", "--out", str(out)], subprocess_env(nnunet_env)).stdout
    arms = {arm: json.loads((out / "nnUNet_preprocessed" / f"Dataset{i}_SetArm{i}" / "dataset.json").read_text())
            for arm, i in (("a", 621), ("b", 622), ("c", 623))}
    assert {arm: label_sets(d) for arm, d in arms.items()} == {
        "a": {6: ("kidney", {"kidney_left", "kidney_right"})}, "b": {}, "c": {}}
    annotated = {arm: annotated_classes_by_case(d)["Coarse_hospC_0000"] for arm, d in arms.items()}
    assert annotated == {"a": {"liver", "stomach", "kidney_left", "kidney_right"}, "b": {"liver", "stomach"},
                         "c": {"liver", "stomach", "kidney_left"}}
    predictions = sorted((out / "nnUNet_results").glob("Dataset62?_SetArm62?/*/fold_0/test_predictions/*.nii.gz"))
    assert len(predictions) == 3 * 3  # 3 arms, 1 test case of each hospital
    values = {v for p in predictions for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p)))).tolist()}
    assert values <= set(arms["a"]["labels"].values()) and 6 not in values
    table = printed[printed.index("Test Dice"):]
    for row in ("kidney_left", "kidney_right", "right share"):
        assert re.search(rf"^{row}( +\d\.\d{{3}}){{3}}", table, re.M), table
