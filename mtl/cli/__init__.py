"""`python -m mtl ...`: one entry point, one module per sub-command.

Each sub-command is one module of this package (``mtl/cli/NAME.py``) with two functions,
``add_arguments(parser)`` and ``run(args) -> int``, over the library functions it drives. This
file only wires them up, importing a sub-command's module when that sub-command is used (so
`mtl data info` never imports matplotlib), and holds the one handler of failures for every
command: an expected failure (`MTLError`, an operating-system error on a file, memory exhausted)
becomes one ``error:`` line that names the fix, exit 2 for a usage error and 1 for any other; an
unexpected exception becomes an ``error:`` line too, asking for ``--debug``. ``--debug`` (or
``MTL_DEBUG=1``) shows the traceback instead. SIGTERM is handled like Ctrl-C (KeyboardInterrupt),
so a terminated command cleans up as an interrupted one does; exit 130.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
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


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` for a ``--threads`` flag (None: torch's default);
    `ConfigError` unless 1 <= threads <= the machine's CPU count."""
    from mtl.errors import ConfigError

    if threads is None:
        return
    cpus = os.cpu_count() or 1
    if not 1 <= threads <= cpus:
        raise ConfigError(f"--threads must be between 1 and this machine's {cpus} CPUs, got {threads}: "
                          f"pass --threads 1 to {cpus}, or leave it out for torch's default")
    import torch

    torch.set_num_threads(threads)


def debug_requested(argv: list[str]) -> bool:
    """``--debug`` among the arguments, or ``MTL_DEBUG`` set to something other than 0/false/no/off."""
    value = os.environ.get("MTL_DEBUG", "").strip().lower()
    return "--debug" in argv or value not in ("", "0", "false", "no", "off")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
    parser = build_parser()
    # Find the command first, then let its module add its own arguments.
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    command_parser = argparse.ArgumentParser(prog=f"python -m mtl {argv[0]}", description=help_text)
    module.add_arguments(command_parser)
    command_parser.add_argument("--debug", action="store_true",
                                help="show the traceback of a failure (also MTL_DEBUG=1)")
    args = command_parser.parse_args(argv[1:])
    args.debug = debug
    with _sigterm_as_interrupt():
        try:
            return int(module.run(args) or 0)
        except Exception as error:  # noqa: BLE001 - the one handler: every failure becomes one line
            if debug:
                raise
            return failure(error)
        except KeyboardInterrupt:
            if debug:
                raise
            print("\ninterrupted", file=sys.stderr)
            return 130


def failure(error: BaseException) -> int:
    """Print one ``error:`` line for ``error`` on stderr; the exit code (2: usage, 1: other)."""
    from mtl.errors import MTLError, report

    if isinstance(error, MTLError):
        return report(error)
    if isinstance(error, MemoryError):
        print("error: out of memory: lower the sizes of the run (--meta-batch, --shots, --queries, "
              "--hidden, --image-size, --eval-batch) or use a machine with more memory", file=sys.stderr)
        return 1
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        print(f"error: could not access{where} ({error.strerror or error}): check the path and its "
              "permissions, and that the disk has free space", file=sys.stderr)
        return 1
    print(f"error: unexpected {type(error).__name__}: {error}. This is a bug in mtl (or an input it "
          "does not check yet): run again with --debug (or MTL_DEBUG=1) for the traceback, and "
          "report it", file=sys.stderr)
    return 1


class _sigterm_as_interrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt (as Ctrl-C does); the old handler is
    put back after. A no-op outside the main thread (signals can only be set there)."""

    def __enter__(self) -> None:
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, _interrupt)
        except ValueError:  # not the main thread
            pass

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
