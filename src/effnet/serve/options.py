"""What ``effnet serve`` is told: the model to serve (:class:`ModelSource`) and the service's
batching and limits (:class:`ServeOptions`). Plain settings, importable without the serving stack."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .predictor import Predictor, load_predictor


@dataclass(frozen=True)
class ModelSource:
    """Which model to serve and how: see :func:`effnet.serve.load_predictor`. ``threads``: the
    compute threads of this process (None: PyTorch's default)."""

    model: str | None = None
    checkpoint: str | None = None
    artifact: str | None = None
    runtime: str | None = None
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.model is None and self.checkpoint is None and self.artifact is None:
            raise ConfigError("no model to serve: give --model NAME, --checkpoint RUN_OR_FILE or --artifact FOLDER")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")

    def load(self) -> Predictor:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        return load_predictor(self.model, self.checkpoint, self.artifact, self.runtime, self.device)


@dataclass(frozen=True)
class ServeOptions:
    """Batching and the limits on what a request may send.

    ``max_batch`` images per model call, formed within ``max_wait_ms`` of the first;
    ``max_queue`` images may wait (more: 503); ``max_files`` per request; ``max_upload_mb``
    per request body; ``max_pixels`` per image (decompression bombs); ``decode_threads``
    threads decode and prepare uploads; ``api_key`` required on ``/v1/*`` when set.
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
        for name in ("max_batch", "max_queue", "max_files", "max_pixels", "decode_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.max_upload_mb <= 0:
            raise ConfigError(f"max_wait_ms ({self.max_wait_ms}) must be 0 or more and max_upload_mb "
                              f"({self.max_upload_mb}) more than 0")
        if self.max_queue < self.max_files:
            raise ConfigError(f"max_queue ({self.max_queue}) must hold at least one full request "
                              f"(max_files = {self.max_files})")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("the API key is empty; give a non-empty key or none")

    def describe(self) -> dict[str, Any]:
        """The limits a client may want to know (the key is not one of them)."""
        return {key: value for key, value in asdict(self).items() if key != "api_key"}
