"""The models a server answers for, by name and version, and how versions come and go.

A repository folder is laid out as ``DIR/<model name>/<version number>/``, each version folder
loadable by the server's :class:`~effnet_runtime.serve.predictor.Loader` (a shipped folder;
effnet's loader also takes a checkpoint, ``model.safetensors``). A :class:`~effnet_runtime.serve.settings.VersionPolicy`
chooses the versions served. :meth:`Repository.refresh` (run every ``poll_s`` seconds, and by
the explicit load call) brings the served set in line with the folder:

1. a new version folder, or one whose files changed, is loaded and warmed up off the event loop
   while the versions in service keep answering;
2. it is put in service (requests naming no version go to the highest version in service);
3. versions no longer wanted leave service, finish the requests that hold them and their
   queued images, then are released.

A version that fails to load or warm up is reported (log, ``effnet_model_load_failures_total``,
the index with its reason) and tried again only once its files change; the versions in service
stay. A server of one model (no folder) is a repository of that model at version ``1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batching import Batcher, QueueFullError
from .errors import RequestError
from .metrics import ServeMetrics
from .predictor import Loader, Predictor
from .settings import ServeOptions, VersionPolicy

logger = logging.getLogger("effnet.serve")
VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
"""The states of Triton's repository index."""
Stamp = tuple[tuple[str, int, int], ...]


def stamp(folder: Path) -> Stamp:
    """What identifies a version folder's content: its files' names, sizes and modification times."""
    try:
        return tuple(sorted((p.name, s.st_size, s.st_mtime_ns) for p in folder.iterdir() if p.is_file()
                            for s in [p.stat()]))
    except OSError:
        return ()


def scan(root: Path) -> dict[str, dict[int, Path]]:
    """The models of a repository folder and their version folders (numbered sub-folders)."""
    models: dict[str, dict[int, Path]] = {}
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            models[folder.name] = {int(v.name): v for v in folder.iterdir()
                                   if v.is_dir() and VERSION_NAME.fullmatch(v.name)}
    return models


def queue_full(error: QueueFullError) -> RequestError:
    return RequestError(503, "queue_full", str(error), {"Retry-After": str(error.retry_after)})


class ServedVersion:
    """One model version in service: its predictor, its batcher, the requests using it."""

    def __init__(self, name: str, version: str, predictor: Predictor, options: ServeOptions, metrics: ServeMetrics,
                 folder_stamp: Stamp = ()) -> None:
        self.name = name
        self.version = version
        self.predictor = predictor
        self.stamp = folder_stamp
        self.decoding = 0
        self.metrics = metrics
        self.batcher: Batcher[np.ndarray, np.ndarray] = Batcher(
            self._run, options.max_batch, options.max_wait_ms / 1000, options.max_queue,
            on_batch=metrics.batch_size.labels(name, version).observe)
        self._users = 0
        self._unused = asyncio.Event()
        self._unused.set()

    def _run(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.predictor.probabilities(np.stack(rows)))

    @property
    def queue_depth(self) -> int:
        """Images being decoded or waiting for a batch."""
        return self.decoding + self.batcher.depth

    async def start(self) -> None:
        """Start the batcher and run a warm-up batch (raises what the model raises)."""
        self.batcher.start()
        resolution = self.predictor.resolution
        await self.batcher.call(lambda: self.predictor.probabilities(np.zeros((1, 3, resolution, resolution),
                                                                              np.float32)))
        self.metrics.version_started(self.name, self.version, lambda: self.queue_depth)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[ServedVersion]:
        """Hold this version for one request: it is not released before the request ends."""
        self._users += 1
        self._unused.clear()
        try:
            yield self
        finally:
            self._users -= 1
            if self._users == 0:
                self._unused.set()

    def check_room(self, count: int) -> None:
        """Refuse (503) ``count`` more images when the queue, decoding included, cannot take them now."""
        try:
            self.batcher.check_room(self.decoding + count)
        except QueueFullError as error:
            raise queue_full(error) from None

    async def submit(self, rows: list[np.ndarray]) -> np.ndarray:
        """The probabilities of prepared rows, once their batches ran."""
        try:
            results = await self.batcher.submit(rows)
        except QueueFullError as error:
            raise queue_full(error) from None
        self.metrics.images.labels(self.name, self.version).inc(len(results))
        return np.stack(results)

    async def retire(self) -> None:
        """Wait for the requests holding this version, drain its queue, stop its batcher."""
        await self._unused.wait()
        await self.batcher.close()


@dataclass
class Failure:
    """Why a version folder could not be served, for the files it held then."""

    reason: str
    stamp: Stamp


