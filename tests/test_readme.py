"""The README's commands work: every command in its code blocks exists and its --help runs; our subcommands also
parse the exact arguments the README gives them."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_suprem.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMAND_LINES = [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S)
                 for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def _words(line: str) -> list[str]:
    words = shlex.split(line.replace("$(nnunet-suprem trainers-dir)", "DIR"), comments=True)
    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
        words = words[1:]
    return words


def _programs() -> dict[str, list[str]]:
    """Each distinct command of the README (program, plus subcommand or script) -> its --help invocation."""
    found = {}
    for line in COMMAND_LINES:
        words = _words(line)
        if not words or words[0] in ("export", "cd", "pip", "source"):
            continue
        if words[0] == "nnunet-suprem":
            key = " ".join(words[:2]) if len(words) > 1 and not words[1].startswith("-") else words[0]
            found[key] = [str(Path(sys.executable).parent / "nnunet-suprem"), *key.split()[1:], "--help"]
        elif words[0] == "bash":
            found[" ".join(words[:2])] = ["bash", str(ROOT / words[1]), "--help"]
        elif words[0] == "python":
            found[" ".join(words[:2])] = [sys.executable, str(ROOT / words[1]), "--help"]
        elif words[0].startswith("nnUNetv2_"):
            found[words[0]] = [str(Path(sys.executable).parent / words[0]), "-h"]
        else:  # pytest, or a command this test does not know how to check
            found[words[0]] = [sys.executable, "-m", words[0], "--help"] if words[0] == "pytest" else []
    return found


PROGRAMS = _programs()


@pytest.mark.parametrize("line", [line for line in COMMAND_LINES if _words(line) and _words(line)[0] == "nnunet-suprem"])
def test_readme_nnunet_suprem_commands_parse(line):
    build_parser().parse_args(_words(line)[1:])  # exits (fails the test) on an unknown subcommand or option


def test_readme_shows_the_main_commands():
    assert {"nnUNetv2_train", "nnUNetv2_predict", "nnUNetv2_plan_and_preprocess", "nnunet-suprem demo",
            "pytest"} <= set(PROGRAMS)
    assert {f"bash examples/{p.name}" for p in (ROOT / "examples").glob("*.sh") if p.name != "common.sh"} <= set(
        PROGRAMS)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_readme_command_exists_and_its_help_runs(name):
    argv = PROGRAMS[name]
    assert argv, f"the README shows {name!r}: show only our commands, nnU-Net's, examples/ and benchmarks/ scripts"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert "usage" in (result.stdout + result.stderr).lower(), f"{name}: --help printed no usage"
