"""What the label names of public CT datasets mean in the taxonomy, per dataset: the one table of them.

``merge`` reads a source with this table when the source's folder name (after ``DatasetXXX_``) or its dataset.json
``name`` or ``description`` is one of a dataset's names (or starts with it and ``_``) *and* every label of the
source is one of that dataset's label names: MSD's "cancer" is a liver tumour in Task03_Liver and a pancreas tumour
in Task07_Pancreas. A label means a class, a set of classes (a tuple: "one of these", see
:mod:`nnunet_suprem.manifest`) or None (dropped to background, which is true where the source annotates none of the
classes the label could stand for). Label names are :func:`~nnunet_suprem.taxonomy.normalise`\\ d; classes are
canonical taxonomy names. ``regions`` give the meaning of a region of nnU-Net's region-based format (the union of
what its values mean; a value means its smallest region less the regions inside it).

Sources of the label names (each dataset's own dataset.json or label list):
- AMOS22: amos22/dataset.json (zenodo.org/records/7155725), kept by nnU-Net's Dataset218_Amos2022_task1.py.
- BTCV: MONAI's dataset_0.json of the Multi-Atlas Labeling Beyond the Cranial Vault challenge (abbreviations) and
  the challenge's label list (full names).
- WORD: WORD's dataset.json (github.com/HiLab-git/WORD).
- FLARE22: FLARE22's dataset.json (flare22.grand-challenge.org, the 13 organs).
- KiTS23: github.com/neheller/kits23 (1 kidney, 2 tumor, 3 cyst); nnU-Net's Dataset220_KiTS2023.py writes the
  regions ``kidney`` (1, 2, 3), ``masses`` (2, 3), ``tumor`` 2.
- MSD: the Medical Segmentation Decathlon's TaskXX dataset.json files (medicaldecathlon.com), as
  ``nnUNetv2_convert_MSD_dataset`` keeps them (folder DatasetXXX_<task name>).
- CT-ORG: TCIA CT-ORG (Rister et al. 2020): 1 liver, 2 bladder, 3 lungs, 4 kidneys, 5 bone, 6 brain.
- AbdomenCT-1K: github.com/JunMa11/AbdomenCT-1K (1 liver, 2 kidney, 3 spleen, 4 pancreas); its organs include the
  tumours of the MSD and KiTS cases it took over (Ma et al., TPAMI 2021).
- TotalSegmentator v1/v2 and AbdomenAtlas 1.0/1.1: their class lists in :mod:`nnunet_suprem.taxonomy`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from nnunet_suprem.taxonomy import (ABDOMENATLAS_1_1, TOTALSEGMENTATOR_V1, TOTALSEGMENTATOR_V2, canonical_name,
                                    normalise)

Meaning = str | tuple[str, ...] | None
"""A class, a set of classes ("one of these") or None (drop)."""

KIDNEYS = ("kidney_left", "kidney_right")
KIDNEY_CYSTS = ("kidney_cyst_left", "kidney_cyst_right")  # sided as in TotalSegmentator v2, like the kidneys
KIDNEY_LESIONS = ("kidney_tumor", *KIDNEY_CYSTS)


@dataclass(frozen=True)
class PublicDataset:
    """A public dataset: the names it goes by and what its labels (and regions) mean."""
    title: str
    names: tuple[str, ...]
    labels: Mapping[str, Meaning]
    regions: Mapping[str, Meaning] = field(default_factory=dict)


def _as_named(classes: Iterable[str]) -> dict[str, Meaning]:
    return {normalise(name): canonical_name(name) for name in classes}


_MSD = "Medical Segmentation Decathlon "
PUBLIC_DATASETS: tuple[PublicDataset, ...] = (
    PublicDataset("AMOS22", ("amos", "amos22", "amos2022"), {
        **_as_named(("spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
                     "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
                     "bladder")),
        "prostate_uterus": None,  # prostate or uterus by sex: no class of its own; AMOS then annotates neither
    }),
    PublicDataset("BTCV", ("btcv", "synapse", "multi_atlas_labeling"), _as_named((
        "spleen", "rkid", "lkid", "gall", "eso", "liver", "sto", "aorta", "IVC", "veins", "pancreas", "rad", "lad",
        "right kidney", "left kidney", "gallbladder", "esophagus", "stomach", "inferior vena cava",
        "portal vein and splenic vein", "right adrenal gland", "left adrenal gland"))),
    PublicDataset("WORD", ("word",), {
        **_as_named(("liver", "spleen", "kidney_left", "kidney_right", "stomach", "gallbladder", "esophagus",
                     "pancreas", "duodenum", "colon", "intestine", "rectum", "bladder", "Head_of_femur_L",
                     "Head_of_femur_R")),
        "adrenal": ("adrenal_gland_left", "adrenal_gland_right"),
    }),
    PublicDataset("FLARE22", ("flare", "flare22", "flare2022"), _as_named((
        "liver", "right kidney", "spleen", "pancreas", "aorta", "IVC", "RAG", "LAG", "gallbladder", "esophagus",
        "stomach", "duodenum", "left kidney", "inferior vena cava", "right adrenal gland", "left adrenal gland"))),
    PublicDataset("KiTS23", ("kits", "kits19", "kits21", "kits23", "kits2023"),
                  {"kidney": KIDNEYS, "tumor": "kidney_tumor", "cyst": KIDNEY_CYSTS},
                  regions={"kidney": KIDNEYS + KIDNEY_LESIONS, "masses": KIDNEY_LESIONS, "tumor": "kidney_tumor"}),
    PublicDataset(_MSD + "Task03_Liver", ("liver", "lits", "task03_liver"),
                  {"liver": "liver", "cancer": "liver_tumor"}),
    PublicDataset(_MSD + "Task06_Lung", ("lung", "task06_lung"), {"cancer": "lung_tumor"}),
    PublicDataset(_MSD + "Task07_Pancreas", ("pancreas", "task07_pancreas"),
                  {"pancreas": "pancreas", "cancer": "pancreas_tumor"}),
    PublicDataset(_MSD + "Task08_HepaticVessel", ("hepaticvessel", "hepatic_vessel", "task08_hepaticvessel"),
                  {"vessel": "hepatic_vessel", "tumour": "hepatic_vessel_tumor"}),
    PublicDataset(_MSD + "Task09_Spleen", ("spleen", "task09_spleen"), {"spleen": "spleen"}),
    PublicDataset(_MSD + "Task10_Colon", ("colon", "task10_colon"),
                  {"colon_cancer_primaries": "colon_tumor", "cancer": "colon_tumor"}),
    PublicDataset("CT-ORG", ("ct_org", "ctorg"), {
        "liver": "liver", "bladder": "bladder", "lungs": ("lung_left", "lung_right"), "kidneys": KIDNEYS,
        "brain": "brain",
        "bone": None,  # every bone: CT-ORG annotates no single bone class, so its bones are background to them
    }),
    PublicDataset("AbdomenCT-1K", ("abdomenct_1k", "abdomenct1k"), {
        "liver": ("liver", "liver_tumor"), "kidney": KIDNEYS + KIDNEY_LESIONS, "spleen": "spleen",
        "pancreas": ("pancreas", "pancreas_tumor"),
    }),
    PublicDataset("TotalSegmentator v1", ("totalsegmentator", "totalsegmentator_v1"),
                  _as_named(TOTALSEGMENTATOR_V1)),
    PublicDataset("TotalSegmentator v2", ("totalsegmentator", "totalsegmentator_v2"),
                  _as_named(TOTALSEGMENTATOR_V2)),
    PublicDataset("AbdomenAtlas 1.0/1.1", ("abdomenatlas", "abdomenatlas1_0", "abdomenatlas1_1", "abdomenatlas_1_0",
                                           "abdomenatlas_1_1", "abdomenatlas1_1mini", "abdomenatlas1_0mini"),
                  _as_named(ABDOMENATLAS_1_1)),
)
"""Every public dataset the table knows."""


def _identified_by(dataset: PublicDataset, identifiers: set[str]) -> bool:
    return any(i == name or i.startswith(f"{name}_") for i in identifiers for name in dataset.names)


def public_dataset_meanings(folder_name: str, dataset_json: Mapping, region_based: bool
                            ) -> tuple[str, dict[str, Meaning]] | None:
    """``(title, {source label: meaning})`` of the public dataset a source is, or None when it is none of them.

    ``folder_name`` is ``DatasetXXX_Name``; ``region_based``: read the table's regions. ValueError when two
    datasets of the table fit the source and mean different things by its labels.
    """
    identifiers = {normalise(str(dataset_json.get(key, ""))) for key in ("name", "description")}
    identifiers = {i for i in identifiers | {normalise(folder_name[11:])} if i}
    labels = [name for name in dataset_json["labels"] if name not in ("background", "ignore")]
    found: dict[str, dict[str, Meaning]] = {}
    for dataset in PUBLIC_DATASETS:
        table = dataset.regions if region_based else dataset.labels
        if _identified_by(dataset, identifiers) and all(normalise(label) in table for label in labels):
            found[dataset.title] = {label: table[normalise(label)] for label in labels}
    if len({repr(sorted(m.items())) for m in found.values()}) > 1:
        raise ValueError(f"{folder_name}: the label names fit several public datasets that read them differently: "
                         f"{sorted(found)}; map them with --map")
    return next(iter(found.items()), None)
