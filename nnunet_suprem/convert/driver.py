"""Run a conversion case by case: resumable, parallel, with a report instead of dying on the first bad case."""
from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from nnunet_suprem.convert.cases import CaseResult, Problem
from nnunet_suprem.convert.staging import DatasetStaging
from nnunet_suprem.fileio import check_name, source_fingerprint, write_json
from nnunet_suprem.jobs import default_num_processes, map_with_progress
from nnunet_suprem.manifest import MANIFEST_KEY, build_manifest
from nnunet_suprem.nnunet_env import CANONICAL_READER

REPORT_NAME = "conversion_report.json"
log = logging.getLogger(__name__)


class ConversionError(ValueError):
    """The conversion found problems it was told not to tolerate (``--strict``) or converted nothing."""


@dataclass(frozen=True)
class CaseJob:
    """One case to convert: ``convert(image_out, label_out)`` writes it and returns its result.

    ``case`` comes from user data (a folder name, a dataset.json key): it is checked before
    anything is written, and a bad one is reported against ``origin``.
    """
    case: str
    convert: Callable[[Path, Path], CaseResult]
    sources: tuple[Path, ...]  # every file the conversion reads; a change makes a resumed run convert it again
    origin: str  # where the case comes from: its folder, or the dataset.json that lists it
    test: bool = False  # goes to imagesTs/labelsTs
    dataset_entry: dict | None = None  # dataset.json "dataset" entry, for datasets that reference their images
    writes_image: bool = True  # False: only the label map is written (the entry references the image)

    def outputs(self, file_ending: str) -> list[str]:
        """Files this case puts in the dataset, relative to its folder."""
        images, labels = ("imagesTs", "labelsTs") if self.test else ("imagesTr", "labelsTr")
        return [*([f"{images}/{self.case}_0000{file_ending}"] if self.writes_image else []),
                f"{labels}/{self.case}{file_ending}"]


@dataclass
class Conversion:
    """What a converter found before converting: the jobs, and cases it could not even start."""
    jobs: list[CaseJob]
    labels: dict[str, int]
    skipped: list[CaseResult] = field(default_factory=list)  # e.g. no CT: listed in the report
    notes: list[str] = field(default_factory=list)  # information for the report (unused masks, ...)
    channel_names: dict[str, str] = field(default_factory=lambda: {"0": "CT"})
    sources: dict[str, str] = field(default_factory=dict)  # case -> source name, names manifest groups
    reader: str | None = CANONICAL_READER  # dataset.json overwrite_image_reader_writer (None: nnU-Net's default)
    sets: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # manifest sets: name -> (value, classes)


def _run_job(job_and_sources: tuple[CaseJob, dict], staging: DatasetStaging, file_ending: str) -> dict:
    job, sources = job_and_sources
    paths = [staging.output_path(relative) for relative in job.outputs(file_ending)]
    result = job.convert(paths[0], paths[-1])
    info = {**result.to_json(), "test": job.test, "sources": sources}
    if result.converted:
        staging.record(job.case, info)
    return info


def _check_case_names(jobs: list[CaseJob]) -> tuple[list[CaseJob], list[CaseResult]]:
    """Jobs whose case identifier is a safe, unique file name, and a skipped result for each other one."""
    valid, invalid, seen = [], [], set()
    for job in jobs:
        try:
            check_name(job.case, "case identifier", job.origin)
            if job.case in seen:
                raise ValueError(f"{job.origin}: case identifier {job.case!r} occurs twice")
        except ValueError as e:
            invalid.append(CaseResult(repr(job.case), problems=[Problem.from_error(job.origin, e)]))
            continue
        seen.add(job.case)
        valid.append(job)
    return valid, invalid


def partial_label_groups(results: list[dict], labels: Mapping[str, int],
                         sources: Mapping[str, str]) -> dict[str, tuple[list[str], list[str]]]:
    """Group training cases that annotate fewer than all labels by source and annotated set.

    A group is named after its source (``partial`` without one), with a number when a source
    has several annotated sets.
    """
    everything = [n for n in labels if n not in ("background", "ignore")]
    by_set: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for r in results:
        if not r["test"] and set(r["annotated"]) != set(everything):
            key = (sources.get(r["case"], "partial"), tuple(n for n in everything if n in r["annotated"]))
            by_set.setdefault(key, []).append(r["case"])
    groups = {}
    for source in sorted({s for s, _ in by_set}):
        sets = sorted((a for s, a in by_set if s == source), key=lambda a: (-len(a), a))
        for i, annotated in enumerate(sets):
            name = source if len(sets) == 1 else f"{source}_{i + 1}"
            groups[name] = (list(annotated), by_set[source, annotated])
    return groups


