"""Running a server: bind the port(s) first, then load the models, then serve under uvicorn.

:func:`serve` binds the HTTP socket (and checks the gRPC port) before anything is loaded, so a
port in use or a bad address is a one-line error at once
(:class:`~effnet_runtime.serve.settings.SettingError`), and hands the bound socket to uvicorn (no
second bind, no race). uvicorn owns the signals: on SIGTERM or
SIGINT it stops accepting connections, answers the requests in flight (up to
``GRACEFUL_SHUTDOWN_S``), then the app's shutdown stops gRPC and drains every queue; the
process then returns normally.

``--workers N`` starts N processes sharing the HTTP socket, each loading its own copy of the
one model (settings travel in the ``EFFNET_SERVE`` environment variable). A repository, and
gRPC, run in one process: a load or unload request would reach only one worker, and gRPC cannot
share a port between processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .predictor import Loader
from .settings import Listen, ServeOptions, SettingError, VersionPolicy, check_numbers

ENVIRONMENT_KEY = "EFFNET_SERVE"
GRACEFUL_SHUTDOWN_S = 30


@dataclass(frozen=True)
class ModelSource:
    """What a server serves: the one model ``loader()`` makes, or the ``repository`` folder whose
    version folders ``loader(folder)`` loads, chosen by ``policy`` and looked at again every
    ``poll_s`` seconds (0: only on an explicit load request)."""

    loader: Loader
    repository: str | None = None
    policy: str = "latest:1"
    poll_s: float = 5.0

    def __post_init__(self) -> None:
        check_numbers(self)
        VersionPolicy.parse(self.policy)
        if self.repository is not None and not Path(self.repository).is_dir():
            raise SettingError(f"repository {self.repository} is not a folder: give a folder laid out as "
                               "DIR/<model name>/<version number>/")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSource:
        return cls(**{**data, "loader": Loader(**data["loader"])})


@dataclass(frozen=True)
class Settings:
    """Everything :func:`serve` needs, in a form that travels to worker processes as JSON."""

    source: ModelSource
    options: ServeOptions = field(default_factory=ServeOptions)
    listen: Listen = field(default_factory=Listen)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        return cls(ModelSource.from_dict(data["source"]), ServeOptions(**data["options"]), Listen(**data["listen"]))


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` as uvicorn binds its own (IPv6 when ``host`` has a
    colon, SO_REUSEADDR), not yet listening; a bad address or a port in use is a
    :class:`~effnet_runtime.serve.settings.SettingError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as error:
        sock.close()
        raise SettingError(f"cannot use address {host!r}: {error.strerror}; give an IP address or a host name of "
                           "this machine (--host)") from None
    except OSError as error:
        sock.close()
        raise SettingError(f"cannot listen on {host}:{port}: {error.strerror} (choose another --port, or stop "
                           "what uses it)") from None
    sock.set_inheritable(True)
    return sock


def check_grpc(listen: Listen) -> str:
    """The gRPC address, after checking that its port is free and the grpc extra is installed."""
    try:
        from . import grpc_service
    except ImportError as error:
        raise SettingError(f"--grpc-port needs the grpc extra ({error}): pip install 'effnet-runtime[grpc]'") \
            from None
    if listen.grpc_port == listen.port:
        raise SettingError(f"--grpc-port and --port are both {listen.port}: give them different ports")
    bind(listen.host, listen.grpc_port).close()  # grpc binds by itself when it starts; fail now, before loading
    return grpc_service.grpc_address(listen.host, listen.grpc_port)


def build_app(settings: Settings, grpc_address: str | None = None) -> Any:
    """The app of ``settings``: the one model is loaded here (errors raise), a repository's
    versions when the app starts (errors are reported per version)."""
    from .app import create_app
    from .metrics import ServeMetrics
    from .repository import Repository
    from .service import Service

    source, options = settings.source, settings.options
    metrics = ServeMetrics()
    if source.repository is None:
        repository = Repository(options, metrics, predictor=source.loader())
    else:
        repository = Repository(options, metrics, source.loader, Path(source.repository),
                                VersionPolicy.parse(source.policy))
    return create_app(Service(repository, options, metrics, source.poll_s), grpc_address)


def app_from_environment() -> Any:
    """The app of one worker process, from the settings :func:`serve` put in the environment."""
    return build_app(Settings.from_json(os.environ[ENVIRONMENT_KEY]))


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """Let the SIGTERM/SIGINT that uvicorn re-raises after its graceful shutdown end nothing
    more: the server has drained, so the process returns normally."""
    ignored = (signal.SIGTERM, signal.SIGINT)
    previous = {number: signal.signal(number, lambda *_: None) for number in ignored}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _log_to_stderr(level: str) -> None:
    """The server's own messages (versions loaded, failed, retired) on stderr, as uvicorn's are."""
    logger = logging.getLogger("effnet.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:  %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT (see the module docstring)."""
    try:
        import uvicorn

        from . import app  # noqa: F401 (the serving stack: Starlette, python-multipart, prometheus_client)
    except ImportError as error:
        raise SettingError(f"serving needs the serve extra ({error}): pip install 'effnet-runtime[serve]' (or "
                           "'effnet[serve]')") from None
    source, listen = settings.source, settings.listen
    _log_to_stderr(listen.log_level)
    if listen.workers > 1 and (source.repository is not None or listen.grpc_port is not None):
        raise SettingError(f"--workers {listen.workers} serves one model over HTTP: a repository and gRPC run in one "
                           "process (drop --workers, or run several servers behind a load balancer)")
    sock = bind(listen.host, listen.port)
    try:
        address = check_grpc(listen) if listen.grpc_port is not None else None
        common = {"log_level": listen.log_level, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
                  "access_log": False}
        if listen.workers == 1:
            server = uvicorn.Server(uvicorn.Config(build_app(settings, address), **common))
            with _signals_end_quietly():
                server.run(sockets=[sock])
            return
        source.loader()  # fail here, once, rather than in every worker
        os.environ[ENVIRONMENT_KEY] = settings.to_json()
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, fd=sock.fileno(), workers=listen.workers,
                    **common)
    finally:
        sock.close()
