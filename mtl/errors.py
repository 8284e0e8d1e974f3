"""Errors a user can fix. Every message says what happened *and* what to do about it."""
from __future__ import annotations

import sys


class MTLError(Exception):
    """Base class: a problem with the user's input, data or files (not a bug in mtl)."""


class DataError(MTLError):
    """Missing, corrupted or wrongly laid out data."""


class EpisodeError(MTLError, ValueError):
    """An impossible episode request (too many ways, too many shots + queries)."""


class InnerLoopError(MTLError, FloatingPointError):
    """The inner loop produced NaN/Inf."""


class CheckpointError(MTLError):
    """A checkpoint that cannot be used (corrupt, wrong architecture, wrong version)."""


class ChecksumError(DataError):
    """A file whose checksum does not match the one recorded for it (nothing of it is kept)."""


class UnsafeArchiveError(DataError):
    """An archive member that would land outside the target folder (absolute path, `..`, link)."""


class TaskBatchError(MTLError, ValueError):
    """Support and query tensors of a batch of tasks that disagree (shapes, task count, labels)."""


class OutputError(MTLError, OSError):
    """An output path that cannot be written as a regular file (a device, FIFO, link, folder, a
    read-only or full location)."""


class ConfigError(MTLError, ValueError):
    """An unknown or impossible option value (a strategy name, a chunk size, an algorithm name)."""


def report(error: MTLError) -> int:
    """Print ``error: <message>`` on stderr for a command; its exit code: 2 for a usage error
    (``ConfigError``, as argparse's own), 1 for any other failure."""
    print(f"error: {error}", file=sys.stderr)
    return 2 if isinstance(error, ConfigError) else 1
