"""The ``nnunet-suprem`` command: one subcommand per job, each defined beside its implementation."""
from __future__ import annotations

import argparse
import logging
import sys

from nnunet_suprem import __version__, demo, doctor, evaluate, fewshot, orientation, suprem_import, synth
from nnunet_suprem.convert import abdomenatlas, merge, totalsegmentator
from nnunet_suprem.nnunet_env import ConfigurationError, trainers_dir
from nnunet_suprem.planning import plan_transfer, preset, split
from nnunet_suprem.sharing import export
from nnunet_suprem.transfer import command as transfer_command


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-suprem",
        description="SuPreM-style partial-label pre-training and transfer learning for nnU-Net v2.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_trainers_dir(subparsers)
    demo.add_subparser(subparsers)
    doctor.add_subparser(subparsers)
    synth.add_subparser(subparsers)
    abdomenatlas.add_subparser(subparsers)
    totalsegmentator.add_subparser(subparsers)
    merge.add_subparser(subparsers)
    preset.add_subparser(subparsers)
    plan_transfer.add_subparser(subparsers)
    split.add_subparser(subparsers)
    evaluate.add_subparser(subparsers)
    orientation.add_subparser(subparsers)
    fewshot.add_subparser(subparsers)
    transfer_command.add_subparser(subparsers)
    suprem_import.add_subparser(subparsers)
    export.add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        result = args.func(args)
    except (ValueError, OSError, ConfigurationError) as e:
        print(f"nnunet-suprem {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
