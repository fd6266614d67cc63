"""The server's Prometheus metrics, in a registry of its own (several apps can live in one process).

- ``effnet_requests_total{endpoint, status}``: HTTP answers by route (``/v2/models/{name}/infer``)
  and status; a client that went away before its request was read counts as status 499;
- ``effnet_request_duration_seconds{endpoint}``: HTTP latency histogram;
- ``effnet_grpc_requests_total{method, code}``: gRPC answers by method and status code;
- ``effnet_batch_size{model, version}``: images per model call (histogram);
- ``effnet_queue_depth{model, version}``: images being decoded or waiting for a batch;
- ``effnet_images_total{model, version}``: images classified;
- ``effnet_model_ready{model, version}``: 1 while the version is in service, 0 once retired;
- ``effnet_model_load_failures_total{model, version}``: versions that failed to load or warm up;
- ``process_*``: the process's CPU time, resident memory, open files, start time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
VERSION_LABELS = ("model", "version")


class ServeMetrics:
    """The metrics of one server; :meth:`render` is the ``/metrics`` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("effnet_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("effnet_request_duration_seconds", "Time from request to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.grpc_requests = Counter("effnet_grpc_requests", "gRPC calls answered, by method and status code",
                                     ["method", "code"], registry=self.registry)
        self.batch_size = Histogram("effnet_batch_size", "Images per model call", VERSION_LABELS,
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("effnet_queue_depth", "Images being decoded or waiting for a batch",
                                 VERSION_LABELS, registry=self.registry)
        self.images = Counter("effnet_images", "Images classified", VERSION_LABELS, registry=self.registry)
        self.ready = Gauge("effnet_model_ready", "1 while the model version is in service", VERSION_LABELS,
                           registry=self.registry)
        self.load_failures = Counter("effnet_model_load_failures", "Model versions that failed to load or warm up",
                                     VERSION_LABELS, registry=self.registry)

    def version_started(self, model: str, version: str, queue_depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model, version).set_function(queue_depth)
        self.ready.labels(model, version).set(1)

    def version_retired(self, model: str, version: str) -> None:
        self.queue_depth.remove(model, version)
        self.ready.labels(model, version).set(0)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware counting every HTTP answer (refusals by other middleware included) and its
    latency, by route: the path template of the route among ``routes`` that the path matches,
    ``other`` when none does."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def endpoint(self, scope: Scope) -> str:
        for route in self.routes:
            if route.matches(scope)[0] != Match.NONE:
                return getattr(route, "path", "other")
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            endpoint = self.endpoint(scope)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
