"""What a folder holds, a check that shared files stay as they were, and a disk that is full."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


def unchanged(folder: Path) -> Iterator[Path]:
    """Yield ``folder`` (a session fixture's files); then fail if a test changed anything in it."""
    before = listing(folder)
    yield folder
    assert listing(folder) == before, f"a test changed the shared folder {folder}: copy it first"


def disk_full(*args, **kwargs):
    """Stands in for a write on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device")
