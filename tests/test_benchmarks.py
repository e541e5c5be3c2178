"""The benchmark scripts' smoke modes run as their documentation shows them."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import run, subprocess_env
from nnunet_suprem.manifest import annotated_classes_by_case, group_of_case
from nnunet_suprem.taxonomy import ABDOMENATLAS_1_1

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.e2e
def test_scale_smoke_measures_every_stage_on_two_ranks(tmp_path):
    """``benchmarks/scale.py --smoke``: merge, plan, 2 torchrun ranks and the bookkeeping at two sizes, on a merged
    dataset with AbdomenAtlas 1.1's 25 labels and a manifest over its partially labelled sources."""
    out = tmp_path / "scale"
    env = subprocess_env({}, OMP_WAIT_POLICY="PASSIVE")
    printed = run([sys.executable, str(BENCHMARKS / "scale.py"), "--smoke", "--out", str(out)], env, 1800).stdout
    points = json.loads((out / "scale.json").read_text())["points"]
    assert [p["cases"] for p in points] == [20, 40]
    for point in points:
        assert point["merge"]["peak_mb"] > 0 and point["plan"]["seconds"] > 0
        ranks = point["train"]["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert all(0 < r["construction_s"] < r["first_iteration_s"] and r["iterations"] == 3 for r in ranks)
        assert point["bookkeeping"]["validation_cases"] == point["cases"] // 5
    merged = json.loads((out / "nnUNet_preprocessed" / "Dataset810_Scale810" / "dataset.json").read_text())
    assert list(merged["labels"])[1:] == list(ABDOMENATLAS_1_1)
    assert set(group_of_case(merged).values()) == {"ScaleOrgans", "ScaleKidneys", "ScaleVessels"}
    assert len(annotated_classes_by_case(merged)) == 20  # the Atlas half annotates all 25 classes
    assert "| train, rank 1: launch to first iteration |" in printed and "| 40 cases |" in printed


def load_gpu_check():
    """benchmarks/gpu_check.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_check_parts_run_outside_the_checkout_and_a_failure_shows_its_log(tmp_path):
    """A part's child runs in its log folder: from the checkout, ``python -m nnunet_suprem...`` would import the
    uninstalled source instead of the installed package (CI installs non-editable). A failed part's summary ends
    with the last lines of its log."""
    gpu_check = load_gpu_check()
    log = tmp_path / "part.log"
    status, _ = gpu_check.run_part([sys.executable, "-c", "import os; print(os.getcwd()); raise SystemExit(3)"],
                                   log, dict(os.environ), timeout=60)
    assert status == "FAIL (exit 3)"
    assert log.read_text().splitlines()[-1] == str(tmp_path)
    summary = gpu_check.Part("demo", status, 1.0, ["a number"], log).summary()
    assert summary[:2] == ["demo: FAIL (exit 3) (1 s)", "  a number"]
    assert summary[2] == f"  last lines of {log}:" and summary[-1] == f"    {tmp_path}"
    assert gpu_check.Part("cuda_step", "PASS", 2.0, [], log).summary() == ["cuda_step: PASS (2 s)"]
