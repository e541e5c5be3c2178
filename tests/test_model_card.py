"""The model card (``MODEL.md``, ``model.json``) of ``nnunet-suprem export``: what the receiver must do, orientation
included, and every quoted text shown literally, whatever it holds (rendered with a CommonMark parser)."""
import html
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from nnunet_suprem.manifest import MANIFEST_FORMAT
from nnunet_suprem.orientation import ORIENTATION_KEY
from nnunet_suprem.sharing.card import card_markdown, model_card
from nnunet_suprem.sharing.export import _citation_text
from nnunet_suprem.sharing.model_folder import ModelFolder, Portability

HOSTILE = {
    "link": "[click me](https://evil.example/x)",
    "image": "![x](https://evil.example/pixel.png)",
    "html": "<img src=x onerror=alert(1)><script>alert(2)</script>",
    "heading": "# Trusted by the FDA",
    "cell": "liver | 99 | extra",
    "code": "``` x",
}
CITATION = "@misc{x,\n```\n</code></pre><a href='https://evil.example'>cite</a>\n# Heading\n}"


def _card(dataset_json: dict, checkpoint: dict, license: str | None = None, citation: str | None = None,
          model_folder: str = "SuPreMTrainer__nnUNetPlans__3d_fullres") -> dict:
    """The card export writes for a model folder with these files (``checkpoint``: the first fold's)."""
    trainer, plans, configuration = model_folder.split("__")
    model = ModelFolder(Path("/results/Dataset501_Card") / model_folder, "Dataset501_Card", trainer, plans,
                        configuration, {}, dataset_json, ["0", "1"], "checkpoint_final.pth")
    port = Portability(trainer, "nnunet_suprem.training.suprem_trainer", "SuPreMTrainer", "nnUNetTrainer",
                       "dynamic_network_architectures.architectures.unet.PlainConvUNet", ())
    return model_card(model, port, {"current_epoch": 1000, "inference_allowed_mirroring_axes": (0,), **checkpoint},
                      license, _citation_text(citation))


DATASET_JSON = {"labels": {"background": 0, "kidney_left": 1, "kidney_right": 2}, "channel_names": {"0": "CT"},
                "numTraining": 4, "file_ending": ".nii.gz"}


@pytest.mark.parametrize("reader, required", [("SimpleITKIO", True), ("NibabelIO", True),
                                              ("NibabelIOWithReorient", False)])
def test_card_says_test_images_need_the_training_orientation(reader, required):
    """Measured: a model trained with a reader that keeps index order said only "stock nnU-Net runs it"."""
    card = _card(DATASET_JSON, {ORIENTATION_KEY: {"reader": reader, "left_right": [2, 1]}})
    markdown = card_markdown(card)
    assert card["orientation_check_required"] is required
    assert card["training_orientation"] == {"reader": reader, "left_right": [2, 1]}
    command = ('nnunet-suprem check-orientation "$nnUNet_results"/Dataset501_Card/'
               'SuPreMTrainer__nnUNetPlans__3d_fullres -i INPUT_FOLDER')
    assert (command in markdown) is required
    assert ("must have the training orientation (array axis 2 (x) grows towards the patient's left)"
            in _rendered_text(markdown)) is required
    assert ("its test images must first pass" in markdown) is required
    assert "stock nnU-Net runs it (trainer nnUNetTrainer): no plugin" in markdown  # plain text stays readable


def test_card_without_orientation_record_asks_nothing():
    card = _card(DATASET_JSON, {})
    assert card["orientation_check_required"] is False and "check-orientation" not in card_markdown(card)


def _rendered_text(markdown: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").enable("table").render(markdown)))


def test_card_quotes_hostile_texts_literally():
    """Label, channel and source names, --license, --citation and a folder name with markup: the rendered card has
    only its own headings, no link, image or HTML, three cells in every table row, and shows each text as given."""
    labels = {"background": 0, **{text: value for value, text in enumerate(HOSTILE.values(), 1)}}
    dataset_json = {**DATASET_JSON, "labels": labels, "channel_names": {"0": HOSTILE["html"]},
                    "partial_labels": {"format": MANIFEST_FORMAT,
                                       "groups": {HOSTILE["cell"]: {"cases": ["a"], "annotated": [HOSTILE["link"]]}}}}
    license = f"1. {HOSTILE['link']}"
    card = _card(dataset_json, {}, license=license, citation=CITATION,
                 model_folder="SuPreMTrainer__nnUNetPlans__3d_`x`<b>")
    rendered = MarkdownIt("commonmark").enable("table").render(card_markdown(card))
    assert not re.search(r"<(a|img|script|b|ol)[\s>]", rendered) and rendered.count("<ul>") == 1, rendered
    assert re.findall(r"<h(\d)>([^<]*)</h\1>", rendered) == [
        ("1", "Dataset501_Card: nnU-Net 3d_`x`&lt;b&gt; model"), ("2", "Classes"), ("2", "Training data"),
        ("2", "Model"), ("2", "License"), ("2", "Citation")]
    rows = re.findall(r"<tr>(.*?)</tr>", rendered, re.S)
    assert len(rows) == 1 + len(HOSTILE) + 1 + 2 and all(len(re.findall(r"<t[hd]>", r)) == 3 for r in rows), rows
    text = _rendered_text(card_markdown(card))
    for value in (*HOSTILE.values(), license, CITATION):
        assert value in text, value
    assert "-c '3d_`x`<b>'" in text  # the shown nnUNetv2_predict command quotes it for the shell


@pytest.mark.parametrize("citation", ["a\x85b", "a\u202eb", "a\u200bb"])
def test_citation_with_invisible_characters_is_refused(citation):
    with pytest.raises(ValueError, match="invisible"):
        _citation_text(citation)
