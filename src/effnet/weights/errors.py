"""The errors of the weights package: each says what was wrong and what to do about it.

They derive from :class:`~effnet.errors.EffnetError` (and ``ValueError`` or
``FileNotFoundError``), so the CLI reports them in one line with exit code 2.
"""

from __future__ import annotations

from ..errors import EffnetError


class CheckpointError(EffnetError, ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, or made for another network."""


class StateDictError(CheckpointError):
    """Weights that do not fit the network they are loaded into (missing, extra or misshapen
    tensors), or that hold NaN or infinity."""


class WeightValuesError(StateDictError):
    """Weights of the right shapes whose values cannot be used: NaN or infinity, or integers
    where the network has floating-point weights."""


class ChecksumError(CheckpointError):
    """A downloaded file whose hash differs from the published one."""


class WeightsUnavailableError(EffnetError, FileNotFoundError):
    """Weights that are neither in the cache nor downloadable right now (offline)."""
