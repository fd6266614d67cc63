"""Writing files so that a crash, a signal or a full disk never leaves half of one.

Every file effnet writes (checkpoints, models, exports, reports, downloads) goes through
:func:`atomic_write`: the bytes go to a temporary file beside the target, are flushed to
disk, and the temporary file is renamed over the target, so the target is always either
the old file or the new one, whole. :func:`publish` is that commit point on its own, for a
file that was written elsewhere first (a resumable download). A folder of several files (a ship
folder) is built whole in a :func:`work_folder` beside its destination and moved into place in
one rename by :func:`publish_folder`; the work folders of processes killed meanwhile are removed
by the next one.

:func:`input_file` checks a file the user named before anything opens it: a FIFO or a device
(``/dev/zero``) would block or never end, so it is refused as "not a regular file".
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from effnet_runtime.portable import special_file

from .errors import DiskFullError, InputFileError, OutputError

TEMP_MARK = ".tmp-"
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_LOW_SPACE_BYTES = 16 * 2**20
"""Below this much free space, a writer's failure without an errno (torch.save's
``inline_container.cc`` enforce error) is taken for a full disk."""


def printable_path(path: str | Path | bytes) -> str:
    """``path`` as text that can always be printed or written as UTF-8: bytes of a file name that
    are not valid UTF-8 (``b"img_\\xff.png"``) appear as ``\\xff`` escapes instead of making the
    write fail."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def input_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file (or a link to one); otherwise an
    :class:`~effnet.errors.InputFileError` naming ``what`` it was meant to be ("checkpoint",
    "recipe file") and what it is: missing, a folder, a FIFO, a device. Nothing is opened."""
    path = Path(path)
    kind = special_file(path)
    if kind is not None:
        raise InputFileError(f"{what} {printable_path(path)} is not a regular file but {kind}; give a file")
    if not path.is_file():
        raise InputFileError(f"{what} {printable_path(path)} does not exist")
    return path


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
        with write_errors_explained(path):
            write(temp)
            publish(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path, keep_partial_on: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
                ) -> Iterator[IO[str]]:
    """A UTF-8 text file that appears at ``path`` whole when the block ends.

    The text goes to a temporary file beside ``path``. It is published when the block ends
    normally, and also when it ends by one of ``keep_partial_on`` (an interruption: the caller
    has finished what it wrote so far, e.g. closed a JSON list). Any other error removes it
    and leaves ``path`` as it was.
    """
    path = Path(path)
    temp = temp_path_for(path)
    try:
        with write_errors_explained(path):
            handle = open(temp, "w", encoding="utf-8", newline="")
            try:
                yield handle
            except keep_partial_on:
                handle.close()
                publish(temp, path)
                raise
            finally:
                handle.close()
            publish(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def write_errors_explained(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` into an :class:`~effnet.errors.OutputError` that says what
    happened: :class:`~effnet.errors.DiskFullError` for a full disk, whatever the writer raised."""
    try:
        yield
    except OutputError:
        raise
    except Exception as error:
        if _is_disk_full(error, path.parent):
            raise DiskFullError(f"disk full while writing {printable_path(path)}: the partial file was removed "
                                "and any previous version kept; free some space and run again") from error
        if isinstance(error, PermissionError):
            raise OutputError(f"cannot write {printable_path(path)}: permission denied; choose a folder you "
                              "can write to") from error
        if isinstance(error, IsADirectoryError):
            raise OutputError(f"cannot write {printable_path(path)}: it is a folder; name a file") from error
        raise


def _is_disk_full(error: BaseException, directory: Path) -> bool:
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    if "No space left on device" in str(error):
        return True
    if isinstance(error, RuntimeError) and "inline_container" in str(error):
        try:
            return shutil.disk_usage(directory).free < _LOW_SPACE_BYTES
        except OSError:
            return False
    return False


def check_output_file(path: str | Path, suffixes: tuple[str, ...] | None = None) -> Path:
    """Refuse, before any work, an output file that could not be written or would destroy
    something: a folder, a file of another kind (``suffixes``: the ones this output may
    replace, e.g. ``(".csv", ".json")``), a missing or read-only folder.
    Raises :class:`~effnet.errors.OutputError`."""
    path = Path(path)
    shown = printable_path(path)
    if path.is_dir():
        raise OutputError(f"{shown} is a folder; give a file name inside it, e.g. {printable_path(path / 'out')}"
                          + (suffixes[0] if suffixes else ""))
    if path.exists() and not path.is_file():
        raise OutputError(f"{shown} exists and is not a regular file; choose another name")
    if path.is_file() and suffixes is not None and path.suffix.lower() not in suffixes:
        raise OutputError(f"{shown} already exists and is not a {'/'.join(s or '(no suffix)' for s in suffixes)} "
                          "file this command writes; it was left as it is: choose another name or delete it first")
    check_output_folder(path.parent)
    if path.is_file() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {shown}: the file is read-only")
    return path


def check_output_folder(folder: str | Path) -> Path:
    """Refuse a folder that cannot be written into: a file in the way, or no write permission
    (on the folder, or on the nearest existing parent when it is still to be created)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {printable_path(folder)}: {printable_path(existing)} is a file, not a "
                          "folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {printable_path(existing)}: permission denied; choose a folder you "
                          "can write to")
    return folder


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


OWNER_LOCK = ".owner.lock"
"""A file in each :func:`work_folder`, locked by the process that owns the folder while it runs."""
UNLOCKED_GRACE_S = 600.0
"""A work folder whose owner cannot be told (no lock file: made by an older effnet or by a process
killed before it took the lock; or no ``fcntl``, on Windows) is taken for a dead run's leftover
once it is this old."""


@contextlib.contextmanager
def work_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A hidden folder ``<prefix>*`` in ``parent`` (the destination's file system, so that
    :func:`publish_folder` is one rename), owned by this process for the block and removed after
    it. Leftovers of dead processes with the same prefix (killed -9, power lost) are removed
    first: a folder whose owner's lock can be taken has no live owner."""
    parent = Path(parent)
    remove_dead_work_folders(parent, prefix)
    work = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        with open(work / OWNER_LOCK, "w") as handle:
            _lock_free(handle)  # taken: held until the block ends or the process dies
            yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_dead_work_folders(parent: str | Path, prefix: str) -> list[Path]:
    """Remove the :func:`work_folder` leftovers of dead processes in ``parent``; returns them."""
    dead = []
    for folder in Path(parent).glob(f"{prefix}*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            with open(folder / OWNER_LOCK, "r+") as handle:
                free = _lock_free(handle)
        except FileNotFoundError:
            free = None
        except OSError:
            continue  # not ours to judge (permissions): leave it
        if free is None:
            free = time.time() - folder.stat().st_mtime >= UNLOCKED_GRACE_S
        if free:
            shutil.rmtree(folder, ignore_errors=True)
            dead.append(folder)
    return dead


def _lock_free(handle: IO) -> bool | None:
    """Take an exclusive lock on ``handle`` without waiting: True when it was free (it is now
    held, until the handle closes), False when another process holds it, None where it cannot be
    told (no ``fcntl``: Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def publish_folder(folder: str | Path, destination: str | Path) -> Path:
    """The commit point for a folder: make its files durable, then rename ``folder`` to
    ``destination`` (absent, or an empty folder) in one step, so that ``destination`` is either
    absent (or empty) or whole."""
    folder, destination = Path(folder), Path(destination)
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
    os.replace(folder, destination)
    _fsync_dir(destination.parent)
    return destination
