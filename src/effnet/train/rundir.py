"""One run per run directory: a lock while a run writes there, and no run mixed into another's.

A run left without a folder gets ``runs/<model>-<date>-<time>`` (:func:`default_run_dir`);
once claimed, :func:`prepare_run_dir` removes what an unfinished save left there and writes
the run's ``config.yaml``.

:func:`claim_run_dir` takes an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` (the kernel
drops it when the process ends, even on SIGKILL, so a crashed run never leaves a stale
lock) and writes its process id there, so a second run into the same folder is refused
with a message that names the first. A fresh run into a folder that already holds another
run's files is refused too, unless told to ``overwrite`` (those files are then removed) or
to resume. On platforms without ``fcntl`` (Windows) the folder check still applies, the
lock does not.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write, printable_path, remove_stale_temps
from ..weights.trained import BEST, LAST, MODEL
from .config import TrainConfig
from .recipes import save_config

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOG = logging.getLogger("effnet.train")
LOCK_NAME = ".lock"
RUN_FILES = (LAST, BEST, MODEL, "config.yaml", "train.log", "metrics.csv", "curves.png", "confusion_matrix.png",
             "confusion_matrix.csv", "confusion_pairs.csv", "per_class.csv", "mistakes.csv", "mistakes.png",
             "tensorboard")
"""What a run leaves in its folder (see :mod:`effnet.train.reporting`)."""


def default_run_dir(model_name: str, root: str | Path = "runs") -> Path:
    """``runs/<model>-<date>-<time>``."""
    return Path(root) / f"{model_name}-{datetime.now():%Y%m%d-%H%M%S}"


class RunDirError(ConfigError):
    """A run directory that is in use by another run, or holds another run's files."""


def existing_run_files(run_dir: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``run_dir``."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_fresh_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a new run into a folder holding another run's files, unless ``overwrite``."""
    found = existing_run_files(run_dir)
    if found and not overwrite:
        resume = f"continue it with --resume {printable_path(run_dir)}, " if {LAST, BEST} & set(found) else ""
        raise RunDirError(f"{printable_path(run_dir)} already holds another run ({', '.join(found[:4])}"
                          f"{' ...' if len(found) > 4 else ''}): {resume}choose another --out, or pass --overwrite "
                          "to replace it")


def check_resume_run_dir(run_dir: Path, state: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume into a folder that lacks the best checkpoint the resumed state records
    (a ``last.pt`` copied out of its run, or ``--out`` elsewhere): the run could not finish."""
    if state.get("best", {}).get("epoch") is not None and not (run_dir / BEST).is_file():
        raise RunDirError(f"{printable_path(checkpoint)} records its best epoch in {BEST}, which is not in "
                          f"{printable_path(run_dir)}: resume from the run's own folder (--resume RUN_DIR, without "
                          f"--out), or copy its {BEST} there")


class RunDirLock:
    """The exclusive claim of one process on a run directory; :meth:`release` (or process exit) ends it."""

    def __init__(self, run_dir: Path, handle: Any) -> None:
        self.run_dir = run_dir
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None


def claim_run_dir(run_dir: str | Path, fresh: bool, overwrite: bool = False) -> RunDirLock:
    """Create ``run_dir`` and lock it for this process; for a ``fresh`` run, also check (under
    the lock) that no other run's files are there, removing them when ``overwrite``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = None
    if fcntl is not None:
        handle = open(run_dir / LOCK_NAME, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirError(f"{printable_path(run_dir)} is in use by another effnet run (process {owner}); wait for "
                              "it to finish or stop it, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    lock = RunDirLock(run_dir, handle)
    if fresh:
        try:
            check_fresh_run_dir(run_dir, overwrite)
        except RunDirError:
            lock.release()
            raise
        for name in existing_run_files(run_dir):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    return lock


def prepare_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """In a claimed run directory, remove the temporary files of saves that did not finish and
    write the run's ``config.yaml``."""
    for stale in remove_stale_temps(run_dir):
        LOG.warning("removed %s, left by a save that did not finish", stale.name)
    atomic_write(run_dir / "config.yaml", lambda temp: save_config(config, temp))
