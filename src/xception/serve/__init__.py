"""Serving: an HTTP service (FastAPI on uvicorn) that classifies images and shows Grad-CAM overlays.

    >>> from xception.serve import create_app, serve
    >>> app = create_app("runs/demo/model.safetensors")     # for TestClient, or any ASGI server
    >>> serve("runs/demo/model.safetensors", port=8000)     # blocks; SIGTERM finishes requests, exits

Concurrent ``/predict`` requests are micro-batched (:mod:`.batcher`) into a runner of the inference layer
(:mod:`.backends`: the fast path for weights, ONNX Runtime or torch.export for exports); ``/explain`` runs
Grad-CAM on the plain model. The app (:mod:`.app`) is a router of endpoints (:mod:`.routes`) with the
service and the upload as dependencies (:mod:`.service`, :mod:`.uploads`), pydantic schemas
(:mod:`.schemas`), one JSON form for refusals (:mod:`.handlers`), Prometheus metrics (:mod:`.metrics`) and
``/docs`` served offline (:mod:`.docs`); :mod:`.server` binds the port, then runs uvicorn.
Needs the ``serve`` extra: ``pip install 'xception[serve]'``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..errors import ConfigError

__all__ = ["ServeOptions", "create_app", "serve"]


def _require() -> None:
    # python-multipart installs as python_multipart (older releases: multipart); looked up, not imported.
    needed = {"fastapi": ("fastapi",), "uvicorn": ("uvicorn",), "python-multipart": ("python_multipart", "multipart"),
              "prometheus-client": ("prometheus_client",)}
    missing = [name for name, modules in needed.items() if not any(importlib.util.find_spec(m) for m in modules)]
    if missing:
        raise ConfigError(f"serving needs {', '.join(missing)}: pip install 'xception[serve]'")


def __getattr__(name: str) -> Any:
    if name in ("create_app", "ServeOptions"):
        _require()
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(
    weights: str, *, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto", device: str = "auto",
    max_batch: int = 8, max_wait_ms: float = 5.0, max_bytes: int = 20 * 1024 * 1024, timeout_s: float = 30.0,
    model_name: str | None = None, model_options: dict[str, Any] | None = None, log_level: str = "info",
    runtime: str | None = None,
) -> int:
    """Serve ``weights`` (weights or an exported model) on ``host:port`` until SIGTERM or Ctrl-C; requests in
    flight are answered first. ``backend`` and ``runtime`` as in :func:`create_app`. The port is taken
    before the model loads: one in use fails at once (:class:`~xception.errors.BusyError`). Returns 0 after
    a graceful stop."""
    _require()
    from .server import bind_socket, run_server

    sock = bind_socket(host, port)
    try:
        from .app import ServeOptions, create_app

        options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, max_bytes=max_bytes,
                               timeout_s=timeout_s)
        app = create_app(weights, backend_name=backend, device=device, options=options, model_name=model_name,
                         model_options=model_options, runtime=runtime)
    except BaseException:
        sock.close()
        raise
    return run_server(app, sock, log_level=log_level, timeout_s=timeout_s)
