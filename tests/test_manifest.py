import pytest

from nnunet_suprem.manifest import MANIFEST_KEY, annotated_classes_by_case, build_manifest

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3}


def test_manifest_round_trip():
    dataset = {"labels": LABELS, MANIFEST_KEY: build_manifest({"a": (["liver"], ["a_2", "a_1"]),
                                                              "b": (["spleen", "kidney_left"], ["b_1"])})}
    assert dataset[MANIFEST_KEY]["groups"]["a"]["cases"] == ["a_1", "a_2"]
    assert annotated_classes_by_case(dataset) == {"a_1": {"liver"}, "a_2": {"liver"},
                                                  "b_1": {"spleen", "kidney_left"}}


def test_no_manifest_means_fully_annotated():
    assert annotated_classes_by_case({"labels": LABELS}) is None


@pytest.mark.parametrize("groups, message", [
    ({"a": (["pancreas"], ["a_1"])}, "not in 'labels'.*pancreas"),
    ({"a": (["liver"], ["x"]), "b": (["spleen"], ["x"])}, "more than one group"),
])
def test_manifest_errors(groups, message):
    with pytest.raises(ValueError, match=message):
        annotated_classes_by_case({"labels": LABELS, MANIFEST_KEY: build_manifest(groups)})


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown format"):
        annotated_classes_by_case({"labels": LABELS, MANIFEST_KEY: {"format": "v0", "groups": {}}})
