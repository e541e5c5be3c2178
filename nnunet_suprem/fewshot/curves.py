"""Learning curves of a few-shot study's runs: nnU-Net's pseudo Dice per epoch, per class group.

nnU-Net logs the pseudo Dice of every foreground label after each epoch (``dice_per_class_or_region`` in the
checkpoint's ``logging``, in the order of the label values). Grouped like the study's table (seen in pre-training
or novel), the curves show what the head transfer gives from the first epoch, and how fast each arm learns.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_suprem.fewshot.report import ARMS, save_group_figure

Curves = dict[str, list[float]]
"""Pseudo Dice per epoch of each class (by name)."""


def class_curves(checkpoint: Mapping) -> Curves:
    """Per-class pseudo Dice per epoch from an nnU-Net checkpoint (its ``logging`` and dataset.json labels)."""
    from nnunet_suprem.transfer.head import BACKGROUND, IGNORE_LABEL

    labels = checkpoint["init_args"]["dataset_json"]["labels"]
    values = {name: value for name, value in labels.items() if name not in (BACKGROUND, IGNORE_LABEL)}
    if any(not isinstance(value, int) for value in values.values()):
        raise ValueError("learning curves per class need integer labels; this model is region-based")
    names = sorted(values, key=values.get)
    per_epoch = checkpoint["logging"]["dice_per_class_or_region"]
    return {name: [float(epoch[i]) for epoch in per_epoch] for i, name in enumerate(names)}


def read_class_curves(fold_folder: Path) -> Curves:
    """:func:`class_curves` of a fold's ``checkpoint_final.pth``."""
    from nnunet_suprem.transfer.checkpoint import load_weights_only

    return class_curves(load_weights_only(fold_folder / "checkpoint_final.pth"))


def group_curve(curves: Curves, groups: Mapping[str, str], group: str) -> np.ndarray:
    """Mean pseudo Dice per epoch over the classes of ``group`` (classes without a value that epoch left out)."""
    members = [curve for name, curve in curves.items() if groups.get(name) == group]
    if not members:
        raise ValueError(f"no class of group {group!r} in {sorted(curves)}")
    with warnings.catch_warnings():  # an epoch in which no class of the group has a value: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.array(members, dtype=float), axis=0)


def first_epoch_means(runs: Mapping[str, Sequence[Curves]], groups: Mapping[str, str]) -> dict[tuple[str, str], float]:
    """(arm, group) -> pseudo Dice after the first epoch, mean over the arm's runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {(arm, group): float(np.nanmean([group_curve(curves, groups, group)[0] for curves in arm_runs]))
                for arm, arm_runs in runs.items() for group in dict.fromkeys(groups.values())}


def plot_learning_curves(runs: Mapping[str, Sequence[Curves]], groups: Mapping[str, str], path: Path,
                         title: str) -> None:
    """Pseudo Dice per epoch, one panel per class group, one line per arm (mean over runs, band = s.d.)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(groups.values()))
    with plt.style.context("default"):  # nnU-Net's progress plots change seaborn's global style
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False, sharey=True)
        for ax, group in zip(axes[0], names):
            for arm in (a for a in ARMS if a in runs):
                values = np.array([group_curve(curves, groups, group) for curves in runs[arm]])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean, sd = np.nanmean(values, 0), np.nanstd(values, 0)
                epochs = np.arange(1, values.shape[1] + 1)
                ax.plot(epochs, mean, label=f"{arm} ({len(values)} run{'s' * (len(values) > 1)})")
                ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.2)
            ax.set(title=f"{group} classes", xlabel="epoch", ylim=(0, 1))
        save_group_figure(fig, axes, "pseudo Dice (nnU-Net, validation cases)", title, path)
