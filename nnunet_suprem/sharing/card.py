"""The model card of an exported model: ``model.json`` for programs, ``MODEL.md`` for people.

Both say what the model segments (label values, taxonomy canonical names), what it was trained on (the dataset
and, from the partial-label manifest, what each source annotated), how (plans, configuration, the trainer it was
trained with and the one it is exported as, epochs), with which versions, under which license and how to cite it,
and whether running it needs this plugin.
"""
from __future__ import annotations

import datetime
from importlib.metadata import PackageNotFoundError, version

from nnunet_suprem import __version__
from nnunet_suprem.architectures import ARCHITECTURES
from nnunet_suprem.manifest import MANIFEST_KEY, annotated_classes_by_case, foreground_labels
from nnunet_suprem.sharing.model_folder import ModelFolder, Portability
from nnunet_suprem.taxonomy import canonical_name

CARD_FORMAT = "nnunet-suprem-model/2"
CARD_JSON, CARD_MARKDOWN = "model.json", "MODEL.md"
SUPREM_CITATION = """@inproceedings{li2024well,
  title={How Well Do Supervised 3D Models Transfer to Medical Imaging Tasks?},
  author={Li, Wenxuan and Yuille, Alan and Zhou, Zongwei},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2024}
}"""
"""Suggested for models trained with this plugin's SuPreM-style trainers or built on a SuPreM backbone."""


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def training_data(dataset_json: dict) -> list[dict]:
    """Per manifest group (source): its cases and the classes it annotates; cases no group lists annotate all."""
    classes = list(foreground_labels(dataset_json))
    by_case = annotated_classes_by_case(dataset_json) or {}
    sources = [{"source": group, "cases": len(entry["cases"]),
                "annotated": [c for c in classes if c in set(entry["annotated"])]}
               for group, entry in dataset_json.get(MANIFEST_KEY, {}).get("groups", {}).items()]
    rest = int(dataset_json.get("numTraining", len(by_case))) - len(by_case)
    if rest > 0 or not sources:
        sources.append({"source": "fully annotated" if sources else "all cases", "cases": max(rest, 0),
                        "annotated": classes})
    return sources


def suggests_suprem_citation(portability: Portability) -> bool:
    """Trained with one of this plugin's trainers, or built on a released SuPreM backbone."""
    backbones = {a.network_class_name for a in ARCHITECTURES.values()}
    return portability.plugin_trainer is not None or portability.network_class in backbones


def model_card(model: ModelFolder, portability: Portability, checkpoint: dict, license: str | None,
               citation: str | None) -> dict:
    """``model.json``'s content; ``checkpoint`` is the first fold's."""
    dataset_json = model.dataset_json
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return {
        "format": CARD_FORMAT,
        "dataset": model.dataset,
        "model_folder": model.path.name,  # kept: installing the zip never replaces another trainer's model
        "classes": [{"name": name, "label": value, "canonical_name": canonical_name(name)}
                    for name, value in foreground_labels(dataset_json).items()],
        "channels": dataset_json.get("channel_names", {}),
        "file_ending": dataset_json.get("file_ending"),
        "training_data": training_data(dataset_json),
        "plans": model.plans,
        "configuration": model.configuration,
        "network": portability.network_class,
        "trainer": {"trained_with": portability.trainer_name, "module": portability.trainer_module,
                    "plugin_trainer": portability.plugin_trainer,
                    "exported_as": portability.exported_trainer,
                    "epochs": checkpoint.get("current_epoch")},
        "folds": model.folds,
        "checkpoint": model.checkpoint_name,
        "inference_allowed_mirroring_axes": list(axes) if axes is not None else None,
        "requires_plugin": portability.needs_plugin,
        "requirement": portability.requirement(),
        "versions": {"nnunetv2": _version("nnunetv2"), "torch": _version("torch"), "nnunet_suprem": __version__},
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "license": license,
        "citation": citation,
        "suggested_citation": SUPREM_CITATION if suggests_suprem_citation(portability) and not citation else None,
    }


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
            *(f"| {' | '.join(str(c) for c in row)} |" for row in rows)]


def card_markdown(card: dict) -> str:
    """``MODEL.md``: the card for people, with the commands that install and run the model."""
    dataset_id = card["dataset"][len("Dataset"):len("Dataset") + 3]
    trainer = card["trainer"]
    folds = " ".join(card["folds"])
    axes = card["inference_allowed_mirroring_axes"]
    based_on = f", a {trainer['plugin_trainer']}" if trainer["plugin_trainer"] else ""
    lines = [
        f"# {card['dataset']}: nnU-Net {card['configuration']} model",
        "",
        f"Exported by nnunet-suprem {card['versions']['nnunet_suprem']} on {card['exported']}. "
        f"Running it {card['requirement']}.",
        "",
        "```bash",
        "nnUNetv2_install_pretrained_model_from_zip MODEL.zip",
        f"nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {dataset_id} -c {card['configuration']} "
        f"-tr {card['model_folder'].split('__')[0]} -p {card['plans']} -f {folds}",
        "```",
        "",
        "## Classes",
        "",
        *_table(("label", "name", "canonical name"),
                [(c["label"], c["name"], c["canonical_name"]) for c in card["classes"]]),
        "",
        "## Training data",
        "",
        f"Input channels: {', '.join(f'{k}: {v}' for k, v in card['channels'].items())} "
        f"(files ending {card['file_ending']}).",
        "",
        *_table(("source", "cases", "annotated classes"),
                [(s["source"], s["cases"], ", ".join(s["annotated"])) for s in card["training_data"]]),
        "",
        "## Model",
        "",
        f"- trained with `{trainer['trained_with']}` (module {trainer['module']}{based_on}), "
        f"epochs: {trainer['epochs']}, "
        f"checkpoints exported naming `{trainer['exported_as']}` (the model folder keeps its name "
        f"`{card['model_folder']}`)",
        f"- plans `{card['plans']}`, configuration `{card['configuration']}`, network `{card['network']}`",
        f"- folds {folds}, checkpoint `{card['checkpoint']}`",
        f"- test-time mirroring axes: {tuple(axes) if axes is not None else 'none'} (as trained; nnU-Net reads "
        f"them from the checkpoint)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
        "",
        "## License",
        "",
        card["license"] or "Not stated.",
        "",
        "## Citation",
        "",
    ]
    if card["citation"]:
        lines += ["```", card["citation"], "```"]
    elif card["suggested_citation"]:
        lines += ["None given. Suggested (SuPreM):", "", "```", card["suggested_citation"], "```"]
    else:
        lines.append("None given.")
    return "\n".join(lines) + "\n"
