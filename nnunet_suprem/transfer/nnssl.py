"""Checkpoints of MIC-DKFZ's nnssl (self-supervised ResEnc-L / Primus, the nnU-Net foundation models).

nnssl's trainers save ``{"network_weights": state_dict, "nnssl_adaptation_plan": {...}, "optimizer_state", ...}``
(released files keep ``network_weights``, ``nnssl_adaptation_plan`` and ``citations``). The adaptation plan
(nnssl's ``AdaptationPlan.serialize()``) is plain containers, read here with ``weights_only=True``:

- ``architecture_plans``: ``arch_class_name`` (``"ResEncL"``, ``"NoSkipResEncL"``, ``"PrimusS/B/M/L"``, or
  ``"ResidualEncoderUNet"`` / ``"PlainConvUNet"`` of dynamic-network-architectures), ``arch_kwargs`` (None for the
  named presets; else the constructor's keyword arguments, classes as dotted names) and
  ``arch_kwargs_requiring_import`` (which of them are such names);
- ``pretrain_plan``: nnssl's plans; its one configuration gives ``spacing`` (None: not resampled),
  ``patch_size``, ``normalization_schemes`` and ``use_mask_for_norm`` of the pre-training;
- ``pretrain_num_input_channels``, ``recommended_downstream_patchsize``;
- ``key_to_encoder`` and ``key_to_stem``: where the encoder and its stem are in ``network_weights``
  (``encoder.stages`` / ``encoder.stem`` for ResEnc-L), ``keys_to_in_proj`` (the first convolution's names),
  ``key_to_lpe`` (a learned positional embedding, Primus only).

Only the encoder and stem count as pre-trained (nnU-Net's fine-tuning of these checkpoints loads nothing else: the
rest is a self-supervised reconstruction decoder); their names are mapped onto the downstream network's
``key_to_encoder`` / ``key_to_stem``.

nnssl preprocesses its images as nnU-Net does: arrays in the readers' axis order (nnssl's readers are nnU-Net's),
then ``pretrain_plan['transpose_forward']``, applied to the spacing too. So the configuration's ``spacing`` (e.g.
the dataset median of nnssl's ``median`` configuration) and the patch sizes are per axis of those transposed arrays;
:class:`NnsslPlan` gives them back in the readers' order, the order nnU-Net's ``overwrite_target_spacing`` takes.

nnssl's SparK trainers (``SparkMAETrainer`` and its variants, all on the ``ResEncL`` preset) save no adaptation
plan: ``network_weights`` (the ResEnc-L, encoder under ``encoder.stages`` / ``encoder.stem``, plus its
reconstruction decoder) and ``spark_weights`` (the whole SparK model: the same tensors under ``architecture.``,
``encoder.`` and ``decoder.``, and its mask tokens and densifying layers). Their encoder and stem are read as
pre-trained (:data:`SPARK_ENCODER`); planning needs the plan, which nnssl's ``add_adaptation_plan`` adds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from nnunet_suprem.plans_safety import CLASS_KWARGS, DNA_UNETS, check_architecture, key_path
from nnunet_suprem.transfer.state_dict import under_any

ADAPTATION_PLAN_KEY = "nnssl_adaptation_plan"
SPARK_WEIGHTS_KEY = "spark_weights"
SPARK_ENCODER = {"key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem"}
"""Where every nnssl SparK trainer keeps the encoder and stem in ``network_weights`` (what its adaptation plan would
say: nnssl's ``SparkMAETrainer.build_architecture_and_adaptation_plan``)."""
ADD_PLAN_HINT = ("add the plan with nnssl's add_adaptation_plan (python -m nnssl.utilities.add_adaptation_plan -i FILE "
                 "-pl PRETRAINING_PLANS.json -o FOLDER -arch ResEncL -key_to_encoder encoder.stages -key_to_stem "
                 "encoder.stem -keys_to_in_proj encoder.stem.convs.0.conv encoder.stem.convs.0.all_modules.0)")
RESENC_L_KWARGS = {
    "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1, 1], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.modules.activation.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
"""nnssl's ``ResEncL`` preset (its architecture registry's ``get_res_enc_l``): a ResidualEncoderUNet."""
UNSUPPORTED = {
    "NoSkipResEncL": "nnssl's own ResidualEncoderUNet_noskip, which is not in dynamic-network-architectures",
    "Primus": "Primus (dynamic-network-architectures has the class, but nnU-Net 2.8.1's trainers and planners "
              "expect a U-Net with deep supervision and a convolutional memory estimate, and its learned positional "
              "embedding would need resizing to the target's patch size)"}


@dataclass(frozen=True)
class NnsslPlan:
    """What nnunet-suprem uses of an nnssl adaptation plan."""

    arch_class_name: str
    architecture: dict
    """nnU-Net's plans ``architecture`` block for the downstream network."""
    key_to_encoder: str
    key_to_stem: str
    num_input_channels: int
    recommended_patch_size: list[int]
    """The fine-tuning patch nnssl recommends, in the readers' array axis order."""
    configuration: str
    spacing: list[float] | None
    """The pre-training's target spacing in the readers' array axis order; None: not resampled."""
    patch_size: list[int] | None
    """The pre-training's patch, in the readers' array axis order."""
    transpose_forward: list[int]
    """nnssl's, which the stored spacing and patch sizes follow."""
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    dataset_name: str | None
    plans_name: str | None


def is_nnssl(content: object) -> bool:
    return isinstance(content, Mapping) and ADAPTATION_PLAN_KEY in content


def is_spark_without_plan(content: object) -> bool:
    """A checkpoint as nnssl's SparK trainers save it: SparK weights beside ``network_weights``, no adaptation plan."""
    return isinstance(content, Mapping) and SPARK_WEIGHTS_KEY in content and ADAPTATION_PLAN_KEY not in content


def _numbers(value: object) -> list | None:
    """A list from a list, tuple or tensor (nnssl converts NumPy arrays to tensors before saving)."""
    if value is None:
        return None
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)


def _field(path: str, mapping: object, key: str, where: str = "") -> object:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise ValueError(f"{path}: nnssl checkpoint without {ADAPTATION_PLAN_KEY}{where}[{key!r}]")
    return mapping[key]


def transpose_forward(path: str, pretrain_plan: Mapping) -> list[int]:
    """nnssl's ``transpose_forward``; a ValueError naming the file when it is not a permutation of the axes."""
    transpose = _numbers(_field(path, pretrain_plan, "transpose_forward", "['pretrain_plan']"))
    if sorted(transpose) != list(range(len(transpose))) or len(transpose) not in (2, 3):
        raise ValueError(f"{path}: {ADAPTATION_PLAN_KEY}['pretrain_plan']['transpose_forward'] must order the image "
                         f"axes (a permutation of 0, 1, 2), got {transpose!r}")
    return [int(a) for a in transpose]


def readers_axis_order(path: str, values: Sequence | None, transpose: Sequence[int], name: str) -> list | None:
    """``values`` given per axis of nnssl's transposed arrays, in the readers' axis order (None stays None)."""
    if values is None:
        return None
    if len(values) != len(transpose):
        raise ValueError(f"{path}: the nnssl plan's {name} {list(values)} does not have one value per axis of its "
                         f"transpose_forward {list(transpose)}")
    ordered = [values[0]] * len(values)
    for position, axis in enumerate(transpose):
        ordered[axis] = values[position]
    return ordered


def architecture_block(path: str, arch_class_name: str, arch_plans: Mapping) -> dict:
    """nnU-Net's ``architecture`` block for the plan's network, or a ValueError naming what is not supported or a
    name in its ``arch_kwargs`` that is not an allowed layer (:func:`~nnunet_suprem.plans_safety.check_architecture`:
    nothing named there is imported)."""
    if arch_class_name == "ResEncL":
        return {"network_class_name": DNA_UNETS + "ResidualEncoderUNet", "arch_kwargs": dict(RESENC_L_KWARGS),
                "_kw_requires_import": list(CLASS_KWARGS)}
    if arch_class_name in ("ResidualEncoderUNet", "PlainConvUNet"):
        kwargs = arch_plans.get("arch_kwargs")
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"{path}: the nnssl plan names {arch_class_name} without its arch_kwargs")
        block = {"network_class_name": DNA_UNETS + arch_class_name, "arch_kwargs": dict(kwargs),
                 "_kw_requires_import": arch_plans.get("arch_kwargs_requiring_import") or []}
        check_architecture(block, path, key_path(ADAPTATION_PLAN_KEY, "architecture_plans"))
        return block
    family = "Primus" if arch_class_name.startswith("Primus") else arch_class_name
    missing = UNSUPPORTED.get(family, "a network this plugin does not know")
    raise ValueError(f"{path}: nnssl architecture {arch_class_name!r} is not supported: it needs {missing}; "
                     f"supported: ResEncL, ResidualEncoderUNet, PlainConvUNet")


