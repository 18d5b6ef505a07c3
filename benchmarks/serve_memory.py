"""What a server costs in memory: the resident set (RSS) of ``xception serve``, stage by stage, for a small
model and for the paper's Xception.

The start-up stages are measured in a child process that does what the server does, one step at a time,
and reads its own /proc/self/status after each: Python, ``import torch``, torchvision, FastAPI, uvicorn,
pydantic, prometheus-client and the service's modules, the model loaded (``create_app``: the plain network
and the fast path's copy), the warm-up at batch 1 and ``--max-batch``. The serving stages are measured on a
real ``xception serve`` process on a free 127.0.0.1 port (its /proc/PID/status): ready (``/readyz``), after
``--requests`` predictions from ``--clients`` clients with ``/openapi.json`` and ``/docs``, after the first
``/explain``, after ``--large-uploads`` 12-megapixel JPEGs from ``--large-clients`` clients at once. With
``--onnx``, two more servers: ``--backend onnxruntime`` on the weights (exported at start-up) and on an
``.onnx`` file written by ``xception export``, each measured once ready.

    PYTHONPATH=src python benchmarks/serve_memory.py [--weights W] [--no-paper] [--json out.json]

``--weights`` defaults to runs/demo/model.safetensors (else a random 28 px, width-0.125 Fashion-MNIST-sized
model made here); the paper's model gets random weights, saved to a temporary file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_WEIGHTS = Path("runs/demo/model.safetensors")
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
# Shared objects of the CUDA toolkit that a CUDA build of PyTorch maps at import, GPU or not.
CUDA_LIBRARY = re.compile(r"/lib(cu|nv|nccl|cudnn|cublas|cufft|curand|cusolver|cusparse|torch_cuda|c10_cuda)[^/]*$")
CHILD_STAGES = ("python", "import torch", "torchvision", "service modules", "model loaded", "warm-up")
STAGE_NAMES = {
    "python": "Python",
    "import torch": "import torch",
    "torchvision": "torchvision (imported for the preprocessing)",
    "service modules": "FastAPI, uvicorn, pydantic, prometheus-client, the service's modules",
    "model loaded": "the model: the plain network (kept for /explain) and the fast path's copy",
    "warm-up": "warm-up at batch 1 and --max-batch",
}


def memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and its parts (anonymous, file-backed, shared memory) of a process, in MiB; and the part of the
    file-backed memory that is CUDA libraries (from /proc/PID/smaps)."""
    figures: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                figures[key] = int(value.split()[0]) / 1024
    cuda_kib, in_cuda = 0, False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                in_cuda = bool(CUDA_LIBRARY.search(line.strip()))
            elif in_cuda and line.startswith("Rss:"):
                cuda_kib += int(line.split()[1])
    figures["cuda_libraries"] = cuda_kib / 1024
    return figures


def run_child(weights: str, max_batch: int) -> None:
    """The start-up stages in this process, one JSON line of :func:`memory` after each."""
    def report(stage: str) -> None:
        print(json.dumps({"stage": stage, **memory()}), flush=True)

    report("python")
    import torch  # noqa: F401

    report("import torch")
    import torchvision  # noqa: F401

    report("torchvision")
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import pydantic  # noqa: F401
    import uvicorn  # noqa: F401

    from xception.serve import app, server  # noqa: F401

    report("service modules")
    served = app.create_app(weights, options=app.ServeOptions(max_batch=max_batch)).state.service.served
    report("model loaded")
    served.warm_up(tuple(sorted({1, max_batch})))
    report("warm-up")


def child_stages(weights: Path, max_batch: int) -> list[dict[str, Any]]:
    """:func:`run_child` in a fresh Python process; its JSON lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, "--child", str(weights), "--max-batch", str(max_batch)],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"the stage-by-stage process failed: {proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def photos(megapixels: float) -> tuple[bytes, bytes]:
    """matplotlib's sample photo as it is (a 59 KB JPEG), and enlarged to ``megapixels`` (a large upload)."""
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    side = int((megapixels * 1e6 / 12) ** 0.5)  # a 4:3 photo
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").resize((4 * side, 3 * side), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return path.read_bytes(), buffer.getvalue()


def post_many(url: str, image: bytes, count: int, clients: int) -> list[int]:
    """``count`` POSTs of ``image`` to ``url`` from ``clients`` threads at once; their HTTP statuses."""
    import httpx

    def post(_: int) -> int:
        return httpx.post(url, content=image, headers={"content-type": "image/jpeg"}, timeout=600).status_code

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, range(count)))


