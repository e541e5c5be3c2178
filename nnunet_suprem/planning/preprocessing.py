"""nnU-Net's preprocessing of one configuration, with per-case jobs that do not grow with the dataset.

nnU-Net's ``DefaultPreprocessor.run`` (nnunetv2 2.8) pickles the whole dataset.json into every case's job, in the
pool's one task-handler thread. A merged dataset's dataset.json lists every case (nnU-Net's ``dataset`` entries
pointing at the source images, and the partial-label manifest), so the jobs grow with the cases and the stage with
their square: 2.47 MB per job and 247 of 464 s at 10,000 cases (docs/scaling.md). :class:`CaseJobPreprocessor`
gives the same output with jobs that carry only what preprocessing a case reads of dataset.json.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunet_suprem.fileio import check_name, path_inside
from nnunet_suprem.jobs import map_with_progress
from nnunet_suprem.nnunet_env import dataset_folder_name, preprocessed_root, raw_root

CASE_KEYS = ("labels", "regions_class_order")
"""What preprocessing one case reads of dataset.json: its label manager's arguments (``PlansManager.get_label_manager``)."""


def case_dataset_json(dataset_json: dict) -> dict:
    """The part of ``dataset_json`` that preprocessing one case reads (:data:`CASE_KEYS`)."""
    return {key: dataset_json[key] for key in CASE_KEYS if key in dataset_json}


def _preprocess_case(job: tuple[str, list[str], str], preprocessor: DefaultPreprocessor,
                     plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                     dataset_json: dict) -> None:
    output_truncated, images, label = job
    preprocessor.run_case_save(output_truncated, images, label, plans_manager, configuration_manager, dataset_json)


class CaseJobPreprocessor(DefaultPreprocessor):
    """nnU-Net's ``DefaultPreprocessor``, whose ``run`` sends each case only :func:`case_dataset_json`.

    The cases are preprocessed by nnU-Net's ``run_case_save``; ``run`` differs from nnU-Net's in what a job carries
    and in how the pool is driven (:func:`nnunet_suprem.jobs.map_with_progress`: a dead worker is an error there too).
    """

    def case_jobs(self, dataset_name_or_id: int | str, configuration_name: str,
                  plans_identifier: str) -> tuple[functools.partial, list[tuple[str, list[str], str]], Path]:
        """The function, its per-case arguments (output name, images, label) and the output folder of ``run``."""
        dataset_name = dataset_folder_name(dataset_name_or_id)
        folder = preprocessed_root() / dataset_name
        plans_manager = PlansManager(str(folder / f"{plans_identifier}.json"))
        configuration_manager = plans_manager.get_configuration(configuration_name)
        dataset_file = folder / "dataset.json"
        dataset_json = json.loads(dataset_file.read_text())
        cases = get_filenames_of_train_images_and_targets(str(raw_root() / dataset_name), dataset_json)
        output = folder / configuration_manager.data_identifier
        function = functools.partial(_preprocess_case, preprocessor=self, plans_manager=plans_manager,
                                     configuration_manager=configuration_manager,
                                     dataset_json=case_dataset_json(dataset_json))
        jobs = [(str(path_inside(output, check_name(key, "case identifier", dataset_file))), case["images"],
                 case["label"]) for key, case in cases.items()]
        return function, jobs, output

    def run(self, dataset_name_or_id: int | str, configuration_name: str, plans_identifier: str,
            num_processes: int) -> None:
        function, jobs, output = self.case_jobs(dataset_name_or_id, configuration_name, plans_identifier)
        if output.exists():  # as nnU-Net: a configuration is preprocessed from scratch
            shutil.rmtree(output)
        output.mkdir(parents=True)
        map_with_progress(function, jobs, num_processes, "Preprocessing cases")
