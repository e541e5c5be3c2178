"""``nnunet-suprem export MODEL_FOLDER -o model.zip``: a model zip that stock nnU-Net installs and runs.

The zip has the layout of ``nnUNetv2_export_model_to_zip`` (paths relative to ``nnUNet_results``), so
``nnUNetv2_install_pretrained_model_from_zip`` installs it. Only what must change is rewritten: each checkpoint's
``trainer_name`` becomes the stock nnU-Net trainer that builds the identical network (see
:mod:`nnunet_suprem.sharing.model_folder`); weights, ``inference_allowed_mirroring_axes`` (left and right stay apart)
and every other entry are kept. The model folder keeps its name (``SuPreMTrainer__nnUNetPlans__3d_fullres``): nnU-Net
installs by extracting into ``nnUNet_results``, so a folder renamed to ``nnUNetTrainer__...`` would replace a stock
model of the same dataset, plans and configuration there. A model whose network only this plugin builds keeps what it
needs and its card says so. The source folder is only read; the zip is written under a temporary name and moved into place.
"""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Sequence

import torch

from nnunet_suprem.fileio import atomic_path, check_text, hidden_characters
from nnunet_suprem.sharing.card import CARD_JSON, CARD_MARKDOWN, SUPREM_CITATION, card_markdown, model_card
from nnunet_suprem.sharing.model_folder import ModelFolder, portability, read_model_folder

FOLD_FILES = ("debug.json", "progress.png", "network_architecture.pdf", "validation/summary.json")
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
CROSSVAL_FILES = ("summary.json", "postprocessing.pkl", "postprocessing.json")
"""Besides the checkpoints, what nnU-Net's export copies when present."""


def _check_same_inference(model: ModelFolder, fold: str, checkpoint: dict, first: dict) -> None:
    """All folds must name the same trainer and test-time mirroring (nnU-Net's predictor uses the first fold's)."""
    for key in ("trainer_name", "inference_allowed_mirroring_axes"):
        if checkpoint.get(key) != first.get(key):
            raise ValueError(f"{model.checkpoint_path(fold)}: {key} {checkpoint.get(key)!r} differs from fold "
                             f"{model.folds[0]}'s {first.get(key)!r}")


def _check_weights_like(reference: dict, checkpoint: dict, path: Path) -> None:
    """Every fold's weights have the first fold's keys and shapes (the first was checked against the network)."""
    shapes = {k: v.shape for k, v in reference.items()}
    if {k: v.shape for k, v in checkpoint["network_weights"].items()} != shapes:
        raise ValueError(f"{path}: its weights differ in keys or shapes from the first fold's")


def _citation_text(citation: str | None) -> str | None:
    if citation is None:
        return None
    if citation.strip().lower() == "suprem":
        return SUPREM_CITATION
    if any(c not in "\n\t" for c in hidden_characters(citation)) or not citation.strip():
        raise ValueError(f"--citation {citation[:40]!r}: empty or contains control characters or invisible ones")
    return citation


def export_model(model_folder: str | Path, output: str | Path, folds: Sequence[str] | None = None,
                 checkpoint_name: str = "checkpoint_final.pth", license: str | None = None,
                 citation: str | None = None, overwrite: bool = False) -> dict:
    """Write the model zip (see module doc); returns the model card."""
    model = read_model_folder(model_folder, folds, checkpoint_name)
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    if output.resolve().is_relative_to(model.path.resolve()):
        raise ValueError(f"{output}: refusing to write into the model folder {model.path} (it is only read)")
    if license is not None:
        check_text(license, "--license", "export")
    first = model.load_checkpoint(model.folds[0])
    port = portability(model, first)
    card = model_card(model, port, first, license, _citation_text(citation))
    target = f"{model.dataset}/{card['model_folder']}"
    network_weights = first["network_weights"]
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for fold in model.folds:
            checkpoint = first if fold == model.folds[0] else model.load_checkpoint(fold)
            _check_same_inference(model, fold, checkpoint, first)
            _check_weights_like(network_weights, checkpoint, model.checkpoint_path(fold))
            entry = zipfile.ZipInfo(f"{target}/fold_{fold}/{checkpoint_name}", time.localtime()[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w", force_zip64=True) as f:
                torch.save({**checkpoint, "trainer_name": port.exported_trainer}, f)
            del checkpoint
            for name in FOLD_FILES:
                _copy_if_present(archive, model.path / f"fold_{fold}" / name, f"{target}/fold_{fold}/{name}")
        crossval = f"crossval_results_folds_{'_'.join(model.folds)}"
        for name in (*MODEL_FILES, *(f"{crossval}/{n}" for n in CROSSVAL_FILES)):
            _copy_if_present(archive, model.path / name, f"{target}/{name}")
        archive.writestr(f"{target}/{CARD_JSON}", json.dumps(card, indent=2) + "\n")
        archive.writestr(f"{target}/{CARD_MARKDOWN}", card_markdown(card))
    return card


def _copy_if_present(archive: zipfile.ZipFile, source: Path, name: str) -> None:
    if source.is_file():
        archive.write(source, name)


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a trained model as an nnU-Net zip that stock nnU-Net installs and runs",
        description="Write MODEL_FOLDER (an nnU-Net results folder DatasetXXX_Name/Trainer__Plans__Configuration) "
                    "as a zip in nnU-Net's layout, for nnUNetv2_install_pretrained_model_from_zip. Checkpoints "
                    "name the stock nnU-Net trainer that builds the same network, so nnUNetv2_predict runs the "
                    "model without this plugin (weights and test-time mirroring axes are kept as trained); a "
                    "network only this plugin builds is exported too, and its card says that the plugin is "
                    "needed. The zip holds a model card: MODEL.md and model.json.")
    p.add_argument("model_folder", metavar="MODEL_FOLDER", help="the trained model folder")
    p.add_argument("-o", "--output", required=True, help="the zip to write")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to export (default: every fold_X that holds the checkpoint)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file name (default: checkpoint_final.pth)")
    p.add_argument("--license", default=None, help="the model's license, for the card (e.g. CC-BY-4.0)")
    p.add_argument("--citation", default=None,
                   help="how to cite the model, for the card (text or BibTeX; 'suprem': the SuPreM paper)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    p.set_defaults(func=run)


def run(args) -> int:
    card = export_model(args.model_folder, args.output, args.folds, args.checkpoint, args.license, args.citation,
                        args.overwrite)
    print(f"Wrote {args.output}: {card['dataset']}/{card['model_folder']}, folds {' '.join(card['folds'])}. "
          f"Running it {card['requirement']}.")
    if card["orientation_check_required"]:
        print("Its test images must have its training orientation: MODEL.md gives the nnunet-suprem "
              "check-orientation command to run before nnUNetv2_predict.")
    if card["suggested_citation"]:
        print("No --citation given; suggested for this model: --citation suprem (the SuPreM paper).")
    return 0
