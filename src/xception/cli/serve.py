"""``xception serve``: an HTTP service that classifies images and shows Grad-CAM overlays."""

from __future__ import annotations

import argparse

from ._common import add_model_options, add_runtime_option


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over HTTP: /predict, /explain, a web page, /metrics",
        description="Serve a model with FastAPI on uvicorn. POST /predict (an image as multipart field 'file' or "
        "the raw body) returns the top-k classes; POST /explain the Grad-CAM overlay (PNG, or JSON with "
        "?format=json); GET / is a page to drop an image on; GET /healthz, /readyz, /model, /metrics (Prometheus); "
        "GET /docs: the API and its schemas (no internet needed). The port is taken before the model loads. "
        "Concurrent requests are micro-batched. SIGTERM answers the requests in flight, then exits 0.",
        epilog="examples:\n  xception serve --weights xception.keras_in1k\n"
        "  xception serve --weights runs/demo/model.safetensors --max-batch 16 --max-wait-ms 10\n"
        "  xception serve --weights model.onnx --host 0.0.0.0 --port 8080      # ONNX Runtime: the file is ONNX",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True, metavar="W", help="weights (file, URL or tag) or an exported model "
                   "(ONNX, torch.export): told apart by content")
    p.add_argument("--model", metavar="NAME", help="the model the weights are for (a bare state dict needs it)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000); one in use fails at once")
    add_runtime_option(p, "auto: weights on the fast path, an export on its own runtime")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="the former spelling: torch is --runtime fast, onnxruntime is --runtime onnxruntime")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--max-batch", type=int, default=8, help="images per model call at most (default 8; 1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first image of a batch waits for others (default 5 ms)")
    p.add_argument("--max-mb", type=float, default=20.0, help="largest request body in MB (default 20)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take (default 30; then 504)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..serve import serve

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    return serve(args.weights, host=args.host, port=args.port, backend=args.backend or "auto",
                 runtime=None if args.runtime == "auto" else args.runtime, device=args.device,
                 max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_bytes=int(args.max_mb * 1024 * 1024),
                 timeout_s=args.timeout, model_name=args.model, model_options=dict(args.options) or None,
                 log_level=args.log_level)
