"""Argument types of the numeric flags: whole numbers and finite reals within sane bounds.

argparse refuses anything else before any work, in one line that names the flag
(``effnet train: error: argument --epochs: 1e30 is not a whole number from 1 to 100,000``):
``nan``, ``inf``, a 5,000-digit number, ``²`` (a Unicode digit), or a value so large that the
command would run for ever or allocate without bound.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..description import MAX_RESOLUTION
from ..weights.io import MAX_CLASSES

MAX_TEXT = 40
"""Longer arguments are not parsed as numbers at all (Python's int() of 5,000 digits is slow)."""
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_WORKERS = 512
MAX_THREADS = 1_024
MAX_IMAGES = 10_000_000
MAX_SEED = 2**63 - 1
MAX_LR = 10.0


def _shown(text: str) -> str:
    return repr(text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "...")


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number (ASCII digits) from ``low`` to ``high``."""
    def parse(text: str) -> int:
        stripped = text.strip()
        try:
            if not stripped.isascii() or len(stripped) > MAX_TEXT:
                raise ValueError
            value = int(stripped)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole number from {low:,} to {high:,}")
        return value

    return parse


def number(text: str) -> float:
    """An argparse type: a number written in ASCII, checked by the command itself (``scale``'s
    bases and coefficient, whose messages say what each value does); Python's ``float`` would
    read ``'٣'`` as 3."""
    stripped = text.strip()
    try:
        if not stripped.isascii() or len(stripped) > MAX_TEXT:
            raise ValueError
        return float(stripped)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a number") from None


def real(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number between ``low`` and ``high`` (each bound included
    unless ``low_open`` / ``high_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        stripped = text.strip()
        try:
            if not stripped.isascii() or len(stripped) > MAX_TEXT:
                raise ValueError
            value = float(stripped)
        except ValueError:
            value = math.nan
        inside = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a finite number in {interval}")
        return value

    return parse


EPOCHS = whole(1, MAX_EPOCHS)
BATCH = whole(1, MAX_BATCH)
WORKERS = whole(0, MAX_WORKERS)
THREADS = whole(1, MAX_THREADS)
IMAGE_SIZE = whole(1, MAX_RESOLUTION)
IMAGES = whole(1, MAX_IMAGES)
CLASSES = whole(1, MAX_CLASSES)
SEED = whole(0, MAX_SEED)
FRACTION = real(0.0, 1.0, low_open=True, high_open=True)
LEARNING_RATE = real(0.0, MAX_LR, low_open=True)
