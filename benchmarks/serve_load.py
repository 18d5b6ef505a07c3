"""A bounded load test of ``xception serve`` on 127.0.0.1: N clients for T seconds, with and without batching.

For each ``--max-batch`` setting a server process is started on a free 127.0.0.1 port (or ``--url`` names
one already running), ``--clients`` threads each send the same photo to ``POST /predict`` back to back
for ``--seconds``, and then everything stops. Reported per setting: requests answered, throughput,
p50/p99 latency, errors (anything but 200: must be 0), the server's resident memory before and after, and
the mean batch the server formed (from its /metrics).

    PYTHONPATH=src python benchmarks/serve_load.py --clients 4 --seconds 20 --max-batch 1,8 [--json out.json]

Without ``--weights`` it serves a small-input Xception (64 px, width 0.5, 8 middle modules, 10 classes)
with random weights: what is measured is the serving path, not accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from xception.tables import format_table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def _default_weights(folder: Path) -> Path:
    import xception

    model = xception.create_model("xception", num_classes=10, stem="small", width=0.5)
    path = folder / "serve-load.safetensors"
    pre = xception.Preprocessing(input_size=64, crop_pct=1.0, interpolation="bilinear")
    xception.save_weights(model, path, class_names=[f"class {i}" for i in range(10)], preprocessing=pre)
    return path


@contextlib.contextmanager
def _server(weights: Path, max_batch: int, max_wait_ms: float, backend: str):
    port = _free_port()
    cmd = [sys.executable, "-m", "xception", "serve", "--weights", str(weights), "--port", str(port),
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--backend", backend,
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the server was not ready within 300 s")
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def load(url: str, image: bytes, clients: int, seconds: float, content_type: str) -> dict[str, Any]:
    """``clients`` threads posting ``image`` back to back for ``seconds``; latencies and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            start_gate.wait()
            while time.monotonic() < stop_at[0]:
                began = time.perf_counter()
                try:
                    r = http.post(f"{url}/predict", content=image, headers={"content-type": content_type})
                    ok = r.status_code == 200
                    problem = "" if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as err:
                    ok, problem = False, type(err).__name__
                elapsed = time.perf_counter() - began
                with lock:
                    (latencies.append(elapsed) if ok else errors.append(problem))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at.append(time.monotonic() + seconds)
    began = time.monotonic()
    start_gate.wait()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")

    return {"requests": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "seconds": round(wall, 2), "throughput": len(latencies) / wall,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "mean_ms": statistics.fmean(ordered) * 1e3 if ordered else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="weights to serve (default: a small random model, made here)")
    parser.add_argument("--url", help="load an already running server instead (one setting, no memory figures)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-batch", default="1,8", help="settings to compare, comma-separated (default 1,8)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--image", help="image to send (default: matplotlib's sample photo)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.clients < 1 or not 0 < args.seconds <= 600:
        parser.error("--clients must be ≥ 1 and --seconds in (0, 600]")

    if args.image:
        image_path = Path(args.image)
    else:
        import matplotlib

        image_path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = image_path.read_bytes()
    content_type = "image/jpeg" if image_path.suffix.lower() in (".jpg", ".jpeg") else "image/png"

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            settings: list[int | None] = [None]
        else:
            settings = [int(s) for s in args.max_batch.split(",")]
            weights = Path(args.weights) if args.weights else _default_weights(Path(tmp))
        for max_batch in settings:
            if args.url:
                context: Any = contextlib.nullcontext((None, args.url.rstrip("/")))
            else:
                context = _server(weights, max_batch, args.max_wait_ms, args.backend)
            with context as (proc, url):
                pid = proc.pid if proc is not None else args.pid
                httpx.post(f"{url}/predict", content=image, headers={"content-type": content_type}, timeout=60)
                before = _rss_mb(pid)
                result = load(url, image, args.clients, args.seconds, content_type)
                after = _rss_mb(pid)
                metrics = httpx.get(f"{url}/metrics", timeout=10).text
                batches = _metric(metrics, "xception_batch_size_count")
                images = _metric(metrics, "xception_batch_size_sum")
                exit_code = None
            if proc is not None:
                exit_code = proc.returncode
            rows.append({"max_batch": max_batch, "clients": args.clients, **result,
                         "mean_batch": images / batches if batches else None,
                         "rss_before_mb": before, "rss_after_mb": after, "server_exit_code": exit_code})

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = [[fmt(r["max_batch"], "d") if r["max_batch"] else "?", r["clients"], r["requests"],
              fmt(r["throughput"], ".1f"), fmt(r["p50_ms"], ".0f"), fmt(r["p99_ms"], ".0f"), r["errors"],
              fmt(r["mean_batch"], ".2f"), fmt(r["rss_before_mb"], ".0f"), fmt(r["rss_after_mb"], ".0f")]
             for r in rows]
    print(f"{args.clients} clients × {args.seconds:g} s, POST /predict with {image_path.name} "
          f"({len(image) // 1024} KB), backend {args.backend}, cores: {os.cpu_count()}")
    print(format_table(table, ["max batch", "clients", "answered", "req/s", "p50 ms", "p99 ms", "errors",
                               "mean batch", "RSS before MB", "RSS after MB"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
