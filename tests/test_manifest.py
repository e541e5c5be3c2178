import pytest

from nnunet_suprem.manifest import MANIFEST_KEY, annotated_classes_by_case, build_manifest, label_sets

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


def test_sets_round_trip():
    labels = {**LABELS, "kidney_right": 4, "ignore": 5}
    manifest = build_manifest({"kits": (["kidney_left", "kidney_right"], ["k_1"])},
                              sets={"kidney": (6, ["kidney_left", "kidney_right"])})
    assert manifest["format"] == "nnunet-suprem/2"
    assert label_sets({"labels": labels, MANIFEST_KEY: manifest}) == {6: ("kidney", {"kidney_left", "kidney_right"})}
    assert label_sets({"labels": labels}) == {}
    assert build_manifest({"a": (["liver"], ["a_1"])})["format"] == "nnunet-suprem/1"


@pytest.mark.parametrize("sets, message", [
    ({"kidney": (3, ["kidney_left", "spleen"])}, "must be above every label value"),   # a real class's value
    ({"kidney": (5, ["kidney_left", "spleen"]), "k2": (5, ["liver", "spleen"])}, "not shared"),
    ({"kidney": (5, ["kidney_left"])}, "two or more classes"),
    ({"kidney": (5, ["kidney_left", "pancreas"])}, "two or more classes of 'labels'"),
])
def test_set_errors(sets, message):
    dataset = {"labels": LABELS, MANIFEST_KEY: build_manifest({"a": (["liver"], ["a_1"])}, sets=sets)}
    with pytest.raises(ValueError, match=message):
        label_sets(dataset)


def test_sets_need_format_2():
    manifest = {"format": "nnunet-suprem/1", "groups": {}, "sets": {}}
    with pytest.raises(ValueError, match="needs format"):
        label_sets({"labels": LABELS, MANIFEST_KEY: manifest})
