"""The pre-trained side of a transfer: one configuration of a trained model folder's (or any) nnU-Net plans, or
the adaptation plan inside an nnssl checkpoint."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_suprem.plans_safety import check_lookups, check_plans

DEFAULT_CONFIGURATION = "3d_fullres"
MODEL_FOLDER = "$nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION"
CHECKPOINT_SUFFIXES = (".pth", ".pt")


@dataclass(frozen=True)
class PretrainedConfiguration:
    """A configuration of pre-trained plans, with its ``architecture`` block (inheritance resolved)."""
    plans_file: Path
    configuration: str
    plans: dict
    architecture: dict
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    spacing: list[float] | None = None
    """Target spacing the pre-training prescribes (nnssl), in nnU-Net's array axis order before ``transpose_forward``
    (as ``overwrite_target_spacing``); None: the target's, as nnU-Net plans it."""
    patch_size: list[int] | None = None
    """Patch size the pre-training recommends for fine-tuning (nnssl), in the same axis order as ``spacing``; None:
    fitted to the target and memory."""
    planner: str | None = None
    """Planner whose memory model plans the batch; None: the one the plans name."""
    target_intensity_properties: bool = False
    """The pre-training kept no dataset intensity statistics (nnssl: z-score per image): keep the target's."""
    details: dict = field(default_factory=dict)
    """More for ``transferred_from``."""

    @property
    def strides(self) -> list[list[int]]:
        return self.architecture["arch_kwargs"]["strides"]

    @property
    def dimensions(self) -> int:
        return len(self.strides[0])

    def intensity_mapping(self, num_channels: int) -> tuple[list[str], list[bool], dict | None]:
        """Normalisation schemes, mask flags and intensity properties for a target with ``num_channels`` channels.

        The pre-trained network's features were learned on this mapping from image values to network input, so a
        target keeps it (nnU-Net's ``nnUNetv2_move_plans_between_datasets`` does the same). A single-channel model
        lends its channel to every target channel; otherwise the channel counts must agree. The properties are
        None with ``target_intensity_properties`` (the target's own stay).
        """
        properties = None if self.target_intensity_properties else self.plans.get(
            "foreground_intensity_properties_per_channel")
        source_channels = len(self.normalization_schemes)
        if not self.target_intensity_properties and (not isinstance(properties, dict)
                                                     or len(properties) != source_channels):
            raise ValueError(f"{self.plans_file} has no foreground_intensity_properties_per_channel for its "
                             f"{source_channels} channel(s)")
        if source_channels == num_channels:
            return list(self.normalization_schemes), list(self.use_mask_for_norm), properties
        if source_channels != 1:
            raise ValueError(f"the pre-trained model ({self.plans_file}) normalises {source_channels} channels and "
                             f"the target has {num_channels}: no channel mapping is defined; plan with the target's "
                             f"own intensity statistics (--target-intensities)")
        lent = None if properties is None else {str(c): dict(next(iter(properties.values())))
                                                for c in range(num_channels)}
        return [self.normalization_schemes[0]] * num_channels, [self.use_mask_for_norm[0]] * num_channels, lent

    def provenance(self) -> dict:
        """What target plans record under ``transferred_from``."""
        return {"plans_file": str(self.plans_file), "configuration": self.configuration,
                "dataset_name": self.plans.get("dataset_name"), "plans_name": self.plans.get("plans_name"),
                "network_class_name": self.architecture["network_class_name"], **self.details}


def model_folder_configuration(folder: Path) -> str | None:
    """The configuration in a results folder named ``TRAINER__PLANS__CONFIGURATION``, else None."""
    parts = folder.name.split("__")
    return parts[2] if len(parts) == 3 and all(parts) else None


def load_pretrained(path: str | Path, configuration: str | None = None) -> PretrainedConfiguration:
    """Read ``configuration`` of a trained model folder (its plans.json) or of a plans file, or the plan of an nnssl
    checkpoint (:func:`load_nnssl`).

    Without ``configuration``: the one a model folder's name says it was trained with, else 3d_fullres.
    """
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        plans_file = path / "plans.json"
        if not plans_file.is_file():
            raise FileNotFoundError(f"{plans_file} not found: --pretrained must be a trained model folder "
                                    f"({MODEL_FOLDER}) or a plans .json file")
        trained = model_folder_configuration(path)
        if configuration is not None and trained is not None and configuration != trained:
            raise ValueError(f"{path} holds a model trained with configuration {trained!r}, not {configuration!r}")
        configuration = configuration or trained
    elif path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        return load_nnssl(path, configuration)
    elif path.is_file():
        plans_file = path
    else:
        raise FileNotFoundError(f"{path} not found: --pretrained must be a trained model folder ({MODEL_FOLDER}), "
                                f"a plans .json file or an nnssl checkpoint")
    configuration = configuration or DEFAULT_CONFIGURATION
    plans = _read_plans(plans_file)
    if configuration not in plans["configurations"]:
        raise ValueError(f"{plans_file} has no configuration {configuration!r}; "
                         f"it has {sorted(plans['configurations'])}")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    resolved = PlansManager(plans).get_configuration(configuration).configuration
    architecture = resolved.get("architecture")
    _check_architecture(architecture, plans_file, configuration)
    return PretrainedConfiguration(plans_file, configuration, plans, architecture,
                                   list(resolved.get("normalization_schemes", [])),
                                   list(resolved.get("use_mask_for_norm", [])))


