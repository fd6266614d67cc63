"""What a server is told: batching and request limits (:class:`ServeOptions`), where it listens
(:class:`Listen`), which versions of a model it serves (:class:`VersionPolicy`), and the bounds
of every number among them (:data:`NUMBERS`), checked the same way on the command line and in
Python. Plain settings: importable without the serving stack."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any


class SettingError(ValueError):
    """A setting that cannot be used; the message names it, the value and what to give instead."""


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting may take: ``low`` to ``high``, whole numbers when ``whole``."""

    low: float
    high: float
    whole: bool = True

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        return f"{kind} from {self.low:g} to {self.high:g}"

    def parse(self, text: str) -> int | float:
        """``text`` as a number within the bound; ``ValueError`` saying what is expected otherwise."""
        try:
            if not text.isascii():  # int() and float() read other scripts' digits: '٣' would be 3
                raise ValueError
            value = int(text) if self.whole else float(text)
        except ValueError:
            raise ValueError(f"must be {self.describe()}, got {text!r}") from None
        self.check(value, repr(text))
        return value

    def check(self, value: Any, shown: str | None = None) -> None:
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not finite or (self.whole and value != int(value)) or not self.low <= value <= self.high:
            raise ValueError(f"must be {self.describe()}, got {shown or repr(value)}")


NUMBERS: dict[str, Bound] = {
    "port": Bound(0, 65535),
    "grpc_port": Bound(0, 65535),
    "workers": Bound(1, 64),
    "threads": Bound(1, 1024),
    "max_batch": Bound(1, 4096),
    "max_wait_ms": Bound(0, 60_000, whole=False),
    "max_queue": Bound(1, 1_000_000),
    "max_files": Bound(1, 10_000),
    "max_upload_mb": Bound(0.001, 2000, whole=False),
    "max_pixels": Bound(1, 1_000_000_000),
    "decode_threads": Bound(1, 64),
    "poll_s": Bound(0, 86_400, whole=False),
}
"""Every numeric setting of ``effnet serve`` / ``effnet-serve`` and its bounds. A non-finite or absurd
value (``inf`` ms of waiting, ``nan`` MB) would hang or break the server, so it is refused up front.
``max_upload_mb`` stops at 2000: gRPC messages are limited to 2 GiB."""


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def check_numbers(settings: Any) -> None:
    """Raise :class:`SettingError` for the first field of a settings dataclass outside :data:`NUMBERS`."""
    for item in fields(settings):
        value = getattr(settings, item.name)
        if item.name in NUMBERS and value is not None:
            try:
                NUMBERS[item.name].check(value)
            except ValueError as error:
                raise SettingError(f"{item.name} {error}") from None


@dataclass(frozen=True)
class ServeOptions:
    """Batching and the limits on what a request may send.

    ``max_batch`` images per model call, formed within ``max_wait_ms`` of the first;
    ``max_queue`` images may wait per model version (more: 503); ``max_files`` per request;
    ``max_upload_mb`` per request body (and per gRPC message); ``max_pixels`` per image
    (decompression bombs, and images too thin to resize); ``decode_threads`` threads decode
    and prepare images; ``api_key``, when set, is required on ``/v1``, ``/v2`` and gRPC.
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_files: int = 32
    max_upload_mb: float = 20.0
    max_pixels: int = 50_000_000
    decode_threads: int = 1
    api_key: str | None = None

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.max_queue < self.max_files:
            raise SettingError(f"max_queue ({self.max_queue}) must hold at least one full request "
                               f"(max_files = {self.max_files})")
        if self.api_key is not None and not self.api_key:
            raise SettingError("the API key is empty; give a non-empty key or none")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    def describe(self) -> dict[str, Any]:
        """The limits a client may want to know (the key is not one of them)."""
        return {key: value for key, value in asdict(self).items() if key != "api_key"}


@dataclass(frozen=True)
class Listen:
    """Where and how the server listens: HTTP on ``host:port`` (0: any free port), gRPC on
    ``grpc_port`` when given, ``workers`` processes sharing the HTTP port."""

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    workers: int = 1
    log_level: str = "info"

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.log_level not in LOG_LEVELS:
            raise SettingError(f"log_level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")


@dataclass(frozen=True)
class VersionPolicy:
    """Which version folders of a model are served, as Triton's policies: the ``latest`` N
    (highest numbers), ``all``, or ``specific`` ones. Text form: ``latest``, ``latest:N``,
    ``all``, ``specific:1,3``."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, argument = text.strip().partition(":")
        if kind == "all" and not argument:
            return cls("all")
        if kind == "latest" and (not argument or re.fullmatch(r"[1-9][0-9]{0,3}", argument)):
            return cls("latest", int(argument or 1))
        if kind == "specific" and re.fullmatch(r"[0-9]{1,18}(,[0-9]{1,18})*", argument):
            return cls("specific", versions=tuple(sorted({int(v) for v in argument.split(",")})))
        raise SettingError(f"version policy {text!r} is not one of latest, latest:N (N from 1 to 9999), all, "
                           "specific:V1,V2,... (version numbers)")

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve among ``versions`` (those on disk)."""
        ordered = sorted(versions)
        if self.kind == "latest":
            return ordered[-self.count:]
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        return "specific:" + ",".join(map(str, self.versions)) if self.kind == "specific" else "all"
