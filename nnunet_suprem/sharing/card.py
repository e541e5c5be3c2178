"""The model card of an exported model: ``model.json`` for programs, ``MODEL.md`` for people.

Both say what the model segments (label values, taxonomy canonical names), what it was trained on (the dataset
and, from the partial-label manifest, what each source annotated), how (plans, configuration, the trainer it was
trained with and the one it is exported as, epochs), with which versions, under which license and how to cite it,
whether running it needs this plugin, and whether its test images must have its training orientation (a model that
learnt left and right from array position with a reader that keeps each file's index order, see
:mod:`nnunet_suprem.orientation`).

``MODEL.md`` quotes every name and text that comes with the model (label, dataset and trainer names, ``--license``,
``--citation``, ...) literally: none can add markup (links, images, HTML, headings, table cells) or leave its code
block, and the commands it shows quote them for the shell.
"""
from __future__ import annotations

import datetime
import re
import shlex
from importlib.metadata import PackageNotFoundError, version

from nnunet_suprem import __version__
from nnunet_suprem.architectures import ARCHITECTURES
from nnunet_suprem.manifest import MANIFEST_KEY, annotated_classes_by_case, foreground_labels
from nnunet_suprem.orientation import ORIENTATION_KEY, describe, needs_check
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
    orientation = checkpoint.get(ORIENTATION_KEY)
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
        "training_orientation": orientation,
        "orientation_check_required": needs_check(orientation),
        "versions": {"nnunetv2": _version("nnunetv2"), "torch": _version("torch"), "nnunet_suprem": __version__},
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "license": license,
        "citation": citation,
        "suggested_citation": SUPREM_CITATION if suggests_suprem_citation(portability) and not citation else None,
    }


_INLINE_MARKUP = re.compile(r"([\\`*_~\[\]<>!&|#$])")
"""What can start inline markup in CommonMark, GitHub's tables, strikethrough and math: escaped with "\"."""
_BLOCK_START = re.compile(r"^(\d+[.)]|[-+=])")
"""What starts a list item or a setext underline at the start of a line (headings, quotes and fences are above)."""


def markdown_text(value: object) -> str:
    """``value`` as literal Markdown text on one line (also at a line's start): line breaks become spaces, markup
    characters are escaped."""
    text = _INLINE_MARKUP.sub(r"\\\1", " ".join(str(value).split()))
    return _BLOCK_START.sub(lambda m: m[0][:-1] + "\\" + m[0][-1], text, count=1)


def _longest_backtick_run(text: str) -> int:
    return max(map(len, re.findall("`+", text)), default=0)


def markdown_code(value: object) -> str:
    """``value`` as an inline code span on one line (literal inside), its delimiters longer than any backtick run."""
    text = " ".join(str(value).split())
    fence = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_block(text: str, info: str = "") -> list[str]:
    """``text`` as a fenced code block whose fence is longer than any backtick run inside."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return [f"{fence}{info}", text, fence]


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
            *(f"| {' | '.join(markdown_text(c) for c in row)} |" for row in rows)]


def _orientation_section(card: dict) -> list[str]:
    """What the receiver must do before predicting when the model's left and right depend on index order."""
    if not card["orientation_check_required"]:
        return []
    record = card["training_orientation"]
    folder = shlex.quote(f"{card['dataset']}/{card['model_folder']}")
    return [
        "## Before predicting: test image orientation",
        "",
        f"This model learnt left and right from array position, reading images with "
        f"{markdown_code(record['reader'])}, which keeps each file's index order: test images must have the "
        f"training orientation ({markdown_text(describe(record['left_right']))}), or their left and right come out "
        "swapped. Check every input folder first (this needs `pip install nnunet-suprem`); with `--reorient OUT` "
        "it writes reoriented copies (the same physical images) to predict from:",
        "",
        *markdown_block(f'nnunet-suprem check-orientation "$nnUNet_results"/{folder} -i INPUT_FOLDER', "bash"),
        "",
    ]


def card_markdown(card: dict) -> str:
    """``MODEL.md``: the card for people, with the commands that install, check and run the model."""
    dataset_id = card["dataset"][len("Dataset"):len("Dataset") + 3]
    trainer = card["trainer"]
    folds = card["folds"]
    axes = card["inference_allowed_mirroring_axes"]
    text, code = markdown_text, markdown_code
    based_on = f", a {code(trainer['plugin_trainer'])}" if trainer["plugin_trainer"] else ""
    orientation = (", and its test images must first pass `nnunet-suprem check-orientation` (below)"
                   if card["orientation_check_required"] else "")
    predict = shlex.join(["nnUNetv2_predict", "-i", "INPUT_FOLDER", "-o", "OUTPUT_FOLDER", "-d", dataset_id,
                          "-c", card["configuration"], "-tr", card["model_folder"].split("__")[0],
                          "-p", card["plans"], "-f", *folds])
    lines = [
        f"# {text(card['dataset'])}: nnU-Net {text(card['configuration'])} model",
        "",
        f"Exported by nnunet-suprem {card['versions']['nnunet_suprem']} on {card['exported']}. "
        f"Running it {text(card['requirement'])}{orientation}.",
        "",
        *markdown_block("nnUNetv2_install_pretrained_model_from_zip MODEL.zip\n" + predict, "bash"),
        "",
        *_orientation_section(card),
        "## Classes",
        "",
        *_table(("label", "name", "canonical name"),
                [(c["label"], c["name"], c["canonical_name"]) for c in card["classes"]]),
        "",
        "## Training data",
        "",
        f"Input channels: {text(', '.join(f'{k}: {v}' for k, v in card['channels'].items()))} "
        f"(files ending {code(card['file_ending'])}).",
        "",
        *_table(("source", "cases", "annotated classes"),
                [(s["source"], s["cases"], ", ".join(s["annotated"])) for s in card["training_data"]]),
        "",
        "## Model",
        "",
        f"- trained with {code(trainer['trained_with'])} (module {code(trainer['module'])}{based_on}), "
        f"epochs: {text(trainer['epochs'])}, "
        f"checkpoints exported naming {code(trainer['exported_as'])} (the model folder keeps its name "
        f"{code(card['model_folder'])})",
        f"- plans {code(card['plans'])}, configuration {code(card['configuration'])}, network {code(card['network'])}",
        f"- folds {text(' '.join(folds))}, checkpoint {code(card['checkpoint'])}",
        f"- test-time mirroring axes: {text(tuple(axes) if axes is not None else 'none')} (as trained; nnU-Net reads "
        f"them from the checkpoint)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),  # of this environment
        "",
        "## License",
        "",
        text(card["license"]) if card["license"] else "Not stated.",
        "",
        "## Citation",
        "",
    ]
    if card["citation"]:
        lines += markdown_block(card["citation"])
    elif card["suggested_citation"]:
        lines += ["None given. Suggested (SuPreM):", "", *markdown_block(card["suggested_citation"])]
    else:
        lines.append("None given.")
    return "\n".join(lines) + "\n"
