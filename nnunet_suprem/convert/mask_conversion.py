"""What the mask-folder converters (AbdomenAtlas, TotalSegmentator) share: the ``--classes`` choice and one job
per case folder (layout: :mod:`nnunet_suprem.mask_folders`)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from nnunet_suprem.convert.cases import CaseResult, Problem, convert_mask_case
from nnunet_suprem.convert.driver import CaseJob, Conversion, skipped_case
from nnunet_suprem.mask_folders import MASKS, find_ct, has_masks, mask_files
from nnunet_suprem.taxonomy import match_classes


def select_classes(requested: Sequence[str] | None, taxonomy: Sequence[str], what: str) -> list[str]:
    """Classes to convert, in taxonomy order; ``requested`` names may be synonyms."""
    if not requested:
        return list(taxonomy)
    matches = match_classes(requested, taxonomy, names_source="--classes", targets_source=what)
    unknown = [name for name, target in matches.items() if target is None]
    if unknown:
        raise ValueError(f"--classes {unknown} are not {what} classes; choose from {list(taxonomy)}")
    return [c for c in taxonomy if c in matches.values()]


def add_case_folder(conversion: Conversion, folder: Path, classes: list[str], test: bool = False) -> list[str]:
    """Add ``<folder>/ct.nii.gz`` + ``segmentations/`` as a job (or as skipped); return unused mask names."""
    ct = find_ct(folder)
    if ct is None:
        conversion.skipped.append(skipped_case(folder.name, folder, "no ct.nii.gz in the case folder"))
        return []
    if not has_masks(folder):
        conversion.skipped.append(skipped_case(folder.name, folder, f"no {MASKS}/ folder: the case annotates nothing"))
        return []
    try:
        masks, unused = mask_files(folder / MASKS, classes)
    except ValueError as e:
        conversion.skipped.append(CaseResult(folder.name, problems=[Problem.from_error(folder / MASKS, e)]))
        return []
    if not masks:
        conversion.skipped.append(skipped_case(folder.name, folder / MASKS,
                                               "no mask of the selected classes: the case annotates nothing"))
        return unused
    convert = functools.partial(convert_mask_case, folder.name, ct, masks, conversion.labels)
    conversion.jobs.append(CaseJob(folder.name, convert, (ct, *masks.values()), str(folder), test))
    return unused


def left_out_entries(src: Path) -> list[CaseResult]:
    """Entries of ``src`` that look like case folders but are not converted: hidden folders, dangling links."""
    left_out = []
    for path in sorted(src.iterdir()):
        if path.is_symlink() and not path.exists():
            left_out.append(skipped_case(path.name, path, "dangling symbolic link"))
        elif path.is_dir() and path.name.startswith("."):
            left_out.append(skipped_case(path.name, path, "hidden folder (its name starts with '.'), not converted"))
    return left_out
