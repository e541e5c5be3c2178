"""Write synthetic phantom datasets: AbdomenAtlas folder layout or an nnU-Net raw dataset.

Each hospital annotates only its ``annotated`` classes: in the AbdomenAtlas layout the
other classes simply have no mask file (as in partially labelled public releases); in the
nnU-Net layout they are background in ``labelsTr`` and the dataset.json manifest says
which classes each case really annotates. Test cases (``imagesTs``/``labelsTs``) are
always fully annotated, to measure what a model learned.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nnunet_suprem.fileio import staged_directory, write_image
from nnunet_suprem.jobs import default_num_processes, map_with_progress
from nnunet_suprem.manifest import MANIFEST_KEY, build_manifest
from nnunet_suprem.convert.driver import add_orientation_argument
from nnunet_suprem.nnunet_env import CANONICAL_READER, new_dataset_folder
from nnunet_suprem.phantom import (HOSPITALS, ORGAN_SCALE_RANGE, PHANTOM_CLASSES, Hospital, case_rng,
                                   check_organ_scale, synthesize_case)
from nnunet_suprem.taxonomy import in_taxonomy_order, label_dict


@dataclass(frozen=True)
class CaseSpec:
    """One case to generate: its identifier and where its random stream comes from."""
    case_id: str
    hospital: Hospital
    index: int
    seed: int
    organ_scale: float = 1.0

    def synthesize(self):
        return synthesize_case(self.hospital, case_rng(self.seed, self.hospital, self.index), self.organ_scale)


def case_specs(hospitals: Sequence[Hospital], num_cases: int, seed: int, first_index: int = 0,
               organ_scale: float = 1.0) -> list[CaseSpec]:
    """``num_cases`` cases per hospital, named ``<hospital>_<index>``."""
    check_organ_scale(organ_scale)
    return [CaseSpec(f"{h.name}_{i:04d}", h, i, seed, organ_scale)
            for h in hospitals for i in range(first_index, first_index + num_cases)]


def write_abdomenatlas_dataset(out_dir: str | Path, hospitals: Sequence[Hospital], num_cases: int, seed: int = 0,
                               num_processes: int = 1, overwrite: bool = False, organ_scale: float = 1.0) -> list[str]:
    """Write ``<out_dir>/<case>/ct.nii.gz`` and ``segmentations/<class>.nii.gz`` per annotated class.

    Returns the case identifiers. ``out_dir`` appears complete or not at all.
    """
    specs = case_specs(hospitals, num_cases, seed, organ_scale=organ_scale)
    with staged_directory(out_dir, overwrite) as staging:
        map_with_progress(functools.partial(_write_abdomenatlas_case, out_dir=staging), specs,
                          num_processes, desc="synth AbdomenAtlas")
    return [s.case_id for s in specs]


def _write_abdomenatlas_case(spec: CaseSpec, out_dir: Path) -> None:
    phantom = spec.synthesize()
    case_dir = out_dir / spec.case_id
    write_image(phantom.ct, case_dir / "ct.nii.gz")
    for name in spec.hospital.annotated_classes:
        write_image(phantom.mask(name), case_dir / "segmentations" / f"{name}.nii.gz")


def write_nnunet_dataset(dataset_id: int, name: str, hospitals: Sequence[Hospital], num_cases: int,
                         num_test_cases: int = 0, seed: int = 0, num_processes: int = 1,
                         overwrite: bool = False, raw_folder: str | Path | None = None,
                         keep_orientation: bool = False, organ_scale: float = 1.0,
                         absent_classes: Sequence[str] = ()) -> Path:
    """Write ``DatasetXXX_name`` into ``raw_folder`` (default ``$nnUNet_raw``) and return its path.

    Labels are the union of the hospitals' annotated classes and ``absent_classes`` in AbdomenAtlas order.
    ``absent_classes`` are classes the phantoms do not draw, annotated as absent (no voxel) in every case: a dataset
    then has a whole taxonomy's labels (AbdomenAtlas 1.1's 25 with the 9 the phantoms lack). When a hospital
    annotates fewer classes, its cases form a group of the partial-label manifest.
    """
    final = new_dataset_folder(dataset_id, name, overwrite, raw_folder)
    drawn = sorted(set(absent_classes) & set(PHANTOM_CLASSES))
    if drawn:
        raise ValueError(f"absent classes {drawn} are drawn by the phantoms")
    classes = in_taxonomy_order({c for h in hospitals for c in h.annotated_classes} | set(absent_classes))
    labels = label_dict(classes)
    train = case_specs(hospitals, num_cases, seed, organ_scale=organ_scale)
    test = case_specs(hospitals, num_test_cases, seed, num_cases, organ_scale)

    annotated = {h.name: in_taxonomy_order({*h.annotated_classes, *absent_classes}) for h in hospitals}
    groups = {h.name: (annotated[h.name], [s.case_id for s in train if s.hospital == h])
              for h in hospitals if annotated[h.name] != classes}
    extra = {MANIFEST_KEY: build_manifest(groups)} if groups else {}

    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    with staged_directory(final, overwrite) as staging:
        jobs = [(s, "imagesTr", "labelsTr") for s in train] + [(s, "imagesTs", "labelsTs") for s in test]
        map_with_progress(functools.partial(_write_nnunet_case, dataset_dir=staging, labels=labels), jobs,
                          num_processes, desc=f"synth {final.name}")
        generate_dataset_json(str(staging), channel_names={0: "CT"}, labels=labels, num_training_cases=len(train),
                              file_ending=".nii.gz", dataset_name=final.name,
                              description="Synthetic CT phantoms generated by nnunet-suprem",
                              license="CC0 (synthetic data)", converted_by="nnunet-suprem synth",
                              overwrite_image_reader_writer=None if keep_orientation else CANONICAL_READER, **extra)
    return final


def _write_nnunet_case(job: tuple[CaseSpec, str, str], dataset_dir: Path, labels: dict[str, int]) -> None:
    spec, images, label_folder = job
    phantom = spec.synthesize()
    annotated = set(spec.hospital.annotated_classes) if images == "imagesTr" else set(PHANTOM_CLASSES)
    values = {c: v for c, v in labels.items() if c in annotated}
    write_image(phantom.ct, dataset_dir / images / f"{spec.case_id}_0000.nii.gz")
    write_image(phantom.label_map(values), dataset_dir / label_folder / f"{spec.case_id}.nii.gz")


def parse_annotations(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["hospA=liver,spleen", ...]`` -> ``{"hospA": ("liver", "spleen")}``."""
    result = {}
    for item in items:
        hospital, sep, classes = item.partition("=")
        if not sep or not classes:
            raise ValueError(f"--annotate {item!r}: expected HOSPITAL=class1,class2,...")
        result[hospital] = tuple(c.strip() for c in classes.split(",") if c.strip())
    return result


