"""Every command the README shows exists: our subcommands parse their README arguments, nnU-Net's are installed."""
import re
import shlex
import sys
from pathlib import Path

import pytest

from nnunet_suprem.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMAND_LINES = [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S)
                 for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def _words(line: str) -> list[str]:
    words = shlex.split(line.replace("$(nnunet-suprem trainers-dir)", "DIR"))
    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
        words = words[1:]
    return words


@pytest.mark.parametrize("line", [line for line in COMMAND_LINES if _words(line)[0] == "nnunet-suprem"])
def test_readme_nnunet_suprem_commands_parse(line):
    build_parser().parse_args(_words(line)[1:])  # exits (fails the test) on an unknown subcommand or option


def test_readme_nnunet_commands_are_installed():
    programs = {_words(line)[0] for line in COMMAND_LINES if _words(line)[0].startswith("nnUNetv2_")}
    assert programs >= {"nnUNetv2_train", "nnUNetv2_predict", "nnUNetv2_plan_and_preprocess"}
    for program in programs:
        assert (Path(sys.executable).parent / program).is_file(), program