class Repository:
    """The served models (``models[name][version]``), loaded by ``loader`` from ``root`` per
    ``policy``, or one fixed ``predictor`` (see the module docstring)."""

    def __init__(self, options: ServeOptions, metrics: ServeMetrics, loader: Loader | None = None,
                 root: Path | None = None, policy: VersionPolicy | None = None,
                 predictor: Predictor | None = None) -> None:
        if (root is None) == (predictor is None):
            raise ValueError("a repository has either a root folder or one predictor")
        self.options = options
        self.metrics = metrics
        self.loader = loader
        self.root = root
        self.policy = policy or VersionPolicy()
        self.predictor = predictor
        self.models: dict[str, dict[str, ServedVersion]] = {}
        self.failures: dict[tuple[str, str], Failure] = {}
        self.loading: set[tuple[str, str]] = set()
        self.unloaded: set[str] = set()  # models unloaded by request: polling leaves them out
        self.started = False
        self._lock = asyncio.Lock()
        self._loading_thread = ThreadPoolExecutor(1, thread_name_prefix="effnet-load")

    # ------------------------------------------------------------------ lookups
    def get(self, name: str | None, version: str | None = None) -> ServedVersion:
        """The version answering a request for ``name`` (None: the only model) and ``version``
        (None or "": the highest in service); refuses with 400/404/503 saying what exists."""
        if not name:
            if not self.models:
                raise RequestError(503, "not_ready", "no model is in service (see POST /v2/repository/index)",
                                   {"Retry-After": "1"})
            if len(self.models) > 1:
                raise RequestError(400, "no_model", "this server serves several models: name one with "
                                                    f"?model=NAME ({', '.join(sorted(self.models))})")
            name = next(iter(self.models))
        versions = self.models.get(name)
        if not versions:
            if any(model == name for model, _ in self.loading):
                raise RequestError(503, "not_ready", f"model {name!r} is loading; try again shortly",
                                   {"Retry-After": "1"})
            known = ", ".join(sorted(self.models)) or "none"
            raise RequestError(404, "unknown_model", f"unknown model {name!r} (models in service: {known})")
        if not version:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise RequestError(404, "unknown_version", f"model {name!r} has no version {version!r} in service "
                                                       f"(versions in service: {', '.join(sorted(versions, key=int))})")
        return versions[version]

    def ready(self) -> bool:
        """Started, and every model it should serve has a version in service (Triton's strict readiness)."""
        if not self.started:
            return False
        if self.root is None:
            return bool(self.models)
        on_disk = self._on_disk()
        wanted = set(self.models if on_disk is None else on_disk) - self.unloaded
        return all(self.models.get(name) for name in wanted)

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every model and version with its state and, when not ready, the reason."""
        on_disk = (self._on_disk() if self.root is not None else None) or {}
        rows = []
        for name in sorted(set(on_disk) | set(self.models)):
            served = self.models.get(name, {})
            versions = {str(v) for v in on_disk.get(name, {})} | set(served) | \
                {v for model, v in (*self.failures, *self.loading) if model == name}
            if not versions:
                rows.append({"name": name, "state": UNAVAILABLE,
                             "reason": f"no version folder ({self.root / name}/<number>/)"})
            chosen = {str(v) for v in self.policy.select(list(on_disk.get(name, {})))}
            for version in sorted(versions, key=int):
                rows.append({"name": name, "version": version, **self._state(name, version, version in chosen)})
        return rows

    def _state(self, name: str, version: str, chosen: bool) -> dict[str, str]:
        if version in self.models.get(name, {}):
            return {"state": READY}
        if (name, version) in self.loading:
            return {"state": LOADING}
        if name in self.unloaded:
            return {"state": UNAVAILABLE, "reason": "unloaded"}
        if (name, version) in self.failures:
            return {"state": UNAVAILABLE, "reason": self.failures[name, version].reason}
        if chosen:
            return {"state": UNAVAILABLE, "reason": "found, not loaded yet (at the next poll, or on a load request)"}
        return {"state": UNAVAILABLE, "reason": f"not chosen by the version policy ({self.policy})"}

    def _on_disk(self) -> dict[str, dict[int, Path]] | None:
        """The repository folder's models and versions; None (logged) while it cannot be read, when
        nothing is changed."""
        try:
            return scan(self.root)
        except OSError as error:
            logger.error("effnet serve: cannot read the repository %s (nothing changes until it can be read): %s",
                         self.root, error)
            return None

    # ------------------------------------------------------------------ changes
    async def start(self) -> None:
        """Load and warm up what the server starts with."""
        if self.predictor is not None:
            served = ServedVersion(self.predictor.name, "1", self.predictor, self.options, self.metrics)
            await served.start()
            self.models[served.name] = {"1": served}
        else:
            await self.refresh()
        self.started = True

    async def refresh(self, names: list[str] | None = None) -> None:
        """Bring the served versions of ``names`` (default: every model not unloaded by request)
        in line with the folder and the policy."""
        if self.root is None:
            return
        async with self._lock:
            on_disk = self._on_disk()
            if on_disk is None:
                return
            for name in names if names is not None else sorted((set(on_disk) | set(self.models)) - self.unloaded):
                await self._update(name, on_disk.get(name, {}))

    async def _update(self, name: str, on_disk: dict[int, Path]) -> None:
        current = self.models.get(name, {})
        wanted = {str(v): on_disk[v] for v in self.policy.select(list(on_disk))}
        fresh: dict[str, ServedVersion] = {}
        failed = False
        for version, folder in wanted.items():
            folder_stamp = stamp(folder)
            if version in current and current[version].stamp == folder_stamp:
                fresh[version] = current[version]
                continue
            failure = self.failures.get((name, version))
            if failure is not None and failure.stamp == folder_stamp:
                failed = True
                continue
            loaded = await self._load(name, version, folder, folder_stamp)
            failed = failed or loaded is None
            if loaded is not None:
                fresh[version] = loaded
        if failed:  # the versions in service stay while a wanted one cannot be served
            fresh = {**current, **fresh}
        if fresh:
            self.models[name] = fresh
        else:
            self.models.pop(name, None)
        for version, served in current.items():
            if fresh.get(version) is not served:
                logger.info("effnet serve: %s version %s leaves service", name, version)
                await served.retire()
                if version not in fresh:
                    self.metrics.version_retired(name, version)
        for gone in [key for key in self.failures if key[0] == name and int(key[1]) not in on_disk]:
            del self.failures[gone]

    async def _load(self, name: str, version: str, folder: Path, folder_stamp: Stamp) -> ServedVersion | None:
        self.loading.add((name, version))
        try:
            predictor = await asyncio.get_running_loop().run_in_executor(self._loading_thread, self.loader, folder)
            predictor.name = name  # the repository names its models
            served = ServedVersion(name, version, predictor, self.options, self.metrics, folder_stamp)
            try:
                await served.start()
            except Exception:
                await served.batcher.close()
                raise
        except Exception as error:  # any failure of a version folder is reported, never fatal
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:500]
            self.failures[name, version] = Failure(reason, folder_stamp)
            self.metrics.load_failures.labels(name, version).inc()
            logger.error("effnet serve: %s version %s (%s) cannot be served: %s", name, version, folder, reason)
            return None
        finally:
            self.loading.discard((name, version))
        self.failures.pop((name, version), None)
        logger.info("effnet serve: %s version %s is in service", name, version)
        return served

    async def load(self, name: str) -> None:
        """Triton's explicit load: serve ``name`` (again) from the folder; 400 with the reasons when
        no version of it can be served."""
        if self.root is None:
            raise RequestError(400, "no_repository", "this server serves one model and has no repository to load "
                                                     "from (start it with --repository DIR)")
        if name not in (self._on_disk() or {}):
            raise RequestError(400, "unknown_model", f"failed to load {name!r}: no folder {self.root / name}")
        self.unloaded.discard(name)
        await self.refresh([name])
        if not self.models.get(name):
            reasons = "; ".join(f"version {v}: {f.reason}" for (m, v), f in self.failures.items() if m == name)
            raise RequestError(400, "load_failed", f"failed to load {name!r}: "
                                                   f"{reasons or f'no version folder in {self.root / name}'}")

    async def unload(self, name: str) -> None:
        """Triton's explicit unload: ``name`` leaves service (its requests in flight are answered)."""
        if self.root is None:
            raise RequestError(400, "no_repository", "this server serves one model and cannot unload it; stop the "
                                                     "server instead")
        if name not in self.models and name not in (self._on_disk() or {}):
            raise RequestError(400, "unknown_model", f"failed to unload {name!r}: no such model")
        async with self._lock:
            self.unloaded.add(name)
            await self._retire_all(name)

    async def _retire_all(self, name: str) -> None:
        for served in self.models.pop(name, {}).values():
            await served.retire()
            self.metrics.version_retired(name, served.version)

    async def poll(self, interval_s: float) -> None:
        """Refresh every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:  # a poll must never stop polling
                logger.exception("effnet serve: polling the repository failed")

    async def close(self) -> None:
        """Retire every version (their queues drain) and stop the loading thread."""
        async with self._lock:
            for name in list(self.models):
                await self._retire_all(name)
        self._loading_thread.shutdown(wait=True)