def hospitals_from_args(names: Sequence[str], annotate: Sequence[str],
                        shape: Sequence[int] | None) -> list[Hospital]:
    """Built-in hospitals by name, with the given annotation subsets and grid shape."""
    unknown = sorted(set(names) - set(HOSPITALS))
    if unknown:
        raise ValueError(f"unknown hospitals {unknown}; built-in: {sorted(HOSPITALS)}")
    annotations = parse_annotations(annotate)
    stray = sorted(set(annotations) - set(names))
    if stray:
        raise ValueError(f"--annotate names hospitals that are not generated: {stray}")
    hospitals = []
    for name in names:
        h = HOSPITALS[name]
        if shape is not None:
            h = h.with_shape(tuple(shape))
        if name in annotations:
            h = dataclasses.replace(h, annotated=annotations[name])
        hospitals.append(h)
    return hospitals


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="generate synthetic CT phantoms (AbdomenAtlas layout or an nnU-Net raw dataset)",
        description="Generate CT-like phantoms with per-organ labels from simulated hospitals that differ in "
                    "spacing, size, orientation and noise, and optionally annotate only some classes each. "
                    f"Classes: {', '.join(PHANTOM_CLASSES)}. Hospitals: "
                    + "; ".join(f"{h.name} {h.shape} @ {h.spacing} mm {h.orientation}" for h in HOSPITALS.values()))
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-d", dest="dataset_id", type=int, help="write nnU-Net raw dataset DatasetXXX_NAME into $nnUNet_raw")
    where.add_argument("-o", dest="out_dir", help="write the AbdomenAtlas layout (<case>/ct.nii.gz, "
                                                  "<case>/segmentations/<class>.nii.gz) into this new folder")
    p.add_argument("--name", default="SynthCT", help="dataset name for -d (default: SynthCT)")
    p.add_argument("--hospitals", nargs="+", default=list(HOSPITALS), help="built-in hospitals to simulate")
    p.add_argument("--cases", type=int, default=4, help="training cases per hospital (default: 4)")
    p.add_argument("--test-cases", type=int, default=0,
                   help="fully annotated test cases per hospital in imagesTs/labelsTs (with -d; default: 0)")
    p.add_argument("--annotate", nargs="+", default=[], metavar="HOSPITAL=c1,c2",
                   help="classes a hospital annotates (default: all); the others stay unlabelled")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="voxel grid of every hospital (same field of view; spacing adapts)")
    p.add_argument("--organ-scale", type=float, default=1.0,
                   help=f"enlarge every organ smaller than the liver and lungs by this factor (vessels in "
                        f"cross-section only), in [{ORGAN_SCALE_RANGE[0]}, {ORGAN_SCALE_RANGE[1]}] (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("-np", dest="num_processes", type=int, default=default_num_processes(),
                   help="processes (default: nnUNet_def_n_proc or 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_orientation_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.cases < 1 or args.test_cases < 0:
        raise ValueError(f"--cases {args.cases} --test-cases {args.test_cases}: at least 1 training case and no "
                         "negative number of test cases per hospital")
    hospitals = hospitals_from_args(args.hospitals, args.annotate, args.shape)
    if args.dataset_id is not None:
        path = write_nnunet_dataset(args.dataset_id, args.name, hospitals, args.cases, args.test_cases, args.seed,
                                    args.num_processes, args.overwrite, keep_orientation=args.keep_orientation,
                                    organ_scale=args.organ_scale)
    else:
        if args.test_cases:
            raise ValueError("--test-cases needs -d (the AbdomenAtlas layout has no test split)")
        path = Path(args.out_dir)
        write_abdomenatlas_dataset(path, hospitals, args.cases, args.seed, args.num_processes, args.overwrite,
                                   args.organ_scale)
    print(f"wrote {path}")