def serving_stages(weights: Path, args: argparse.Namespace, photo: bytes, large: bytes) -> dict[str, Any]:
    """A real ``xception serve`` on the fast path: its memory once ready, after the requests and the API pages,
    after the first /explain, after the large uploads; the statuses that were not 200."""
    import httpx

    from serve_load import _server

    stages: dict[str, dict[str, float]] = {}
    statuses: list[int] = []
    with _server(weights, args.max_batch, args.max_wait_ms, "torch") as (proc, url):
        stages["ready"] = memory(proc.pid)
        statuses += post_many(f"{url}/predict", photo, args.requests, args.clients)
        statuses += [httpx.get(f"{url}{page}", timeout=60).status_code for page in ("/openapi.json", "/docs")]
        stages["requests"] = memory(proc.pid)
        statuses += post_many(f"{url}/explain", photo, 1, 1)
        stages["explain"] = memory(proc.pid)
        if args.large_uploads:
            statuses += post_many(f"{url}/predict", large, args.large_uploads, args.large_clients)
            stages["large uploads"] = memory(proc.pid)
        stages["threads"] = {"count": len(os.listdir(f"/proc/{proc.pid}/task"))}
    return {"stages": stages, "failed_statuses": [s for s in statuses if s != 200], "requests": len(statuses)}