def load_nnssl(path: Path, configuration: str | None = None) -> PretrainedConfiguration:
    """The adaptation plan of an nnssl checkpoint as a pre-trained configuration (named ``configuration``, default
    3d_fullres): its network, the pre-training's spacing (None when it did not resample: the target's) and the
    recommended fine-tuning patch (both in nnU-Net's array axis order), its normalisation schemes with the target's
    intensity statistics (nnssl normalises each image by itself), and the ResEnc L memory model for its ResEncL
    preset."""
    from nnunet_suprem.transfer.checkpoint import read_checkpoint
    from nnunet_suprem.transfer.nnssl import ADAPTATION_PLAN_KEY, ADD_PLAN_HINT

    checkpoint = read_checkpoint(path)
    plan = checkpoint.extra.get("nnssl_plan")
    if plan is None and checkpoint.extra.get("nnssl_spark"):
        raise ValueError(f"{path}: an nnssl SparK checkpoint has no {ADAPTATION_PLAN_KEY}, so it does not say the "
                         f"pre-training's spacing and patch: {ADD_PLAN_HINT}, then plan with that file; or plan the "
                         f"target with nnU-Net (e.g. -pl nnUNetPlannerResEncL) and give this file to "
                         f"-pretrained_weights (its encoder loads)")
    if plan is None:
        raise ValueError(f"{path}: not an nnssl checkpoint (no nnssl_adaptation_plan): --pretrained takes a "
                         f"checkpoint only when it carries its plan; for an nnU-Net checkpoint give its model folder")
    check_lookups({"normalization_schemes": plan.normalization_schemes}, ("normalization_schemes",), path,
                  ADAPTATION_PLAN_KEY, "pretrain_plan", "configurations", plan.configuration)
    configuration = configuration or DEFAULT_CONFIGURATION
    _check_architecture(plan.architecture, path, configuration)
    masks = plan.use_mask_for_norm or [False] * len(plan.normalization_schemes)
    return PretrainedConfiguration(
        path, configuration, {"dataset_name": plan.dataset_name, "plans_name": plan.plans_name}, plan.architecture,
        plan.normalization_schemes, masks, spacing=plan.spacing, patch_size=plan.recommended_patch_size,
        planner="nnUNetPlannerResEncL" if plan.arch_class_name == "ResEncL" else None,
        target_intensity_properties=True,
        details={"format": "nnssl checkpoint", "nnssl_architecture": plan.arch_class_name,
                 "pretraining": {"configuration": plan.configuration, "spacing": plan.spacing,
                                 "patch_size": plan.patch_size, "transpose_forward": plan.transpose_forward,
                                 "normalization_schemes": plan.normalization_schemes,
                                 "num_input_channels": plan.num_input_channels}})


def _read_plans(plans_file: Path) -> dict:
    """The plans, every name in them that nnU-Net would resolve checked (:func:`check_plans`)."""
    try:
        plans = json.loads(plans_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{plans_file} is not an nnU-Net plans file (not JSON: {e})") from e
    check_plans(plans, plans_file)
    return plans


def _check_architecture(architecture: dict | None, plans_file: Path, configuration: str) -> None:
    """The block must name a network and give per-stage strides (they fix which patch sizes are valid)."""
    where = f"{plans_file} configuration {configuration!r}"
    if not isinstance(architecture, dict) or "network_class_name" not in architecture:
        raise ValueError(f"{where} has no 'architecture' block naming the network")
    strides = architecture.get("arch_kwargs", {}).get("strides")
    if (not isinstance(strides, list) or not strides or not all(isinstance(s, list) for s in strides)
            or len({len(s) for s in strides}) != 1 or len(strides[0]) not in (2, 3)):
        raise ValueError(f"{where}: arch_kwargs.strides must list per-stage strides for every axis (2D or 3D), "
                         f"got {strides!r}")
