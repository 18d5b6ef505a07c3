"""The HTTP service: FastAPI routes over a backend, a micro-batcher and the metrics.

    POST /predict   an image (multipart field ``file``, or the raw body) → top-k classes as JSON
    POST /explain   an image → the Grad-CAM overlay as PNG (``?format=json``: JSON with a data URL)
    GET  /healthz   the process answers;  GET /readyz: the model is loaded and warmed up
    GET  /metrics   Prometheus text;      GET /: a page to drop an image on

A bad request never reaches the model: a body over the size limit, an empty body, a content type that is
not an image, bytes that do not decode (not an image, truncated, corrupt, a decompression bomb) are
answered 4xx with ``{"error": kind, "message": ...}`` and counted by kind. Each request has a deadline
(504 after ``timeout_s``). Model calls run in one inference thread; decoding runs in the thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..data.images import EMPTY, TOO_LARGE, UnreadableImage, decode_image
from ..errors import ConfigError
from ..inference import Runner
from .backends import Backend
from .batcher import MicroBatcher, Overloaded
from .metrics import Metrics

if TYPE_CHECKING:
    import torch

    from ..explain import ImageExplanation

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 1024 * 1024
IMAGE_TYPES = ("application/octet-stream", "multipart/form-data")


@dataclass(frozen=True)
class ServeOptions:
    """How the service batches and what it accepts."""

    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_bytes: int = MAX_BYTES
    timeout_s: float = 30.0
    top_k: int = 5
    max_queue: int = 1024


class RequestError(Exception):
    """A request the service refuses: answered with ``status`` and ``{"error": kind, "message": message}``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _page() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, "bad_request", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise RequestError(413, "too_large", f"the body is {int(declared):,} bytes; the limit is {limit:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # a client that sent no (or a false) Content-Length
            raise RequestError(413, "too_large", f"the body is over the limit of {limit:,} bytes")
    return bytes(body)


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a request: its multipart field ``file`` (or first file), or its raw body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype.startswith("image/") or ctype in IMAGE_TYPES):
        raise RequestError(415, "unsupported_media_type",
                           f"content type {ctype or '(none)'} is not accepted: send an image as multipart/form-data "
                           "(field 'file') or as the body with an image/* or application/octet-stream type")
    body = await _read_body(request, limit)
    if ctype != "multipart/form-data":
        return body

    async def replay() -> dict[str, Any]:  # the body was read (and measured) already: parse it from memory
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as err:  # starlette raises its own types for a malformed multipart body
        raise RequestError(400, "bad_multipart", f"the multipart body cannot be parsed ({err})") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        chosen = form.get("file") if isinstance(form.get("file"), UploadFile) else (files[0] if files else None)
        if not isinstance(chosen, UploadFile):
            raise RequestError(400, "no_file", "the multipart body has no file: send the image in the field 'file'")
        return await chosen.read()
    finally:
        await form.close()


def decode(data: bytes, channels: int) -> Image.Image:
    """Bytes → image, or the :class:`RequestError` that says why not (same reasons as the data package)."""
    try:
        return decode_image(data, channels, name="upload")
    except UnreadableImage as err:
        kind = err.reason.replace(" ", "_")
        if err.reason == EMPTY:
            raise RequestError(400, "empty", "the request carries no image bytes") from None
        status = 413 if err.reason == TOO_LARGE else 400
        detail = f" ({err.detail})" if err.detail else ""
        raise RequestError(status, kind, f"the upload is unusable: {err.reason}{detail}") from None


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "other"


