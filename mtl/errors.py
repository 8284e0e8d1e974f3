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
    """An unknown or impossible option value (a strategy name, an algorithm name, a setting)."""


class RunFolderError(MTLError):
    """The output folder cannot be used as asked (exists, missing, unwritable, in use)."""


class DistributedError(MTLError, RuntimeError):
    """A distributed run that cannot start or cannot go on (a rank died, timed out, bad launch)."""


class TrainingDiverged(MTLError, FloatingPointError):
    """The meta-loss or meta-gradient became NaN/Inf; the last good checkpoint is kept."""


class ResultsError(MTLError):
    """A results file that cannot be read as a comparison row (the message names the file)."""


class ExerciseError(MTLError, AssertionError):
    """The exercise's answer is not right yet; the message says what differs and how to fix it."""


class LessonError(MTLError):
    """A lesson failed to execute (the message names the lesson and the cell)."""


class SiteError(MTLError):
    """The course website cannot be built (the message says why and what to do)."""


class ScalingShiftingError(MTLError, ValueError):
    """Scaling & Shifting asked of a model it cannot apply to (no encoder, no conv layers)."""


class HardTaskError(EpisodeError):
    """A hard-task meta-batch that cannot be formed (no class ids, too few classes)."""


def report(error: MTLError) -> int:
    """Print ``error: <message>`` on stderr for a command; its exit code: 2 for a usage error
    (``ConfigError``, as argparse's own), 1 for any other failure."""
    print(f"error: {error}", file=sys.stderr)
    return 2 if isinstance(error, ConfigError) else 1
