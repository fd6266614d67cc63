"""The errors of the weights package: each says what was wrong and what to do about it.

They subclass ``ValueError`` or ``FileNotFoundError`` so the CLI reports them as usage
errors (exit code 2) rather than crashes.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, or made for another network."""


class ChecksumError(CheckpointError):
    """A downloaded file whose hash differs from the published one."""


class WeightsUnavailableError(FileNotFoundError):
    """Weights that are neither in the cache nor downloadable right now (offline)."""
