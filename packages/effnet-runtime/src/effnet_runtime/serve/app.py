"""The ASGI app (Starlette): effnet's API (:mod:`~effnet_runtime.serve.api_v1`) and the Open
Inference Protocol (:mod:`~effnet_runtime.serve.api_v2`) over one
:class:`~effnet_runtime.serve.service.Service`, with the body limit, request metrics and
refusals in JSON, 404 and 405 included (``{"error": MESSAGE}`` under ``/v2``, ``{"error": CODE,
"message": MESSAGE}`` elsewhere). A client that goes away before its request is read is counted
as status 499, without a traceback.

The lifespan loads and warms up the models before the server listens, starts the gRPC front end
when it has an address, and on shutdown stops gRPC (answering its calls in flight), then
retires every model version (their queues drain).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from . import api_v1, api_v2
from .errors import CLIENT_CLOSED, RequestError
from .metrics import RequestMetrics
from .service import Service
from .uploads import BodyLimit

logger = logging.getLogger("effnet.serve")
GRPC_GRACE_S = 30


async def refuse(request: Request, error: RequestError) -> Response:
    return JSONResponse(error.body(request.url.path), status_code=error.status, headers=error.headers)


async def no_route(request: Request, error: HTTPException) -> Response:
    """404 and 405 (and Starlette's other refusals) in the same shape as every refusal."""
    path = request.url.path
    if error.status_code == 404:
        refusal = RequestError(404, "not_found", f"no endpoint {path}")
    elif error.status_code == 405:
        allowed = ", ".join(sorted((error.headers or {}).get("Allow", "").split(", ")))  # Starlette's order varies
        refusal = RequestError(405, "method_not_allowed", f"method {request.method} is not allowed on {path}; use "
                                                          f"{allowed}", {"Allow": allowed})
    else:
        refusal = RequestError(error.status_code, "bad_request", str(error.detail), dict(error.headers or {}))
    return await refuse(request, refusal)


async def client_gone(request: Request, error: ClientDisconnect) -> Response:
    logger.info("effnet serve: the client went away before sending all of %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the metrics count it


def create_app(service: Service, grpc_address: str | None = None) -> Starlette:
    """The app over ``service``; with ``grpc_address`` (``host:port``) it also answers gRPC there."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        grpc_server = None
        await service.start()
        try:
            if grpc_address is not None:
                from .grpc_service import start_grpc  # only now: grpc and tritonclient cost ~0.5 s and 40 MB

                grpc_server = await start_grpc(service, grpc_address)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(GRPC_GRACE_S)
            await service.stop()

    routes = api_v1.routes(service) + api_v2.routes(service)
    middleware = [Middleware(RequestMetrics, metrics=service.metrics, routes=routes),
                  Middleware(BodyLimit, max_bytes=service.options.max_upload_bytes)]
    handlers = {RequestError: refuse, HTTPException: no_route, ClientDisconnect: client_gone}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)
    app.state.service = service
    return app
