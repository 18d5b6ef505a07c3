"""The HTTP service: a FastAPI app over a backend, a micro-batcher and the metrics.

    POST /predict   an image (multipart field ``file``, or the raw body) → top-k classes as JSON
    POST /explain   an image → the Grad-CAM overlay as PNG (``?format=json``: JSON with a data URL)
    GET  /healthz   the process answers;  GET /readyz: the model is loaded and warmed up
    GET  /model     what is served;       GET /metrics: Prometheus text;  GET /: a page to drop an image on
    GET  /docs      the API with its schemas (Swagger UI; /redoc: ReDoc), served from here, no internet needed

The routes live on one router (:mod:`.routes`) and get the service and the upload as dependencies
(:mod:`.service`, :mod:`.uploads`); responses are pydantic models (:mod:`.schemas`). A bad request never
reaches the model: a body over the size limit, an empty body, a content type that is not an image, bytes
that do not decode (not an image, truncated, corrupt, a decompression bomb), a parameter out of range are
answered 4xx with ``{"error": kind, "message": ...}`` and counted by kind (:mod:`.handlers`). Each request
has a deadline (504 after ``timeout_s``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from ..errors import ConfigError
from ..inference import Runner
from .backends import Backend
from .docs import add_docs
from .handlers import RequestError, install
from .metrics import RequestAccounting
from .routes import router
from .service import MAX_BYTES, ServeOptions, Service, decode
from .uploads import read_upload

__all__ = ["MAX_BYTES", "RequestError", "ServeOptions", "create_app", "decode", "read_upload"]

log = logging.getLogger(__name__)

TITLE = "xception"


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
    problems = opts.problems()
    if problems:
        raise ConfigError(f"serve options out of range: {opts} (needs {', '.join(problems)})")
    if backend is None:
        if weights is None:
            raise ConfigError("give the weights to serve (a file, URL or tag), or a loaded backend")
        backend = load_backend(weights, backend=backend_name, device=device, model_name=model_name,
                               model_options=model_options, runtime=runtime)
    elif isinstance(backend, Runner):
        backend = Backend(backend)
    service = Service(backend, opts, eval_transform(backend.preprocessing))
    app = FastAPI(title=TITLE, summary="Xception image classification and Grad-CAM", lifespan=service.lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.metrics = service.metrics
    app.state.backend = service.served
    app.state.options = opts
    install(app, service.metrics)
    app.add_middleware(RequestAccounting, metrics=service.metrics)
    app.include_router(router)
    add_docs(app, TITLE)
    return app
