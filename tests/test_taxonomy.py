import pytest

from nnunet_suprem.taxonomy import (ABDOMENATLAS_1_0, ABDOMENATLAS_1_1, SUPREM_GROUPS, SYNONYMS, TAXONOMIES,
                                    TOTALSEGMENTATOR_V1, TOTALSEGMENTATOR_V1_TO_V2, TOTALSEGMENTATOR_V2,
                                    UNIVERSAL_MODEL_32, canonical_name, in_taxonomy_order, label_dict,
                                    laterality_partner, match_classes, normalise, totalsegmentator_version)


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


@pytest.mark.parametrize("key, size", [
    ("abdomenatlas1.0", 9), ("abdomenatlas1.1", 25), ("universal32", 32),
    ("totalsegmentator_v1", 104), ("totalsegmentator_v2", 117),
])
def test_taxonomy_sizes_and_uniqueness(key, size):
    classes = TAXONOMIES[key]
    assert len(classes) == size and len(set(classes)) == size


def test_label_values_match_the_sources():
    """Spot checks against the label values (1-based) of the source files."""
    def labels(classes, *values):
        return tuple(classes[v - 1] for v in values)
    assert labels(UNIVERSAL_MODEL_32, 25, 32) == ("celiac_truck", "kidney_cyst")
    assert labels(TOTALSEGMENTATOR_V1, 8, 18, 58, 93, 104) == (
        "inferior_vena_cava", "vertebrae_L5", "rib_left_1", "face", "urinary_bladder")
    assert labels(TOTALSEGMENTATOR_V2, 26, 51, 63, 92, 117) == (
        "vertebrae_S1", "heart", "inferior_vena_cava", "rib_left_1", "costal_cartilages")


def test_totalsegmentator_v1_to_v2_has_no_renames():
    assert TOTALSEGMENTATOR_V1_TO_V2 == {}
    assert set(TOTALSEGMENTATOR_V1) - set(TOTALSEGMENTATOR_V2) == {
        "heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
        "heart_ventricle_right", "pulmonary_artery", "face"}


def test_suprem_groups():
    assert {k: len(v) for k, v in SUPREM_GROUPS.items()} == {
        "organs": 17, "muscles": 21, "cardiac": 18, "vertebrae": 24, "ribs": 24}
    groups = list(SUPREM_GROUPS.values())
    assert all(len(set(g)) == len(g) and set(g) <= set(TOTALSEGMENTATOR_V1) for g in groups)
    assert sorted(c for g in groups for c in g) == sorted(TOTALSEGMENTATOR_V1)  # a partition of v1
    assert SUPREM_GROUPS["vertebrae"][0] == "vertebrae_L5" and SUPREM_GROUPS["vertebrae"][-1] == "vertebrae_C1"
    assert SUPREM_GROUPS["ribs"][:2] == ("rib_left_1", "rib_left_2") and SUPREM_GROUPS["ribs"][12] == "rib_right_1"


@pytest.mark.parametrize("classes, unpaired", [
    (TOTALSEGMENTATOR_V2, {"atrial_appendage_left", "lung_middle_lobe_right"}),
    (TOTALSEGMENTATOR_V1, {"lung_middle_lobe_right"}),
    (ABDOMENATLAS_1_1, set()), (UNIVERSAL_MODEL_32, set()),
])
def test_lateral_classes_have_partners(classes, unpaired):
    lateral = [c for c in classes if laterality_partner(c)]
    assert {c for c in lateral if laterality_partner(c) not in classes} == unpaired