def onnx_stages(weights: Path, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Servers on ONNX Runtime, measured once ready: on the weights (exported at start-up), and on an ``.onnx``
    file ``xception export`` wrote."""
    from serve_load import _server

    out: dict[str, Any] = {}
    with _server(weights, args.max_batch, args.max_wait_ms, "onnxruntime") as (proc, _):
        out["weights on onnxruntime"] = memory(proc.pid)
    onnx = folder / f"{weights.stem}.onnx"
    subprocess.run([sys.executable, "-m", "xception", "export", str(onnx), "--weights", str(weights)], check=True,
                   capture_output=True, timeout=1800)
    with _server(onnx, args.max_batch, args.max_wait_ms, "onnxruntime") as (proc, _):
        out[".onnx file"] = memory(proc.pid)
    out["onnx_bytes"] = onnx.stat().st_size
    return out


def model_files(args: argparse.Namespace, folder: Path) -> dict[str, tuple[Path, str]]:
    """The weights to serve, by column: the given (or demo, or a random small) model, and the paper's model."""
    import xception
    from xception.data.fashion_mnist import CLASSES

    models: dict[str, tuple[Path, str]] = {}
    weights = Path(args.weights) if args.weights else DEFAULT_WEIGHTS
    if args.weights or weights.is_file():
        models["given"] = weights, str(weights)
    else:
        model = xception.create_model("xception", num_classes=10, in_chans=1, stem="small", width=0.125)
        pre = xception.Preprocessing(input_size=28, crop_pct=1.0, interpolation="bilinear", mean=(0.286,),
                                     std=(0.353,), channels=1)
        weights = folder / "small.safetensors"
        xception.save_weights(model, weights, class_names=CLASSES, preprocessing=pre)
        models["given"] = weights, f"random weights ({DEFAULT_WEIGHTS} does not exist)"
    if not args.no_paper:
        paper = folder / "xception.safetensors"
        model = xception.create_model("xception", **dict(args.options))
        xception.save_weights(model, paper, preprocessing=xception.Preprocessing.centred(3, args.paper_size))
        models["paper"] = paper, "the paper's Xception, random weights"
    return models


def describe(weights: Path) -> dict[str, Any]:
    import xception

    model = xception.create_model(weights=str(weights))
    pre = model.preprocessing
    return {"arch": model.config.arch, "width": model.config.width, "stem": model.config.stem,
            "parameters": sum(p.numel() for p in model.parameters()), "input_size": pre.input_size if pre else None,
            "weights_bytes": weights.stat().st_size}


def _rss(figures: dict[str, float] | None, key: str = "VmRSS") -> float | None:
    return None if figures is None else figures.get(key)


def _cell(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+,.0f}" if sign else f"{value:,.0f}"


def table_rows(result: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str]]:
    """(what, MiB) for one model: the start-up stages as increments, then the server's figures."""
    child = {s["stage"]: s for s in result["child"]}
    rows, previous = [], None
    for stage in CHILD_STAGES:
        now = _rss(child.get(stage))
        rows.append((STAGE_NAMES[stage], _cell(now if previous is None else now - previous, previous is not None)))
        previous = now
    served = result["serving"]["stages"]
    ready, after = _rss(served["ready"]), _rss(served["requests"])
    torch_stage = child["import torch"]
    rows += [("= in one process, before serving", _cell(previous)),
             ("  of it file-backed after import torch (library code, shared) / CUDA libraries",
              f"{_cell(torch_stage['RssFile'])} / {_cell(torch_stage['cuda_libraries'])}"),
             ("xception serve: ready (/readyz 200)", _cell(ready)),
             (f"{args.requests} requests from {args.clients} clients, /openapi.json, /docs",
              _cell(after - ready, True)),
             ("= ready and serving", _cell(after)),
             ("  of it anonymous (a further worker's own) / file-backed",
              f"{_cell(served['requests']['RssAnon'])} / {_cell(served['requests']['RssFile'])}"),
             ("the first /explain", _cell(_rss(served["explain"]) - after, True))]
    if "large uploads" in served:
        rows.append((f"{args.large_uploads} {args.megapixels:g}-megapixel uploads from {args.large_clients} clients",
                     _cell(_rss(served["large uploads"]) - _rss(served["explain"]), True)))
    for name in ("weights on onnxruntime", ".onnx file"):
        onnx = result.get("onnx", {}).get(name)
        if onnx is not None:
            rows.append((f"--backend onnxruntime, {name}: ready, vs the fast path ready",
                         f"{_cell(_rss(onnx))} ({_cell(_rss(onnx) - ready, True)})"))
    return rows


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    models = report["models"]
    print(f"xception serve's resident memory (MiB) on {report['cpu']}, {report['cpus']} CPUs; torch "
          f"{report['torch']} (CUDA build: {report['torch_cuda']}) on the CPU; --max-batch {args.max_batch}")
    for label, result in models.items():
        info = result["model"]
        print(f"{label}: {result['source']}: {info['arch']}, {info['parameters']:,} parameters, "
              f"{info['input_size']} px, width {info['width']}, {info['stem']} stem")
    columns = {label: dict(table_rows(result, args)) for label, result in models.items()}
    names = list(next(iter(columns.values())))
    for rows in columns.values():
        names += [n for n in rows if n not in names]
    from xception.tables import format_table

    print(format_table([[n, *(rows.get(n, "-") for rows in columns.values())] for n in names],
                       ["stage", *(f"{label}, MiB" for label in columns)]))
    failed = {label: r["serving"]["failed_statuses"] for label, r in models.items() if r["serving"]["failed_statuses"]}
    print(f"requests not answered 200: {failed or 'none'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from xception.cli._common import add_model_options

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help=f"the model to serve (default {DEFAULT_WEIGHTS}, else a random small one)")
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's model out")
    parser.add_argument("--paper-size", type=int, default=299, help="the paper's model's image size (default 299)")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default 8)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=50, help="predictions sent before measuring (default 50)")
    parser.add_argument("--clients", type=int, default=4, help="threads sending them (default 4)")
    parser.add_argument("--large-uploads", type=int, default=24, help="large photos sent at the end (default 24; "
                        "0: none)")
    parser.add_argument("--large-clients", type=int, default=8, help="threads sending them (default 8)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the large photos (default 12)")
    parser.add_argument("--onnx", action="store_true", help="also measure servers on ONNX Runtime (weights, .onnx)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    add_model_options(parser)  # --set model.KEY=VALUE: options of the paper's model (a smaller one for tests)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    photo, large = photos(args.megapixels)
    models: dict[str, Any] = {}
    for label, (weights, source) in model_files(args, folder).items():
        print(f"{label}: stages", file=sys.stderr, flush=True)
        result: dict[str, Any] = {"source": source, "model": describe(weights),
                                  "child": child_stages(weights, args.max_batch)}
        print(f"{label}: server", file=sys.stderr, flush=True)
        result["serving"] = serving_stages(weights, args, photo, large)
        if args.onnx:
            print(f"{label}: ONNX Runtime servers", file=sys.stderr, flush=True)
            result["onnx"] = onnx_stages(weights, args, folder)
        models[label] = result
    return {"photo_bytes": len(photo), "large_photo_bytes": len(large), "models": models}


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        run_child(sys.argv[2], int(sys.argv[4]))
        return 0
    args = parse_args(argv)
    import torch

    from xception.hardware import cpu_name

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve-memory-") as tmp:
        report = {"schema": "xception-serve-memory/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv), "cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
                  "torch_cuda": torch.version.cuda, "settings": {k: v for k, v in vars(args).items()},
                  **measure(args, Path(tmp))}
    report["seconds"] = round(time.perf_counter() - began, 1)
    print_report(report, args)
    print(f"{report['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = any(r["serving"]["failed_statuses"] for r in report["models"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
