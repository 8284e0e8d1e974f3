"""Errors a user can fix. Every message says what happened *and* what to do about it."""
from __future__ import annotations


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