def create_app(
    weights: str | None = None, *, backend: Backend | Runner | None = None, backend_name: str = "auto",
    device: str = "auto", options: ServeOptions | None = None, model_name: str | None = None,
    model_options: dict[str, Any] | None = None, runtime: str | None = None,
) -> FastAPI:
    """The service for ``weights`` (weights: a file, URL or tag; or an exported model: ONNX, ``.pt2``, told
    apart by content), or for a loaded ``backend`` (or any :class:`~xception.inference.Runner`).
    ``backend_name``: ``"auto"`` (weights on the fast path, an export on its own runtime), ``"torch"`` (the
    fast path) or ``"onnxruntime"``; ``runtime`` names a runtime of :data:`xception.inference.RUNTIMES`
    instead. The model loads here, so a bad file fails now; warming up happens once the server runs
    (``/readyz`` says when)."""
    from ..data.transforms import eval_transform
    from .backends import load_backend

    opts = options or ServeOptions()
    if opts.max_batch < 1 or opts.max_wait_ms < 0 or opts.max_bytes < 1 or opts.timeout_s <= 0 or opts.top_k < 1:
        raise ConfigError(f"serve options out of range: {opts} (max_batch ≥ 1, max_wait_ms ≥ 0, timeout_s > 0)")
    if backend is None:
        if weights is None:
            raise ConfigError("give the weights to serve (a file, URL or tag), or a loaded backend")
        backend = load_backend(weights, backend=backend_name, device=device, model_name=model_name,
                               model_options=model_options, runtime=runtime)
    elif isinstance(backend, Runner):
        backend = Backend(backend)
    service = _Service(backend, opts, eval_transform(backend.preprocessing))
    app = FastAPI(title="xception", summary="Xception image classification and Grad-CAM", lifespan=service.lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.metrics = service.metrics
    app.state.backend = service.served
    app.state.options = opts
    _account_requests(app, service.metrics)
    _add_page(app)
    _add_ops_routes(app, service)
    _add_prediction_routes(app, service)
    return app


class _Service:
    """What the routes share: the backend, the options, the metrics, the one inference thread (model calls
    never run concurrently) and, while the server runs, the micro-batcher feeding it."""

    def __init__(self, served: Backend, opts: ServeOptions, transform: Callable[[Any], torch.Tensor]) -> None:
        self.served, self.opts, self.transform = served, opts, transform
        self.metrics = Metrics()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xception-infer")
        self.batcher: MicroBatcher | None = None
        self.ready = False

    async def warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        sizes = tuple(sorted({1, self.opts.max_batch}))
        try:
            await loop.run_in_executor(self.executor, self.served.warm_up, sizes)
        except Exception:  # the service still answers; /readyz stays 503 and says so in the log
            log.exception("warming up failed")
            return
        self.ready = True
        log.info("ready: %s", self.served.describe())

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """The batcher and the warm-up run while the server does."""
        opts = self.opts
        batcher = MicroBatcher(self.served.run, self.executor, max_batch=opts.max_batch, max_wait_ms=opts.max_wait_ms,
                               max_queue=opts.max_queue, on_batch=self.metrics.batch)
        batcher.start()
        self.batcher = batcher
        warming = asyncio.get_running_loop().create_task(self.warm_up())
        try:
            yield
        finally:
            warming.cancel()
            await batcher.stop()  # uvicorn has finished the requests in flight by now
            self.batcher = None
            self.executor.shutdown(wait=True)

    async def image_of(self, request: Request) -> Image.Image:
        data = await read_upload(request, self.opts.max_bytes)
        return await run_in_threadpool(decode, data, self.served.preprocessing.channels)

    def top_k(self, request: Request) -> int:
        raw = request.query_params.get("top_k", str(self.opts.top_k))
        if not raw.isdigit() or int(raw) < 1:
            raise RequestError(400, "bad_request", f"top_k must be a positive integer, got {raw!r}")
        return min(int(raw), len(self.served.class_names))

    async def within_deadline(self, work: Awaitable[Any]) -> Any:
        timeout_s = self.opts.timeout_s
        try:
            return await asyncio.wait_for(work, timeout_s)
        except TimeoutError:
            raise RequestError(504, "timeout", f"no answer within {timeout_s:g} s; try again later") from None
        except Overloaded as err:
            raise RequestError(503, "overloaded", f"the server is busy ({err}); try again later") from None


def _account_requests(app: FastAPI, metrics: Metrics) -> None:
    """Every request timed and counted by route and status; a refused one answered with its status and
    counted by kind; an unexpected error logged and answered 500, never with its traceback."""

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        metrics.in_flight += 1
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unexpected error in %s", request.url.path)
            metrics.error("internal")
            response = JSONResponse({"error": "internal", "message": "the server failed; see its log"}, 500)
        finally:
            metrics.in_flight -= 1
        if response.status_code == 404:
            metrics.error("not_found")
        elif response.status_code == 405:
            metrics.error("method_not_allowed")
        metrics.request(_route_name(request), response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(RequestError)
    async def refuse(_: Request, err: RequestError) -> JSONResponse:
        metrics.error(err.kind)
        return JSONResponse({"error": err.kind, "message": err.message}, err.status)


def _add_page(app: FastAPI) -> None:
    """GET /: the page to drop an image on."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page())


def _add_ops_routes(app: FastAPI, service: _Service) -> None:
    """GET /healthz, /readyz and /metrics: for the orchestrator and the monitoring, not for clients."""
    served, metrics = service.served, service.metrics

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if service.ready and service.batcher is not None:
            return JSONResponse({"status": "ready", **served.describe()})
        return JSONResponse({"status": "warming up", **served.describe()}, 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_prediction_routes(app: FastAPI, service: _Service) -> None:
    """POST /predict (through the micro-batcher) and POST /explain (Grad-CAM, in the inference thread)."""
    served = service.served

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        k = service.top_k(request)
        image = await service.image_of(request)
        x = await run_in_threadpool(service.transform, image)
        batcher = service.batcher
        if batcher is None:
            raise RequestError(503, "not_running", "the server is starting or stopping; try again")
        logits = await service.within_deadline(batcher.submit(x))
        probs = logits.float().softmax(0)
        values, indices = probs.topk(k)
        return {"top": [{"class": served.class_names[i], "index": i, "probability": p}
                        for i, p in zip(indices.tolist(), values.tolist(), strict=True)],
                "model": served.model_name, "backend": served.name}

    @app.post("/explain", response_model=None)
    async def explain(request: Request) -> Response | dict[str, Any]:
        from ..explain import explain_images

        if served.model is None:
            raise RequestError(501, "explain_unavailable", "Grad-CAM needs the gradients of the PyTorch model, "
                               "which an export does not keep: serve the weights it was exported from")
        k = service.top_k(request)
        target, layer = request.query_params.get("class"), request.query_params.get("layer")
        image = await service.image_of(request)
        model = served.model

        def run() -> ImageExplanation:
            return explain_images(model, [image], preprocessing=served.preprocessing, target=target, layer=layer,
                                  top_k=k)[0]

        loop = asyncio.get_running_loop()
        try:
            item = await service.within_deadline(loop.run_in_executor(service.executor, run))
        except ConfigError as err:  # a class or layer that does not exist
            raise RequestError(400, "bad_request", str(err)) from None
        return _explanation_response(request, item)


def _explanation_response(request: Request, item: ImageExplanation) -> Response | dict[str, Any]:
    """The overlay as PNG, or as JSON with the heatmap and a data URL when the client asks for JSON."""
    buffer = io.BytesIO()
    item.overlay.save(buffer, format="PNG")
    png = buffer.getvalue()
    wants_json = request.query_params.get("format") == "json" or \
        "application/json" in request.headers.get("accept", "")
    if not wants_json:
        return Response(png, media_type="image/png",
                        headers={"X-Class": item.target_name.encode("ascii", "replace").decode(),
                                 "X-Layer": item.layer})
    return {"top": [{"class": n, "probability": p} for n, p in item.top],
            "target": {"index": item.target, "class": item.target_name}, "layer": item.layer,
            "heatmap": item.heatmap.round(4).tolist(),
            "overlay": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}