def read_adaptation_plan(path: str, content: Mapping) -> NnsslPlan:
    """The adaptation plan of an nnssl checkpoint; a ValueError naming the file and the missing or bad field."""
    plan = content[ADAPTATION_PLAN_KEY]
    arch_plans = _field(path, plan, "architecture_plans")
    arch_class_name = str(_field(path, arch_plans, "arch_class_name", "['architecture_plans']"))
    pretrain_plan = _field(path, plan, "pretrain_plan")
    configurations = _field(path, pretrain_plan, "configurations", "['pretrain_plan']")
    if not isinstance(configurations, Mapping) or len(configurations) != 1:
        raise ValueError(f"{path}: the nnssl pretrain_plan must hold exactly one configuration, it has "
                         f"{list(configurations) if isinstance(configurations, Mapping) else configurations!r}")
    (name, config), = configurations.items()
    transpose = transpose_forward(path, pretrain_plan)
    keys = {k: _field(path, plan, k) for k in ("key_to_encoder", "key_to_stem")}
    if not all(isinstance(v, str) and v for v in keys.values()):
        raise ValueError(f"{path}: the nnssl plan's key_to_encoder and key_to_stem must name modules, got {keys}")
    schemes = list(_field(path, config, "normalization_schemes", f"['pretrain_plan']['configurations'][{name!r}]"))

    def readers_order(values: object, field_name: str) -> list | None:
        return readers_axis_order(path, _numbers(values), transpose, field_name)

    recommended = readers_order(_field(path, plan, "recommended_downstream_patchsize"),
                                "recommended_downstream_patchsize")
    return NnsslPlan(
        arch_class_name=arch_class_name, architecture=architecture_block(path, arch_class_name, arch_plans),
        **keys, num_input_channels=int(_field(path, plan, "pretrain_num_input_channels")),
        recommended_patch_size=[int(p) for p in recommended], configuration=str(name),
        spacing=readers_order(config.get("spacing"), "spacing"),
        patch_size=readers_order(config.get("patch_size"), "patch_size"), transpose_forward=transpose,
        normalization_schemes=schemes, use_mask_for_norm=[bool(m) for m in config.get("use_mask_for_norm") or []],
        dataset_name=pretrain_plan.get("dataset_name"), plans_name=pretrain_plan.get("plans_name"))

def encoder_weights(path: str, weights: Mapping[str, torch.Tensor], key_to_encoder: str,
                    key_to_stem: str) -> list[str]:
    """Keys of ``network_weights`` under the encoder or stem; a ValueError when the encoder has none."""
    selected = [k for k in weights if under_any(k, (key_to_encoder, key_to_stem))]
    if not any(under_any(k, (key_to_encoder,)) for k in selected):
        sample = ", ".join(list(weights)[:3])
        raise ValueError(f"{path}: network_weights has no tensor under the encoder's path (key_to_encoder) "
                         f"{key_to_encoder!r} (its keys look like: {sample})")
    return selected


def rename_modules(state: Mapping[str, torch.Tensor], renames: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Keys under each ``(old, new)`` module path moved under ``new`` (longest ``old`` first); others unchanged."""
    ordered = sorted(((o, n) for o, n in renames if o != n), key=lambda r: -len(r[0]))
    out = {}
    for key, value in state.items():
        old, new = next(((o, n) for o, n in ordered if under_any(key, (o,))), (key, key))
        out[new + key[len(old):]] = value
    return out
