"""Resumable, atomic construction of an nnU-Net raw dataset.

A conversion builds ``$nnUNet_raw/.DatasetXXX_Name.partial`` (a fixed name, so a rerun finds
it), records every finished case there, and only at the end moves the folder to
``DatasetXXX_Name``. An interrupted run, rerun with the same options, skips the recorded
cases; a rerun with different options is refused instead of mixing two conversions.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from nnunet_suprem.fileio import move_directory_into_place, write_json
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

    def finished_cases(self) -> dict[str, dict]:
        """Records of the cases finished by this or an earlier, interrupted run."""
        return {p.stem: json.loads(p.read_text()) for p in sorted((self.path / _RECORDS).glob("*.json"))}

    def record(self, case: str, info: dict) -> None:
        """Mark ``case`` as finished (call after its files are in place)."""
        write_json(info, self.path / _RECORDS / f"{case}.json")

    def commit(self) -> Path:
        """Drop the bookkeeping and move the dataset into place (replacing an existing one)."""
        shutil.rmtree(self.path / _RECORDS)
        (self.path / _OPTIONS).unlink()
        move_directory_into_place(self.path, self.final)
        return self.final
