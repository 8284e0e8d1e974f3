"""`python -m mtl ...`: one entry point, one module per sub-command.

Each sub-command is one module of this package (``mtl/cli/NAME.py``) with two functions,
``add_arguments(parser)`` and ``run(args) -> int``, over the library functions it drives. This
file only wires them up, importing a sub-command's module when that sub-command is used (so
`mtl data info` never imports matplotlib).
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: sub-command -> (module, one-line help)
COMMANDS = {
    "data": ("mtl.cli.data", "prepare and inspect the datasets (Omniglot, mini-ImageNet)"),
    "train": ("mtl.cli.train", "meta-train (or pre-train) a model; writes checkpoints and metrics"),
    "evaluate": ("mtl.cli.evaluate", "accuracy +- 95% CI of a checkpoint on fixed, seeded episodes"),
    "adapt": ("mtl.cli.adapt", "adapt a trained model to new classes of your own from a few images"),
    "pipeline": ("mtl.cli.pipeline", "meta-transfer learning end to end: pre-train, Scaling & Shifting, baselines"),
    "compare": ("mtl.cli.compare", "record a finished run as a row of the capstone's table (results/)"),
    "course": ("mtl.cli.course", "run every lesson top to bottom (executed copies + HTML)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mtl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
        command_parser.set_defaults(_module=module_name)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # Find the command first, then let its module add its own arguments.
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    command_parser = argparse.ArgumentParser(prog=f"python -m mtl {argv[0]}", description=help_text)
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
