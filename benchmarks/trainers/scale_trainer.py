"""The trainer ``benchmarks/scale.py`` times under torchrun (on ``nnUNet_extTrainer`` beside the installed ones).

``SuPreMTrainer_scale``: SuPreMTrainer for one epoch of ``SCALE_ITERATIONS`` iterations (default 50) and one
validation iteration. Each rank writes ``rank<R>.json`` into ``$SCALE_TIMINGS``: seconds from the launch
(``$SCALE_LAUNCH``, a ``time.time()``) to the trainer's construction and to its first iteration, the seconds of
the iterations, and the peak resident memory of the rank and of its data-loader workers. The final validation
(nnU-Net predicting every validation case) is skipped: its bookkeeping is timed by ``scale.py`` itself.
"""
from __future__ import annotations

import json
import os
import resource
import time

import torch

from nnunet_suprem.training.suprem_trainer import SuPreMTrainer


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


class SuPreMTrainer_scale(SuPreMTrainer):
    epochs = 1
    iterations_per_epoch = int(os.environ.get("SCALE_ITERATIONS", "50"))
    val_iterations_per_epoch = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # nnU-Net records these arguments by name
        self.times = {"constructed": time.time()}
        super().__init__(plans, configuration, fold, dataset_json, device)

    def train_step(self, batch: dict) -> dict:
        self.times.setdefault("first_iteration", time.time())
        outputs = super().train_step(batch)
        self.times["last_iteration"] = time.time()
        return outputs

    def on_train_end(self):
        super().on_train_end()  # stops the data-loader workers (so their peak memory is counted)
        launch = float(os.environ["SCALE_LAUNCH"])
        record = {"rank": self.local_rank, "construction_s": self.times["constructed"] - launch,
                  "first_iteration_s": self.times["first_iteration"] - launch,
                  "iterations": self.num_iterations_per_epoch,
                  "iterations_s": self.times["last_iteration"] - self.times["first_iteration"],
                  "peak_rss_mb": _peak_mb(resource.RUSAGE_SELF),
                  "worker_peak_rss_mb": _peak_mb(resource.RUSAGE_CHILDREN)}
        with open(os.path.join(os.environ["SCALE_TIMINGS"], f"rank{record['rank']}.json"), "w") as f:
            json.dump(record, f)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Skipped (see the module docstring)."""
