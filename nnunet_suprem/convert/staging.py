"""Resumable, atomic construction of an nnU-Net raw dataset.

A conversion builds ``$nnUNet_raw/.DatasetXXX_Name.partial`` (a fixed name, so a rerun finds
it), records every finished case there with the size and modification time of each source
file it read, and only at the end moves the folder to ``DatasetXXX_Name``. A rerun with the
same options resumes: it keeps the recorded cases whose sources are unchanged, converts the
others again, and removes every file no kept case owns (e.g. temporary files of a killed
run). A rerun with different options is refused instead of mixing two conversions. Before
the move, the folder must hold exactly the files of the converted cases.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

from nnunet_suprem.fileio import move_directory_into_place, path_inside, write_json
from nnunet_suprem.nnunet_env import new_dataset_folder

_OPTIONS = "conversion_options.json"
_RECORDS = ".cases"


class DatasetStaging:
    """The staging folder of one dataset conversion; see the module docstring."""

    def __init__(self, dataset_id: int, name: str, options: dict, overwrite: bool = False,
                 raw_folder: str | Path | None = None):
        self.final = new_dataset_folder(dataset_id, name, overwrite, raw_folder)
        self.name = self.final.name
        self.path = self.final.with_name(f".{self.name}.partial")
        options = json.loads(json.dumps(options))  # normalise tuples etc. as stored
        options_file = self.path / _OPTIONS
        if options_file.is_file():
            previous = json.loads(options_file.read_text())
            if previous != options:
                raise FileExistsError(
                    f"{self.path} holds an unfinished conversion with different options; rerun it with the same "
                    f"options to resume, or delete that folder to start again.\n  before: {previous}\n  now:    {options}")
        else:
            (self.path / _RECORDS).mkdir(parents=True, exist_ok=True)
            write_json(options, options_file)

    def output_path(self, relative: str) -> Path:
        """``relative`` (e.g. ``imagesTr/case_0000.nii.gz``) inside the staging folder, checked to stay inside."""
        return path_inside(self.path, relative)

    def finished_cases(self, sources: Mapping[str, dict[str, list[int]]]) -> dict[str, dict]:
        """Records of finished cases whose source fingerprint equals ``sources[case]``; other records are dropped."""
        records = {}
        for path in sorted((self.path / _RECORDS).iterdir()) if (self.path / _RECORDS).is_dir() else []:
            case = path.name.removesuffix(".json")
            try:
                record = json.loads(path.read_text()) if not path.name.startswith(".") else None
            except (OSError, ValueError):  # a record cut short by a kill
                record = None
            if record is not None and case in sources and record.get("sources") == sources[case]:
                records[case] = record
            else:
                path.unlink()
        return records

    def record(self, case: str, info: dict) -> None:
        """Mark ``case`` as finished (call after its files are in place); ``info`` holds its ``sources``."""
        write_json(info, path_inside(self.path / _RECORDS, f"{case}.json"))

    def data_files(self) -> set[str]:
        """Paths (relative to the staging folder) of every file outside the bookkeeping."""
        return {str(p.relative_to(self.path)) for p in self.path.rglob("*")
                if not p.is_dir() and p.relative_to(self.path).parts[0] not in (_RECORDS, _OPTIONS)}

    def remove_files_except(self, keep: set[str]) -> None:
        """Delete every data file not in ``keep`` (leftovers of a killed run, cases to convert again)."""
        for relative in self.data_files() - keep:
            (self.path / relative).unlink()

    def commit(self, expected: set[str]) -> Path:
        """Check the folder holds exactly ``expected`` files, drop the bookkeeping and move the dataset into place."""
        found = self.data_files()
        if found != expected:
            raise ValueError(f"{self.path}: refusing to publish: unexpected files {sorted(found - expected)[:10]}, "
                             f"missing files {sorted(expected - found)[:10]}")
        shutil.rmtree(self.path / _RECORDS)
        (self.path / _OPTIONS).unlink()
        move_directory_into_place(self.path, self.final)
        return self.final