def run_conversion(conversion: Conversion, staging: DatasetStaging, source: str, num_processes: int,
                   strict: bool, dataset_json_extra: Mapping | None = None, file_ending: str = ".nii.gz") -> Path:
    """Convert every job not finished yet, write dataset.json and the report, and move the dataset into place."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    jobs, invalid = _check_case_names(conversion.jobs)
    sources = {job.case: source_fingerprint(job.sources) for job in jobs}
    finished = staging.finished_cases(sources)
    staging.remove_files_except({f for job in jobs if job.case in finished for f in job.outputs(file_ending)})
    todo = [(job, sources[job.case]) for job in jobs if job.case not in finished]
    if finished:
        log.info(f"resuming: {len(finished)} of {len(jobs)} cases were converted by an earlier run with the same sources")
    new = map_with_progress(functools.partial(_run_job, staging=staging, file_ending=file_ending), todo,
                            num_processes, desc=f"converting {staging.name}")
    skipped_early = [{**s.to_json(), "test": False} for s in (*conversion.skipped, *invalid)]
    results = sorted([*finished.values(), *new, *skipped_early], key=lambda r: r["case"])
    for r in results:
        r.pop("sources", None)
    converted = [r for r in results if not any(p["fatal"] for p in r["problems"])]
    skipped = [r["case"] for r in results if any(p["fatal"] for p in r["problems"])]
    problems = [{"case": r["case"], **p} for r in results for p in r["problems"]]
    training = [r for r in converted if not r["test"]]
    groups = partial_label_groups(training, conversion.labels, conversion.sources)
    report = {
        "source": source,
        "dataset": staging.name,
        "converted_cases": len(converted),
        "skipped_cases": sorted(skipped),
        "partially_annotated_cases": sum(len(cases) for _, cases in groups.values()),
        "problems": problems,
        "notes": conversion.notes,
    }
    write_json(report, staging.path / REPORT_NAME)
    _log_summary(report)
    if strict and problems:
        raise ConversionError(f"{len(problems)} problem(s) and --strict: nothing was published; see "
                              f"{staging.path / REPORT_NAME}. Fix them and rerun the same command to resume.")
    if not training:
        raise ConversionError(f"no training case could be converted from {source}; see {staging.path / REPORT_NAME}")

    published = {r["case"] for r in converted}
    entries = {job.case: job.dataset_entry for job in jobs if job.dataset_entry is not None and
               job.case in published and not job.test}
    extra = {**(dataset_json_extra or {}), **({"dataset": entries} if entries else {}),
             **({MANIFEST_KEY: build_manifest(groups, conversion.sets)} if groups or conversion.sets else {})}
    generate_dataset_json(str(staging.path), channel_names=conversion.channel_names, labels=conversion.labels,
                          num_training_cases=len(training), file_ending=file_ending, dataset_name=staging.name,
                          converted_by="nnunet-suprem", overwrite_image_reader_writer=conversion.reader, **extra)
    expected = {f for job in jobs if job.case in published for f in job.outputs(file_ending)}
    return staging.commit(expected | {"dataset.json", REPORT_NAME})


def _log_summary(report: dict) -> None:
    log.info(f"{report['dataset']}: converted {report['converted_cases']} case(s), skipped {len(report['skipped_cases'])}, "
          f"{report['partially_annotated_cases']} partially annotated, {len(report['problems'])} problem(s)")
    for p in report["problems"][:20]:
        log.info(f"  [{'skipped' if p['fatal'] else 'warning'}] {p['case']}: {p['file']}: {p['problem']}")
    if len(report["problems"]) > 20:
        log.info(f"  ... {len(report['problems']) - 20} more in {REPORT_NAME}")


def skipped_case(case: str, origin: str | Path, problem: str) -> CaseResult:
    """The result of a case that cannot be converted at all (reported and skipped)."""
    return CaseResult(case, problems=[Problem(str(origin), problem, True)])


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options every converter shares."""
    p.add_argument("-np", dest="num_processes", type=int, default=default_num_processes(),
                   help="cases converted in parallel (default: nnUNet_def_n_proc or 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this ID and name")
    p.add_argument("--strict", action="store_true", help="any problem in any case is fatal")
    add_orientation_argument(p)


def add_orientation_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-orientation", action="store_true",
                   help=f"do not set overwrite_image_reader_writer={CANONICAL_READER} in dataset.json (by default "
                        "nnU-Net then sees every case in RAS, which SuPreMTrainer needs to mirror left/right safely)")
