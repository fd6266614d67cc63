"""SIGINT/SIGTERM during training: a first signal asks the loop to stop cleanly, a second stops at once.

:class:`StopRequest` records the signal; the trainer sees it at its next read of the device,
saves a resumable ``last.pt`` and returns. DataLoader workers ignore both signals
(:func:`signals_to_main_process`): a Ctrl-C reaches the whole process group, and only the main
process must react, save, and then shut the workers down.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from torch.utils.data import DataLoader

from .reporting import LOG


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop at its next read of the device."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt  # second signal: stop now
        self.signal_name = signal.Signals(signum).name
        LOG.warning("%s received: saving a resumable checkpoint at the next check, within run.check_every updates "
                    "(send it again to stop without saving)", self.signal_name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class _IgnoreStopSignals:
    """A DataLoader ``worker_init_fn`` wrapper: workers ignore SIGINT/SIGTERM (a Ctrl-C reaches the
    whole process group), so only the main process reacts, saves, and then shuts them down."""

    def __init__(self, init_fn: Any) -> None:
        self.init_fn = init_fn

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.init_fn is not None:
            self.init_fn(worker_id)


def signals_to_main_process(loader: DataLoader) -> DataLoader:
    """``loader``, its worker processes (if any) set to ignore SIGINT/SIGTERM."""
    if loader.num_workers > 0:
        loader.worker_init_fn = _IgnoreStopSignals(loader.worker_init_fn)
    return loader
