"""What the server counts, through ``prometheus-client``, and the middleware that times every request.

Each app has its own registry (several apps in one process, as in tests, count apart). Under several
worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before they start: prometheus-client
then keeps the values in files there, one per process, and ``GET /metrics`` of any worker sums them all
(its multiprocess mode; the in-flight gauge is summed over the live processes).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The folder of prometheus-client's multiprocess mode, when it is on."""
    return os.environ.get(MULTIPROC_DIR) or os.environ.get(MULTIPROC_DIR.lower()) or None


def _check_multiprocess_dir() -> None:
    folder = multiprocess_dir()
    if folder is not None and not os.path.isdir(folder):
        raise ConfigError(f"{MULTIPROC_DIR}={folder} is not a folder: create it (empty) before the server's "
                          f"processes start, or unset {MULTIPROC_DIR} to run one process")


class Metrics:
    """Requests by endpoint and status, errors by kind, latency by endpoint, batch sizes, requests in flight."""

    def __init__(self) -> None:
        _check_multiprocess_dir()
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("xception_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=reg)
        self.errors = Counter("xception_errors", "Requests answered with an error, by kind.", ["kind"], registry=reg)
        self.latency = Histogram("xception_request_duration_seconds", "Time from request to response, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.batches = Histogram("xception_batch_size", "Images per model call (micro-batching).",
                                 buckets=BATCH_BUCKETS, registry=reg)
        self.in_flight = Gauge("xception_requests_in_flight", "Requests being answered now.",
                               multiprocess_mode="livesum", registry=reg)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def batch(self, size: int) -> None:
        self.batches.observe(size)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks for it) and its content type;
        in multiprocess mode, the sum over every process that wrote into the folder."""
        registry = self.registry
        if multiprocess_dir() is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type

    def close(self) -> None:
        """This process stops: its live gauges leave the multiprocess sum."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())


def route_name(scope: Scope) -> str:
    """The route's path template (``/predict``), never the raw path: unknown paths count as ``other``."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"


class RequestAccounting:
    """ASGI middleware: every HTTP request timed and counted by route and status, in flight while it runs;
    an unexpected error logged and answered 500 in the service's JSON form, never with its traceback."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "started": False}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.update(code=message["status"], started=True)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("unexpected error in %s", scope.get("path"))
            self.metrics.error("internal")
            if status["started"]:
                raise
            status["code"] = 500
            await JSONResponse({"error": "internal", "message": "the server failed; see its log"}, 500)(
                scope, receive, send)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.request(route_name(scope), status["code"], time.perf_counter() - start)
