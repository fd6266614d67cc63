"""Connecting a bulk run to Ray: a local instance on this machine's cores, or an existing cluster.

:func:`ray_session` starts a new local instance when no address is given (``address="local"``:
neither a ``ray start`` cluster on this machine nor a stale address file captures it), connects
to ``auto`` (``RAY_ADDRESS``, else the cluster ``ray start --head`` started here),
``HOST:PORT`` or ``ray://HOST:PORT`` after checking that the address answers at all (Ray itself
would wait without end on a dead one), and reuses a connection the caller already made with
``ray.init``. Ray replaces the process's SIGTERM handler when it starts; the session puts back one
that stops the run like Ctrl-C, so that the parts written so far stay whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EffnetError, first_line
from .ray_plan import NodeResources

CONNECT_TIMEOUT_S = 5.0
"""How long a cluster address may take to accept a TCP connection."""


class RayClusterError(EffnetError, RuntimeError):
    """The Ray cluster cannot be reached, or stopped running the job."""


_received: list[str] = []
"""The names of the signals that stopped the run (Ray re-raises an interruption without its message)."""


def _terminate(signum: int, frame: Any) -> None:
    _received.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(_received[-1])


def require_ray() -> None:
    """Fail with what to install when the ``ray`` extra (Ray Data, pyarrow) is missing."""
    try:
        import pyarrow  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed here ({error}): "
                          "pip install 'effnet[ray]'") from None


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray connected for the block (see the module docstring); shut down after it unless the
    caller had connected already."""
    require_ray()
    import ray

    if ray.is_initialized():
        if address is not None:
            raise ConfigError(f"Ray is already connected in this process: drop the Ray address ({address}) to use "
                              "that connection, or call ray.shutdown() first")
        yield
        return
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    if address is None:
        _start_local()
    else:
        _connect(address)
    _received.clear()
    try:
        if in_main_thread:
            signal.signal(signal.SIGTERM, _terminate)
        yield
    except KeyboardInterrupt as interrupt:
        if _received and not str(interrupt):
            raise KeyboardInterrupt(_received[-1]) from None
        raise
    finally:
        ray.shutdown()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _start_local() -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)


def resolve_address(address: str) -> str:
    """``address`` with ``auto`` replaced by the address it stands for."""
    if address != "auto":
        return address
    found = os.environ.get("RAY_ADDRESS")
    if not found:
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        found = current.read_text().strip() if current.is_file() else ""
    if not found:
        raise RayClusterError("--ray-address auto found no Ray cluster: RAY_ADDRESS is not set and no `ray start "
                              "--head` ran on this machine; start one, or give its address (HOST:PORT)")
    return found


def _connect(address: str) -> None:
    import ray
    from ray.exceptions import AuthenticationError

    target = resolve_address(address)
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise RayClusterError(f"cannot reach the Ray cluster at {target} ({error.strerror or error}): start one "
                              "with `ray start --head` or check the address (`ray status` on its head node)") from None
    try:
        ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING)
    except AuthenticationError as error:
        raise RayClusterError(f"the Ray cluster at {target} refused the connection ({first_line(error)}): copy its "
                              "token (~/.ray/auth_token on the head node) to this machine's ~/.ray/auth_token, or "
                              "set RAY_AUTH_TOKEN") from None
    except (ConnectionError, RuntimeError, TimeoutError) as error:
        raise RayClusterError(f"cannot connect to the Ray cluster at {target}: {first_line(error)}") from None


def cluster_nodes() -> list[NodeResources]:
    """The CPUs and GPUs of the connected cluster's alive nodes."""
    import ray

    return [NodeResources(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
            for node in ray.nodes() if node["Alive"]]


def free_cpus() -> float:
    """The connected cluster's CPUs not held by other work now."""
    import ray

    return float(ray.available_resources().get("CPU", 0.0))
