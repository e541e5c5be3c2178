"""``nnunet-suprem fewshot-report``: a few-shot study's report from the runs evaluated so far.

A study at real budgets takes days; this writes ``fewshot.csv``, ``summary.csv``/``summary.md`` and
``fewshot.png`` in its folder from every (N, draw) that both arms have evaluated, without running anything (a
study that is running goes on). The title says INTERIM and names the runs until all are evaluated; then the
report is the one ``nnunet-suprem fewshot`` writes at its end.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nnunet_suprem.fewshot.study import OUTPUTS, FewShot, read_study

logger = logging.getLogger(__name__)


def write_report(out: Path) -> str:
    """Write the report of the study in ``out`` from its evaluated runs; returns ``summary.md``'s text."""
    return FewShot(out, read_study(out), device="cpu", num_processes=1).report(interim=True)  # runs nothing


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "fewshot-report", help="a few-shot study's report from the runs evaluated so far (interim numbers)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the study's folder (the --out of nnunet-suprem fewshot)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser().resolve()
    logger.info("%s\n\nwrote %s to %s", write_report(out), ", ".join(OUTPUTS), out)
    return 0
