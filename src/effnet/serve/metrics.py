"""The service's Prometheus metrics, in a registry of its own (several apps can live in one process).

- ``effnet_requests_total{endpoint, status}``: answered requests;
- ``effnet_request_duration_seconds{endpoint}``: latency histogram;
- ``effnet_batch_size``: images per model call (histogram);
- ``effnet_queue_depth``: images being decoded or waiting for a batch (gauge, read when scraped);
- ``effnet_images_total``: images classified.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """The counters, histograms and gauge of one app; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("effnet_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("effnet_request_duration_seconds", "Time from request to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("effnet_batch_size", "Images per model call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_depth = Gauge("effnet_queue_depth", "Images being decoded or waiting for a batch",
                                 registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self.images = Counter("effnet_images", "Images classified", registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware counting every HTTP answer (refusals by other middleware included) and its latency.

    ``endpoints`` are the paths reported by name; any other path counts as ``other``.
    """

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, endpoints: tuple[str, ...]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
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
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