@pytest.mark.parametrize("raw, expected", [
    (" Right Kidney.nii.gz", "right_kidney"), ("liver.nii", "liver"), ("a/b-c.d  e", "a_b_c_d_e"),
    ("__Gall__Bladder__", "gall_bladder"), ("kidney (right)", "kidney_right"),
])
def test_normalise(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize("canonical, aliases", [
    ("postcava", ["inferior vena cava", "IVC", "inferior_vena_cava", "vena_cava_inferior", "Postcava"]),
    ("gall_bladder", ["gallbladder", "Gall Bladder"]),
    ("bladder", ["urinary_bladder", "Urinary Bladder"]),
    ("kidney_right", ["right kidney", "right_kidney", "Right Kidney", "kidney (right)", "rkid"]),
    ("adrenal_gland_left", ["left adrenal gland", "Left Adrenal Gland", "lad"]),
    ("femur_left", ["head of femur left", "femur head left", "left femoral head", "Head_of_femur_L",
                    "Left Head of Femur"]),
    ("intestine", ["small bowel", "small_bowel", "small intestine"]),
    ("portal_vein_and_splenic_vein", ["portal vein and splenic vein", "Portal Vein and Splenic Vein"]),
    ("celiac_trunk", ["celiac_truck", "Celiac Truck"]),
    ("aorta", ["arota", "Aorta"]),
    ("esophagus", ["oesophagus", "eso"]),
    ("kidney_tumor", ["kidney tumour", "Kidney Tumor"]),
    ("colon_tumor", ["colon cancer primaries"]),
    ("rib_left_3", ["left rib 3", "rib_left_3.nii.gz"]),
    ("vertebrae_L5", ["vertebrae_l5", "Vertebrae L5"]),
])
def test_canonical_name_synonyms(canonical, aliases):
    assert canonical_name(canonical) == canonical
    assert {a: canonical_name(a) for a in aliases} == {a: canonical for a in aliases}


@pytest.mark.parametrize("name, expected", [
    ("kidney", "kidney"), ("lung", "lung"), ("adrenal", "adrenal"), ("tumor", "tumor"),
    ("prostate/uterus", "prostate_uterus"), ("lung_upper_lobe_left", "lung_upper_lobe_left"),
    ("left_right_thing", "left_right_thing"), ("left foo", "foo_left"),
])
def test_canonical_name_leaves_distinct_structures_apart(name, expected):
    assert canonical_name(name) == expected


def test_every_class_and_synonym_resolves_consistently():
    assert all(normalise(alias) == alias and canonical_name(alias) == name for alias, name in SYNONYMS.items())
    assert set(SYNONYMS.values()) <= {c for classes in TAXONOMIES.values() for c in classes}
    for classes in TAXONOMIES.values():
        for name in classes:
            assert canonical_name(name) == SYNONYMS.get(name, name)
            assert canonical_name(canonical_name(name)) == canonical_name(name)


def test_match_classes():
    names = ["Right Kidney", "IVC", "small bowel", "kidney", "lung_upper_lobe_left", "prostate/uterus"]
    assert match_classes(names, ABDOMENATLAS_1_1) == {
        "Right Kidney": "kidney_right", "IVC": "postcava", "small bowel": "intestine", "kidney": None,
        "lung_upper_lobe_left": None, "prostate/uterus": None}
    assert match_classes(ABDOMENATLAS_1_0, TOTALSEGMENTATOR_V2)["postcava"] == "inferior_vena_cava"
    assert match_classes(["gall_bladder"], SUPREM_GROUPS["organs"]) == {"gall_bladder": "gallbladder"}


def test_match_classes_collisions():
    with pytest.raises(ValueError, match="names: 'gallbladder' and 'Gall Bladder' are the same class 'gall_bladder'"):
        match_classes(["gallbladder", "Gall Bladder"], ABDOMENATLAS_1_1)
    with pytest.raises(ValueError, match="targets: 'postcava' and 'inferior_vena_cava' are the same class"):
        match_classes(["aorta"], ["postcava", "inferior_vena_cava"])
    assert match_classes(["liver", "liver"], ["liver"]) == {"liver": "liver"}  # one name twice is one class


def test_totalsegmentator_version():
    assert totalsegmentator_version(TOTALSEGMENTATOR_V1) == "v1"
    assert totalsegmentator_version(f"{c}.nii.gz" for c in TOTALSEGMENTATOR_V2) == "v2"
    assert totalsegmentator_version(["liver", "heart_myocardium"]) == "v1"
    assert totalsegmentator_version(["liver", "skull.nii.gz"]) == "v2"
    with pytest.raises(ValueError, match="cannot tell"):
        totalsegmentator_version(["liver", "spleen"])
    with pytest.raises(ValueError, match="mixed"):
        totalsegmentator_version(["face", "heart"])
