"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's repository extension.

- ``GET /v2``: server metadata; ``GET /v2/health/live``, ``/v2/health/ready`` (open, no key);
- ``GET /v2/models/{name}[/versions/{version}]``: model metadata; ``.../ready``: 200 or 400;
- ``POST /v2/models/{name}[/versions/{version}]/infer``: see :mod:`effnet_runtime.serve.protocol`;
  the body is read whatever its content type (tritonclient sends none), gzip/deflate accepted,
  and the answer is gzip-compressed when the client accepts it;
- ``POST /v2/repository/index``, ``/v2/repository/models/{name}/load``, ``.../unload``.

Errors are ``{"error": MESSAGE}`` with the status of the problem.
"""

from __future__ import annotations

import gzip
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from effnet_runtime import __version__

from .errors import RequestError
from .predictor import PLATFORMS
from .protocol import HEADER_LENGTH, http_response, model_metadata, outputs_for, parse_http_request, refuse
from .repository import READY
from .service import Service
from .uploads import read_body

SERVER_NAME = "effnet"
EXTENSIONS = ["classification", "binary_tensor_data", "model_repository", "model_repository(unload_dependents)"]
GZIP_FROM_BYTES = 1024


def metadata(service: Service, name: str, version: str | None) -> dict:
    """A model's protocol metadata (``version`` None: the highest in service, listing them all)."""
    served = service.repository.get(name, version)
    versions = [served.version] if version else sorted(service.repository.models[name], key=int)
    predictor = served.predictor
    return model_metadata(name, versions, PLATFORMS.get(predictor.runtime, predictor.runtime),
                          predictor.resolution, predictor.num_classes)


def routes(service: Service) -> list[Route]:
    """The routes of the protocol over ``service``."""
    repository = service.repository
    max_bytes = service.options.max_upload_bytes

    def authorize(request: Request) -> None:
        service.authorize(request.headers.get("x-api-key"), request.headers.get("authorization"))

    async def server_metadata(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if repository.ready() else 503)

    async def model(request: Request) -> Response:
        authorize(request)
        return JSONResponse(metadata(service, request.path_params["name"], request.path_params.get("version")))

    async def model_ready(request: Request) -> Response:
        authorize(request)
        try:
            repository.get(request.path_params["name"], request.path_params.get("version"))
        except RequestError:  # unknown, loading, unloaded: not ready
            return JSONResponse({"error": f"model {request.path_params['name']!r} is not ready"}, status_code=400)
        return Response(status_code=200)

    async def infer(request: Request) -> Response:
        authorize(request)
        with repository.get(request.path_params["name"], request.path_params.get("version")).in_use() as used:
            parsed = parse_http_request(await read_body(request, max_bytes), request.headers.get(HEADER_LENGTH))
            probabilities = await service.infer(used, parsed)
        outputs = outputs_for(parsed, probabilities, used.predictor.labels)
        content, headers = http_response(used.name, used.version, parsed.id, outputs)
        if "gzip" in request.headers.get("accept-encoding", "") and len(content) >= GZIP_FROM_BYTES:
            content, headers = gzip.compress(content, 1), {**headers, "content-encoding": "gzip"}
        return Response(content, headers=headers)

    async def index(request: Request) -> Response:
        authorize(request)
        body = await read_body(request, max_bytes)
        try:
            only_ready = bool(json.loads(body or b"{}").get("ready", False))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise refuse('the index request is a JSON object such as {"ready": true}, or empty') from None
        rows = repository.index()
        return JSONResponse([row for row in rows if row["state"] == READY] if only_ready else rows)

    async def load(request: Request) -> Response:
        authorize(request)
        await read_body(request, max_bytes)  # {"parameters": {...}}: no per-request overrides here
        await repository.load(request.path_params["name"])
        return Response(status_code=200)

    async def unload(request: Request) -> Response:
        authorize(request)
        await read_body(request, max_bytes)  # {"parameters": {"unload_dependents": false}}: there are none
        await repository.unload(request.path_params["name"])
        return Response(status_code=200)

    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}", model, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", unload, methods=["POST"]),
    ]
