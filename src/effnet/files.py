"""Writing files so that a crash, a signal or a full disk never leaves half of one.

Every file effnet writes (checkpoints, models, exports, reports, downloads) goes through
:func:`atomic_write`: the bytes go to a temporary file beside the target, are flushed to
disk, and the temporary file is renamed over the target, so the target is always either
the old file or the new one, whole. :func:`publish` is that commit point on its own, for a
file that was written elsewhere first (a resumable download).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_MARK = ".tmp-"


def temp_path_for(path: Path) -> Path:
    """A hidden temporary name beside ``path`` that keeps its suffix (writers that read the
    suffix, such as ONNX or matplotlib, still see ``.onnx`` or ``.png``)."""
    return path.with_name(f".{path.stem}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temp_path)``, make the bytes durable, then atomically rename to ``path``.

    If ``write`` raises (a failed verification, a full disk), the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    temp = temp_path_for(path)
    try:
        write(temp)
        publish(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def publish(temp: str | Path, path: str | Path) -> Path:
    """The commit point: fsync ``temp``, rename it over ``path`` and persist the rename."""
    temp, path = Path(temp), Path(path)
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temporary files left by a process killed while writing; returns what was removed."""
    stale = [p for p in Path(directory).glob(f".*{TEMP_MARK}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
