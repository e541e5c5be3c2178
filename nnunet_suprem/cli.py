"""The ``nnunet-suprem`` command: one subcommand per job, each defined beside its implementation."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from nnunet_suprem import __version__
from nnunet_suprem.nnunet_env import ConfigurationError, trainers_dir

COMMANDS = {
    "demo": "nnunet_suprem.demo",
    "doctor": "nnunet_suprem.doctor",
    "synth": "nnunet_suprem.synth",
    "convert-abdomenatlas": "nnunet_suprem.convert.abdomenatlas",
    "convert-totalsegmentator": "nnunet_suprem.convert.totalsegmentator",
    "merge": "nnunet_suprem.convert.merge",
    "plan": "nnunet_suprem.planning.preset",
    "plan-transfer": "nnunet_suprem.planning.plan_transfer",
    "split": "nnunet_suprem.planning.split",
    "evaluate": "nnunet_suprem.evaluate.command",
    "check-orientation": "nnunet_suprem.orientation",
    "fewshot": "nnunet_suprem.fewshot.study",
    "fewshot-report": "nnunet_suprem.fewshot.interim",
    "transfer-weights": "nnunet_suprem.transfer.command",
    "import-suprem": "nnunet_suprem.suprem_import",
    "export": "nnunet_suprem.sharing.export",
}
"""Each subcommand and the module whose ``add_subparser`` defines it (after ``trainers-dir``, in ``--help``'s
order). Only the module of the subcommand being run is imported: ``trainers-dir`` needs no torch."""


def _add_trainers_dir(subparsers) -> None:
    p = subparsers.add_parser(
        "trainers-dir", help="print the directory to export as nnUNet_extTrainer",
        description="Print the directory holding the nnunet-suprem trainer modules. Use it as\n"
                    "  export nnUNet_extTrainer=$(nnunet-suprem trainers-dir)\n"
                    "so that nnUNetv2_train/nnUNetv2_predict -tr SuPreMTrainer find our trainers.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: print(trainers_dir()))


class _StdoutHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stdout`` is when a message comes (callers and tests redirect it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _) -> None:
        pass


def configure_logging() -> None:
    """Show the library's messages (``nnunet_suprem`` loggers, INFO and up) on stdout as plain lines, unless the
    ``nnunet_suprem`` logger has a handler already."""
    logger = logging.getLogger("nnunet_suprem")
    if logger.handlers:
        return
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; given the arguments of one run, only that subcommand's module is imported
    (the others are named without their help, which only the top-level ``--help`` lists)."""
    parser = argparse.ArgumentParser(
        prog="nnunet-suprem",
        description="SuPreM-style partial-label pre-training and transfer learning for nnU-Net v2.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_trainers_dir(subparsers)
    chosen = argv[0] if argv else None  # top-level options (-h, --version) come before the subcommand
    one_command = chosen == "trainers-dir" or chosen in COMMANDS
    for name, module in COMMANDS.items():
        if one_command and name != chosen:
            subparsers.add_parser(name)
        else:
            importlib.import_module(module).add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    configure_logging()
    try:
        result = args.func(args)
    except (ValueError, OSError, ConfigurationError) as e:
        print(f"nnunet-suprem {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
