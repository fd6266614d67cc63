"""effnet's own HTTP API, its page, health and metrics.

- ``POST /v1/predict[?model=NAME&version=V&top_k=K]``: pictures as multipart files or one raw
  body; ``top_k`` as a query parameter or form field (default 5). Answers ``{"model", "version",
  "runtime", "predictions": [...], "time_ms"}`` with one record of
  :data:`effnet_runtime.portable.PREDICTION_SCHEMA` per picture (and ``file``, the deprecated
  name of its ``path``). ``model`` may be left out when the server serves one model.
- ``GET /v1/model[?model=NAME]``: name, version, runtime, classes, preprocessing and limits;
  ``GET /v1/models``: every model in service (the page's model list).
- ``GET /healthz``: 200 when every model is in service, 503 otherwise; ``GET /metrics``:
  Prometheus text; ``GET /``: the page (one HTML file, no external assets).
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from effnet_runtime.portable import prediction_record, top_classes

from .errors import RequestError
from .service import Service
from .uploads import read_uploads

DEFAULT_TOP_K = 5
MAX_TOP_K_DIGITS = 9


def parse_top_k(value: str | None, num_classes: int) -> int:
    """``top_k`` from the request (default 5), at most the number of classes."""
    if value is None:
        return min(DEFAULT_TOP_K, num_classes)
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_TOP_K_DIGITS and int(text) >= 1):
        raise RequestError(400, "bad_top_k", f"top_k must be a whole number of at least 1 in the digits 0-9, got "
                                             f"{value[:40]!r}{'...' if len(value) > 40 else ''}")
    return min(int(text), num_classes)


def page() -> str:
    """The web page served at ``/``."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def routes(service: Service) -> list[Route]:
    """The routes of the API above, over ``service``."""
    repository = service.repository
    html = page()

    def authorize(request: Request) -> None:
        service.authorize(request.headers.get("x-api-key"), request.headers.get("authorization"))

    async def predict(request: Request) -> Response:
        authorize(request)
        start = time.perf_counter()
        uploads, fields = await read_uploads(request, service.options.max_files)
        with repository.get(request.query_params.get("model"), request.query_params.get("version")).in_use() as used:
            top_k = parse_top_k(request.query_params.get("top_k", fields.get("top_k")), used.predictor.num_classes)
            probabilities = await service.classify(used, uploads)
        labels = used.predictor.labels or [used.predictor.label(index) for index in range(used.predictor.num_classes)]
        predictions = [prediction_record(upload.name, used.name, top_classes(row, labels, top_k), legacy="serve")
                       for upload, row in zip(uploads, probabilities, strict=True)]
        return JSONResponse({"model": used.name, "version": used.version, "runtime": used.predictor.runtime,
                             "predictions": predictions, "time_ms": round((time.perf_counter() - start) * 1000, 2)})

    def description(name: str | None) -> dict[str, Any]:
        served = repository.get(name)
        return {**served.predictor.describe(), "name": served.name, "version": served.version,
                "limits": service.options.describe()}

    async def model(request: Request) -> Response:
        authorize(request)
        return JSONResponse(description(request.query_params.get("model")))

    async def models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"models": [description(name) for name in sorted(repository.models)]})

    async def healthz(request: Request) -> Response:
        names = sorted(repository.models)
        if repository.ready():
            return JSONResponse({"status": "ok", "models": names})
        problems = [f"{row['name']} {row.get('version', '')}: {row.get('reason', row['state'])}"
                    for row in repository.index() if row["state"] != "READY"]
        return JSONResponse({"status": "not_ready", "models": names, "message": "; ".join(problems)},
                            status_code=503, headers={"Retry-After": "1"})

    async def metrics(request: Request) -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    async def index(request: Request) -> Response:
        return HTMLResponse(html)

    return [Route("/v1/predict", predict, methods=["POST"]), Route("/v1/model", model, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]), Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]), Route("/", index, methods=["GET"])]
