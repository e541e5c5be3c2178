import pytest

from nnunet_suprem.taxonomy import (ABDOMENATLAS_1_0, ABDOMENATLAS_1_1, in_taxonomy_order, label_dict,
                                    laterality_partner)


def test_abdomenatlas_orders():
    assert len(ABDOMENATLAS_1_1) == 25 and len(set(ABDOMENATLAS_1_1)) == 25
    assert ABDOMENATLAS_1_0 == ("aorta", "gall_bladder", "kidney_left", "kidney_right", "liver", "pancreas",
                                "postcava", "spleen", "stomach")
    assert ABDOMENATLAS_1_1[-1] == "rectum"


@pytest.mark.parametrize("name, partner", [
    ("kidney_left", "kidney_right"), ("adrenal_gland_right", "adrenal_gland_left"),
    ("rib_left_3", "rib_right_3"), ("liver", None), ("left_right_thing", None),
])
def test_laterality_partner(name, partner):
    assert laterality_partner(name) == partner


def test_label_dict_and_order():
    assert label_dict(["liver", "aorta"]) == {"background": 0, "liver": 1, "aorta": 2}
    with pytest.raises(ValueError, match="duplicate"):
        label_dict(["liver", "liver"])
    assert in_taxonomy_order(["spleen", "zebra", "aorta", "liver"]) == ["aorta", "liver", "spleen", "zebra"]
