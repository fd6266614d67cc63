"""A JSON cache file shared by processes: records keyed by what they were measured under.

Read leniently: a file that is not a JSON object, or a record that the caller's check refuses
(a missing field, a latency that is a string or NaN), is dropped with a warning and measured
again, never an internal error. Written under an exclusive lock, re-reading the file first,
so two processes adding records at once both keep theirs. :meth:`CacheFile.locked` holds the
lock around a measurement, so that a second process waits for the first one's answer instead
of measuring (and perhaps deciding) differently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .files import atomic_write

logger = logging.getLogger("effnet")

RecordCheck = Callable[[object], str | None]
"""What is wrong with a record (``None``: it is usable)."""

_held: dict[Path, int] = {}
_thread_locks: dict[Path, threading.RLock] = {}
_guard = threading.Lock()


def cache_key(*parts: object) -> str:
    """A short stable key for JSON-able ``parts`` (the machine, the versions, the question)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) between processes, and between the
    threads of this one, held for the block; re-entrant in one thread. Where ``fcntl`` does not
    exist (Windows) only the threads of this process are kept apart."""
    path = Path(path).resolve()
    with _guard:
        thread_lock = _thread_locks.setdefault(path, threading.RLock())
    with thread_lock:
        if _held.get(path):
            _held[path] += 1
            try:
                yield
            finally:
                _held[path] -= 1
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            try:
                import fcntl
            except ImportError:
                fcntl = None
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            _held[path] = 1
            try:
                yield
            finally:
                _held[path] = 0
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_UN)


class CacheFile:
    """Records (JSON objects) by key in one JSON file: see the module docstring. ``check``
    says what is wrong with a record; such records are dropped with a warning."""

    def __init__(self, path: str | Path, check: RecordCheck) -> None:
        self.path = Path(path)
        self.check = check

    def read(self, warn: bool = True) -> dict[str, dict]:
        """The usable records; a missing file is an empty cache."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            self._warn(warn, f"ignoring the unreadable cache {self.path} ({error}); measuring again")
            return {}
        if not isinstance(data, dict):
            self._warn(warn, f"ignoring the cache {self.path}: it holds a JSON {type(data).__name__}, not an "
                             "object of records; measuring again")
            return {}
        records = {}
        for key, record in data.items():
            problem = "not a JSON object" if not isinstance(record, dict) else self.check(record)
            if problem is None:
                records[key] = record
            else:
                self._warn(warn, f"dropping a bad record of the cache {self.path} ({problem}); it is measured again")
        return records

    def put(self, key: str, record: dict) -> None:
        """Add (or replace) one record, keeping every record another process wrote meanwhile."""
        with self.locked():
            records = self.read(warn=False)
            records[key] = record
            atomic_write(self.path, lambda temp: temp.write_text(json.dumps(records, indent=1)))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The cache's lock (a ``.lock`` file beside it), for a read-measure-write that must not interleave."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            yield

    @staticmethod
    def _warn(warn: bool, message: str) -> None:
        if warn:
            logger.warning(message)
