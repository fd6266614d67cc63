"""The HTTP service (FastAPI): predictions with dynamic batching, model info, health, metrics, a web page.

``create_app(predictor, options)`` builds the app; run it with any ASGI server (``effnet
serve`` uses uvicorn, see :mod:`effnet.serve.server`). Endpoints:

- ``POST /v1/predict``: images as multipart files or one raw image body; ``top_k`` as a query
  parameter or form field (default 5). Answers ``{"model", "runtime", "predictions": [...],
  "time_ms"}`` with one record of :data:`effnet_runtime.portable.PREDICTION_SCHEMA` per image (and
  ``file``, the deprecated name of its ``path``).
- ``GET /v1/model``: name, runtime, classes, preprocessing and limits.
- ``GET /healthz``: 200 once the model is loaded and warmed up, 503 before.
- ``GET /metrics``: Prometheus text (see :mod:`effnet.serve.metrics`).
- ``GET /``: the web page (one self-contained HTML file, no external assets).

Every refusal is JSON ``{"error": CODE, "message": TEXT}`` with a 4xx status (503 with
``Retry-After`` while warming up or when the queue is full). With an API key set, ``/v1/*``
needs it as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from effnet_runtime.portable import prediction_record

from ..infer import top_classes
from .batching import Batcher, QueueFullError
from .metrics import RequestMetrics, ServeMetrics
from .options import ServeOptions
from .predictor import Predictor
from .uploads import BodyLimit, RequestError, Upload, decode_upload, read_uploads

logger = logging.getLogger("effnet.serve")
ENDPOINTS = ("/", "/healthz", "/metrics", "/v1/model", "/v1/predict")
DEFAULT_TOP_K = 5


def parse_top_k(value: str | None, num_classes: int) -> int:
    """``top_k`` from the request (default 5), at most the number of classes."""
    if value is None:
        return min(DEFAULT_TOP_K, num_classes)
    if not value.strip().isdigit() or int(value) < 1:
        raise RequestError(400, "bad_top_k", f"top_k must be a whole number of at least 1, got {value!r}")
    return min(int(value), num_classes)


class Service:
    """The app's state: predictor, batcher, metrics, readiness. ``decoding`` images are being
    decoded; they count against ``max_queue`` with the ones waiting for a batch."""

    def __init__(self, predictor: Predictor, options: ServeOptions) -> None:
        self.predictor = predictor
        self.options = options
        self.batcher: Batcher[torch.Tensor, torch.Tensor] | None = None
        self.decoding = 0
        self.metrics = ServeMetrics(lambda: self.decoding + (self.batcher.depth if self.batcher is not None else 0))
        self.ready = False
        self.failure: str | None = None
        self._api_key = options.api_key.encode() if options.api_key else None
        # Few decoding threads: every thread that runs torch ops (the transforms) gets its own OpenMP
        # pool, and dozens of them would crowd out the model's threads on a small machine.
        self.decoder = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="effnet-decode")

    def run_batch(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.predictor.probabilities(torch.stack(images)))

    def prepare(self, uploads: list[Upload]) -> list[torch.Tensor]:
        return [self.predictor.prepare(decode_upload(upload, self.options.max_pixels)) for upload in uploads]

    def authorize(self, request: Request) -> None:
        if self._api_key is None:
            return
        given = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if given is None and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not given:
            raise RequestError(401, "missing_api_key", "this service needs an API key: send it as X-API-Key: KEY "
                                                       "or Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), self._api_key):
            raise RequestError(403, "wrong_api_key", "the API key is not the one this service was started with")

    def check_ready(self) -> None:
        if not self.ready:
            raise RequestError(503, "not_ready", self.failure or "the model is warming up; try again shortly",
                               {"Retry-After": "1"})

    async def warm_up(self) -> None:
        resolution = self.predictor.preprocessing.resolution
        try:
            await self.batcher.call(lambda: self.predictor.probabilities(torch.zeros(1, 3, resolution, resolution)))
        except Exception as error:  # reported on /healthz; the process stays up to say so
            self.failure = f"the model failed its warm-up run: {error}"
            logger.exception("effnet serve: warm-up failed")
            return
        self.ready = True

    async def predict(self, request: Request) -> dict[str, Any]:
        self.authorize(request)
        self.check_ready()
        start = time.perf_counter()
        uploads, fields = await read_uploads(request, self.options.max_files)
        top_k = parse_top_k(request.query_params.get("top_k", fields.get("top_k")), self.predictor.num_classes)
        try:
            self.batcher.check_room(self.decoding + len(uploads))  # before decoding: a flood is turned away cheaply
            self.decoding += len(uploads)
            try:
                images = await asyncio.get_running_loop().run_in_executor(self.decoder, self.prepare, uploads)
            finally:
                self.decoding -= len(uploads)
            rows = await self.batcher.submit(images)
        except QueueFullError as error:
            raise RequestError(503, "queue_full", str(error), {"Retry-After": str(error.retry_after)}) from None
        self.metrics.images.inc(len(rows))
        predictions = []
        for upload, row in zip(uploads, rows, strict=True):
            top, indices = top_classes(row, top_k, self.predictor.class_names)
            ranked = [(index, name, probability) for (name, probability), index in zip(top, indices, strict=True)]
            predictions.append(prediction_record(upload.name, self.predictor.name, ranked, legacy="serve"))
        return {"model": self.predictor.name, "runtime": self.predictor.runtime, "predictions": predictions,
                "time_ms": round((time.perf_counter() - start) * 1000, 2)}


def page() -> str:
    """The web page served at ``/``."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def create_app(predictor: Predictor, options: ServeOptions | None = None) -> FastAPI:
    """The service for ``predictor``: see the module docstring."""
    options = options or ServeOptions()
    service = Service(predictor, options)
    html = page()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher = Batcher(service.run_batch, options.max_batch, options.max_wait_ms / 1000,
                                  options.max_queue, on_batch=service.metrics.batch_size.observe)
        service.batcher.start()
        warm_up = asyncio.create_task(service.warm_up())
        yield
        await warm_up
        await service.batcher.close()
        service.decoder.shutdown()

    app = FastAPI(title="effnet", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(RequestError)
    async def refuse(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        return await service.predict(request)

    @app.get("/v1/model")
    async def model(request: Request) -> dict[str, Any]:
        service.authorize(request)
        return {**predictor.describe(), "limits": options.describe()}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ok", "model": predictor.name})
        return JSONResponse({"status": "failed" if service.failure else "warming_up", "message": service.failure},
                            status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return html

    app.add_middleware(BodyLimit, max_bytes=int(options.max_upload_mb * 1e6))
    app.add_middleware(RequestMetrics, metrics=service.metrics, endpoints=ENDPOINTS)
    return app
