"""The benchmark scripts' smoke modes run as their documentation shows them."""
import json
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
