"""Running the service under uvicorn: one process, or several workers sharing one port.

uvicorn owns the sockets and the signals: on SIGTERM or SIGINT it stops accepting
connections, lets the requests in flight finish (up to ``GRACEFUL_SHUTDOWN_S``), then the
app's shutdown drains the batch queue. With ``workers > 1`` each worker process loads its own
copy of the model (settings travel in the ``EFFNET_SERVE`` environment variable) and the
operating system spreads connections over them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import uvicorn
from fastapi import FastAPI

from ..errors import ConfigError
from .app import create_app
from .options import ModelSource, ServeOptions

ENVIRONMENT_KEY = "EFFNET_SERVE"
GRACEFUL_SHUTDOWN_S = 30


def app_from_environment() -> FastAPI:
    """The app of one worker process, from the settings :func:`serve` put in the environment."""
    settings = json.loads(os.environ[ENVIRONMENT_KEY])
    return create_app(ModelSource(**settings["source"]).load(), ServeOptions(**settings["options"]))


def serve(source: ModelSource, options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT. The model is loaded once here first, so a bad source fails at once."""
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    predictor = source.load()
    common = {"host": host, "port": port, "log_level": log_level, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S}
    if workers == 1:
        uvicorn.run(create_app(predictor, options), **common)
        return
    del predictor
    os.environ[ENVIRONMENT_KEY] = json.dumps({"source": asdict(source), "options": asdict(options)})
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **common)
