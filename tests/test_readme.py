"""The documentation's commands work: every command in the ```bash blocks of README.md and of every docs/*.md page
exists and its --help runs; our subcommands also parse the exact arguments the pages give them. Relative links
between the pages resolve, and .ci/run reads its install and test commands from the README's marked blocks."""
import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_suprem.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _command_lines(page: Path) -> list[tuple[str, int, str]]:
    """(page, line number, command) for every non-comment line of the page's ```bash blocks."""
    text = page.read_text()
    found = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        first = text.count("\n", 0, block.start(1)) + 1
        for offset, line in enumerate(block.group(1).splitlines()):
            if line.strip() and not line.strip().startswith("#"):
                found.append((_rel(page), first + offset, line.strip()))
    return found


COMMAND_LINES = [found for page in PAGES for found in _command_lines(page)]


def _words(line: str) -> list[str]:
    words = shlex.split(line.replace("$(nnunet-suprem trainers-dir)", "DIR"), comments=True)
    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
        words = words[1:]
    return words


def _programs() -> dict[str, tuple[list[str], str]]:
    """Each distinct command of the pages (program, plus subcommand or script) -> (its --help invocation, the first
    page:line showing it)."""
    found = {}
    for page, number, line in COMMAND_LINES:
        words = _words(line)
        if not words or words[0] in ("export", "cd", "pip", "source"):
            continue
        if words[0] == "nnunet-suprem":
            key = " ".join(words[:2]) if len(words) > 1 and not words[1].startswith("-") else words[0]
            argv = [str(Path(sys.executable).parent / "nnunet-suprem"), *key.split()[1:], "--help"]
        elif words[0] == "bash":
            key, argv = " ".join(words[:2]), ["bash", str(ROOT / words[1]), "--help"]
        elif words[0] == "python":
            key, argv = " ".join(words[:2]), [sys.executable, str(ROOT / words[1]), "--help"]
        elif "torchrun" in words[:2]:  # torchrun ... -m MODULE, or srun torchrun ... -m MODULE
            module = words[words.index("-m") + 1]
            key, argv = f"torchrun -m {module}", [sys.executable, "-m", module, "--help"]
        elif words[0].startswith("nnUNetv2_"):
            key, argv = words[0], [str(Path(sys.executable).parent / words[0]), "-h"]
        else:  # pytest, or a command this test does not know how to check
            key, argv = words[0], [sys.executable, "-m", words[0], "--help"] if words[0] == "pytest" else []
        found.setdefault(key, (argv, f"{page}:{number}"))
    return found


PROGRAMS = _programs()


def test_the_pages_are_read():
    assert _rel(PAGES[0]) == "README.md" and "docs/README.md" in map(_rel, PAGES)
    assert {page for page, _, _ in COMMAND_LINES} >= {"README.md", "docs/fewshot.md", "docs/abdomenatlas-pretraining.md"}


@pytest.mark.parametrize("line", [pytest.param(line, id=f"{page}:{number}") for page, number, line in COMMAND_LINES
                                  if _words(line) and _words(line)[0] == "nnunet-suprem"])
def test_documented_nnunet_suprem_commands_parse(line):
    build_parser().parse_args(_words(line)[1:])  # exits (fails the test) on an unknown subcommand or option


SLURM_SCRIPTS = sorted((ROOT / "examples" / "slurm").glob("*.sbatch"))
SCRIPT_LINES = [(_rel(script), number, line.strip()) for script in SLURM_SCRIPTS
                for number, line in enumerate(script.read_text().splitlines(), 1) if not line.lstrip().startswith("#")]
TORCHRUN_LINES = [pytest.param(line, id=f"{page}:{number}") for page, number, line in COMMAND_LINES + SCRIPT_LINES
                  if "torchrun" in _words(line)[:2]]


@pytest.mark.parametrize("line", TORCHRUN_LINES)
def test_documented_torchrun_commands_parse(line, capsys):
    """torchrun's own parser accepts its options; every option after ``-m nnunet_suprem.train`` is nnUNetv2_train's."""
    from torch.distributed.run import get_args_parser
    from nnunet_suprem.train import main

    words = _words(line)
    args = get_args_parser().parse_args(words[words.index("torchrun") + 1:])
    assert args.module and args.training_script == "nnunet_suprem.train"
    with pytest.raises(SystemExit):
        main(["--help"])
    options = set(re.findall(r"(?<![\w-])(--?[a-z_]+)", capsys.readouterr().out))
    shown = [w for w in args.training_script_args if w.startswith("-")]
    assert shown and set(shown) <= options - {"-num_gpus"}, f"not options of nnunet_suprem.train: {set(shown) - options}"


def test_the_slurm_examples_are_bash_with_a_torchrun_line():
    assert SLURM_SCRIPTS and all(any(page == _rel(script) for page, _, line in SCRIPT_LINES if "torchrun" in line)
                                 for script in SLURM_SCRIPTS)
    for script in SLURM_SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert script.name in (ROOT / "examples" / "README.md").read_text()


def test_the_documentation_shows_the_main_commands():
    assert {"nnUNetv2_train", "nnUNetv2_predict", "nnUNetv2_plan_and_preprocess", "nnunet-suprem demo",
            "pytest"} <= set(PROGRAMS)
    assert {f"bash examples/{p.name}" for p in (ROOT / "examples").glob("*.sh") if p.name != "common.sh"} <= set(
        PROGRAMS)
    readme = {_words(line)[0] for page, _, line in COMMAND_LINES if page == "README.md" and _words(line)}
    assert {"nnunet-suprem", "pip", "pytest", "export"} <= readme  # the newcomer's commands stay in the README


def test_the_cli_reference_lists_every_subcommand():
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", (ROOT / "docs" / "cli.md").read_text(), re.M))
    assert listed == set(subcommands)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces -> -."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#{1,6} (.+)$", text, re.M)}


LINKED_PAGES = PAGES + [ROOT / "examples" / "README.md", ROOT / "plans" / "README.md"]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=_rel)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{_rel(page)}: link to {target}: no such file"
        if anchor:
            assert anchor in _anchors(linked), f"{_rel(page)}: link to {target}: no such heading"


def test_ci_reads_the_readmes_marked_blocks():
    printed = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True,
                             check=True).stdout
    readme = (ROOT / "README.md").read_text()
    install = re.search(r"^<!-- ci: install -->\n```bash\n(.*?)```", readme, re.S | re.M).group(1)
    test = re.search(r"^<!-- ci: test -->\n```bash\n(.*?)```", readme, re.S | re.M).group(1)
    assert printed.startswith(f"== install ==\n{install}") and f"== test ==\n{test}" in printed
    assert "pytest -q tests" in test


@pytest.mark.e2e
@pytest.mark.parametrize("name", [pytest.param(name, id=f"{PROGRAMS[name][1]}: {name}") for name in sorted(PROGRAMS)])
def test_documented_command_exists_and_its_help_runs(name):
    argv, where = PROGRAMS[name]
    assert argv, f"{where} shows {name!r}: show only our commands, nnU-Net's, examples/ and benchmarks/ scripts"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert "usage" in (result.stdout + result.stderr).lower(), f"{name}: --help printed no usage"
