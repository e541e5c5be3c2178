"""Our commands' preprocessing (CaseJobPreprocessor): nnU-Net's output for a merged dataset, jobs that do not grow,
and a pool whose worker is killed."""
import inspect
import json
import os
import pickle
import signal
from pathlib import Path

import pytest

from conftest import cli, command, run, subprocess_env, tree_digest
from test_convert_totalsegmentator_and_merge import two_sources  # noqa: F401 (a fixture)
from nnunet_suprem.cli import main as cli_main
from nnunet_suprem.convert.merge import merge_datasets
from nnunet_suprem.jobs import map_with_progress
from nnunet_suprem.manifest import MANIFEST_KEY, build_manifest
from nnunet_suprem.planning.preprocessing import CaseJobPreprocessor

POOL = "2"  # processes: the jobs go through a process pool


@pytest.mark.e2e
def test_plan_preprocesses_a_merged_dataset_as_nnunet_does(two_sources, nnunet_env, tmp_path):  # noqa: F811
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"*": {"tumor": None}}))
    merge_datasets(["41", "42"], 50, "Merged", mapping_file=mapping)  # images referenced by `dataset` entries
    env = subprocess_env(nnunet_env)
    run(cli("plan", "--preset", "nnunet", "-d", "50", "-np", POOL), env)
    preprocessed = Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset050_Merged"
    ours = (preprocessed / "nnUNetPlans_3d_fullres").rename(tmp_path / "ours")
    our_plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert len(list(ours.glob("*.pkl"))) == 6
    assert sorted(p.name for p in (preprocessed / "gt_segmentations").iterdir()) == sorted(
        f"{source}_case{i}.nii.gz" for source, cases in (("Kidneys", range(3)), ("Vessels", range(3, 6))) for i in cases)

    run(command("nnUNetv2_plan_experiment", "-d", "50"), env)  # nnU-Net's own plans: the same
    assert json.loads((preprocessed / "nnUNetPlans.json").read_text()) == our_plans
    run(command("nnUNetv2_preprocess", "-d", "50", "-c", "3d_fullres", "-np", POOL), env)
    assert tree_digest(ours) == tree_digest(preprocessed / "nnUNetPlans_3d_fullres")  # byte for byte

    # what a case's job carries does not grow with the dataset.json (nnU-Net's sends all of it with every case)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    function, jobs, _ = CaseJobPreprocessor().case_jobs(50, "3d_fullres", "nnUNetPlans")
    small = len(pickle.dumps(function))
    listed = [f"Atlas_case{i}" for i in range(20000)]
    for case in listed:
        dataset_json["dataset"][case] = {"images": [f"../Dataset042_Vessels/imagesTr/{case}_0000.nii.gz"],
                                         "label": f"labelsTr/{case}.nii.gz"}
    dataset_json[MANIFEST_KEY]["groups"].update(build_manifest({"Atlas": (["liver"], listed)})["groups"])
    (preprocessed / "dataset.json").write_text(json.dumps(dataset_json))
    function, jobs, _ = CaseJobPreprocessor().case_jobs(50, "3d_fullres", "nnUNetPlans")
    assert len(jobs) == 20006 and len(pickle.dumps(function)) == small < 20000, small
    assert max(len(pickle.dumps(job)) for job in jobs) < 1000
    assert len(pickle.dumps(dataset_json)) > 2_000_000

    # a case identifier from a dataset.json someone brings is checked before it names an output file
    dataset_json["dataset"]["../escaped"] = dataset_json["dataset"].pop("Vessels_case3")
    (preprocessed / "dataset.json").write_text(json.dumps(dataset_json))
    with pytest.raises(ValueError, match=r"dataset.json: case identifier '../escaped' starts with '.'"):
        CaseJobPreprocessor().case_jobs(50, "3d_fullres", "nnUNetPlans")



def _killed_at_three(item: int) -> int:
    if item == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does
    return item


def test_a_worker_killed_without_an_error_stops_the_pool_instead_of_hanging():
    assert map_with_progress(_killed_at_three, [0, 1, 2], 2, "Preprocessing cases") == [0, 1, 2]
    with pytest.raises(RuntimeError, match="Preprocessing cases: a worker process died without an error"):
        map_with_progress(_killed_at_three, range(6), 2, "Preprocessing cases")


def test_nnunet_presets_keep_nnunets_patch(nnunet_env, capsys):
    assert cli_main(["plan", "--preset", "resenc-l", "-d", "50", "--patch-size", "96", "96", "96"]) == 2
    assert "--patch-size is for --preset suprem; the resenc-l preset keeps nnU-Net's patch" in capsys.readouterr().err


def test_nnunet_presets_name_nnunets_planners_and_their_plans():
    from nnunet_suprem.planning.preset import NNUNET_PRESETS, nnunet_planner

    for preset, (_, plans_name) in NNUNET_PRESETS.items():
        assert inspect.signature(nnunet_planner(preset)).parameters["plans_name"].default == plans_name, preset
