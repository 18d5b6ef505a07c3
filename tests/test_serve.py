"""The HTTP service in process: every endpoint, every bad request, micro-batching, timeouts, both backends."""

import base64
import io
import os
import re
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from data_factory import bomb_png
from serve_helpers import CLASSES, image_bytes, save_tiny, tiny_model
from xception.errors import ConfigError, XceptionError
from xception.explain import grad_cam
from xception.serve import ServeOptions, create_app


def _ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.05)


def _metric(client: TestClient, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent), read by prometheus-client's parser; bucket bounds (``le``)
    compare as numbers, so ``le="4"`` finds the exposition's ``le="4.0"``."""
    def same(key: str, wanted: str, got: str) -> bool:
        return float(wanted) == float(got) if key == "le" else wanted == got

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.keys() == labels.keys() and \
                    all(same(k, v, sample.labels[k]) for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("serve") / "tiny.safetensors")


@pytest.fixture(scope="module")
def client(weights):
    app = create_app(str(weights), device="cpu", options=ServeOptions(max_wait_ms=10, max_bytes=200_000))
    with TestClient(app) as c:
        _ready(c)
        yield c


def _reference(png: bytes) -> torch.Tensor:
    """The plain model's probabilities for a 32×32 image: pixels / 127.5 − 1, no resizing."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 127.5 - 1
    with torch.no_grad():
        return tiny_model()(torch.from_numpy(pixels).permute(2, 0, 1)[None]).softmax(1)[0]


def test_predict_returns_the_models_top_5_from_an_upload_or_a_raw_body(client):
    png = image_bytes((32, 32), seed=3)
    expected = _reference(png).topk(5)
    for response in (client.post("/predict", files={"file": ("x.png", png, "image/png")}),
                     client.post("/predict", content=png, headers={"content-type": "image/png"}),
                     client.post("/predict", content=png, headers={"content-type": "application/octet-stream"})):
        assert response.status_code == 200, response.text
        top = response.json()["top"]
        assert [t["class"] for t in top] == [CLASSES[i] for i in expected.indices]
        assert [t["probability"] for t in top] == pytest.approx(expected.values.tolist(), rel=1e-4)
    jpeg = client.post("/predict?top_k=2", content=image_bytes(fmt="JPEG"), headers={"content-type": "image/jpeg"})
    assert jpeg.status_code == 200 and len(jpeg.json()["top"]) == 2


def test_explain_returns_the_overlay_png_or_json_with_the_heatmap(client):
    png = image_bytes((32, 32), seed=4)
    response = client.post("/explain", content=png, headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)
    data = client.post("/explain?format=json&class=class 3", files={"file": ("x.png", png, "image/png")}).json()
    assert data["target"] == {"index": 3, "class": "class 3"} and data["layer"] == "exit_flow.block7.act"
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 127.5 - 1
    expected = grad_cam(tiny_model(), torch.from_numpy(pixels).permute(2, 0, 1)[None], target=3)
    np.testing.assert_allclose(np.array(data["heatmap"]), expected.heatmaps[0].numpy(), atol=1e-4)
    assert data["overlay"].startswith("data:image/png;base64,")
    overlay = Image.open(io.BytesIO(base64.b64decode(data["overlay"].split(",", 1)[1])))
    assert overlay.size == (32, 32)
    bad = client.post("/explain?class=zebra", content=png, headers={"content-type": "image/png"})
    assert bad.status_code == 400 and "no class named 'zebra'" in bad.json()["message"]
    bad = client.post("/explain?format=gif", content=png, headers={"content-type": "image/png"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request" and "format" in bad.json()["message"]


def test_health_readiness_page_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["backend"] == "torch" and ready["classes"] == 10
    info = client.get("/model").json()
    assert info["class_names"] == CLASSES and info["top_k"] == 5 and info["max_bytes"] == 200_000
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and "/predict" in page.text
    before = _metric(client, "xception_requests_total", endpoint="/predict", status="200")
    client.post("/predict", content=image_bytes(), headers={"content-type": "image/png"})
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    assert _metric(client, "xception_requests_total", endpoint="/predict", status="200") == before + 1
    count = _metric(client, "xception_request_duration_seconds_count", endpoint="/predict")
    assert count >= before + 1
    assert _metric(client, "xception_request_duration_seconds_bucket", endpoint="/predict", le="+Inf") == count
    assert _metric(client, "xception_batch_size_count") >= 1


def test_openapi_shows_the_schemas_and_the_400s_the_service_answers(client):
    spec = client.get("/openapi.json").json()
    schemas, predict = spec["components"]["schemas"], spec["paths"]["/predict"]["post"]
    ok = predict["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Prediction"}
    assert set(schemas["Prediction"]["properties"]) == {"top", "model", "backend"}
    assert set(schemas["ClassScore"]["properties"]) == {"class", "index", "probability"}
    assert {"Explanation", "ErrorBody", "Health", "Readiness", "ModelInfo"} <= set(schemas)
    [top_k] = [p for p in predict["parameters"] if p["name"] == "top_k"]
    assert {"type": "integer", "minimum": 1, "maximum": 1000} in top_k["schema"]["anyOf"]
    assert {"multipart/form-data", "image/*"} <= set(predict["requestBody"]["content"])
    assert predict["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    explain = spec["paths"]["/explain"]["post"]["responses"]["200"]["content"]
    assert {"image/png", "application/json"} <= set(explain)
    # A parameter out of range is a 400 in the service's JSON form, never FastAPI's 422.
    assert not [path for path, ops in spec["paths"].items() for op in ops.values() if "422" in op["responses"]]


def test_docs_pages_load_everything_from_this_server(client):
    pytest.importorskip("fastapi_offline", reason="/docs serves the Swagger UI and ReDoc files of fastapi-offline")
    for path in ("/docs", "/redoc"):
        html = client.get(path)
        assert html.status_code == 200 and "://" not in html.text  # no CDN, no web fonts
        urls = re.findall(r'(?:src|href|spec-url)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
        assert len(urls) >= 3, urls
        kinds = set()
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 0, url
            kinds.add(asset.headers["content-type"].split(";")[0])
        assert "application/json" in kinds and ({"text/javascript", "text/css"} & kinds), kinds
    assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")


def _chunks(total: int):
    for _ in range(total // 50_000):
        yield b"\0" * 50_000


BAD_REQUESTS = [
    ("not_an_image", {"content": b"<html>a web page</html>", "headers": {"content-type": "image/png"}}, 400),
    ("truncated", {"content": image_bytes((64, 64))[:300], "headers": {"content-type": "image/png"}}, 400),
    ("empty", {"content": b"", "headers": {"content-type": "image/png"}}, 400),
    ("too_large", {"content": b"\0" * 300_000, "headers": {"content-type": "image/png"}}, 413),
    ("too_large", {"content": _chunks(300_000), "headers": {"content-type": "image/png"}}, 413),  # no length
    ("unsupported_media_type", {"json": {"image": "cat.jpg"}}, 415),
    ("unsupported_media_type", {"content": image_bytes()}, 415),  # no content type at all
    ("no_file", {"data": {"note": "no file here"}, "files": {"other": (None, "text")}}, 400),
    ("bad_request", {"content": image_bytes(), "headers": {"content-type": "image/png"}, "params": {"top_k": "0"}},
     400),
    ("bad_request", {"content": image_bytes(), "headers": {"content-type": "image/png"}, "params": {"top_k": "5000"}},
     400),  # typed with bounds: 1 ≤ top_k ≤ 1000
    ("bad_request", {"content": image_bytes(), "headers": {"content-type": "image/png"}, "params": {"top_k": "two"}},
     400),
]


@pytest.mark.parametrize("kind, request_args, status", BAD_REQUESTS, ids=[f"{k}-{i}" for i, (k, _, _) in
                                                                             enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_4xx_json_message_and_are_counted(client, kind, request_args, status):
    before = _metric(client, "xception_errors_total", kind=kind)
    response = client.post("/predict", **request_args)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == kind and len(body["message"]) > 10
    assert _metric(client, "xception_errors_total", kind=kind) == before + 1
    assert client.post("/predict", content=image_bytes(), headers={"content-type": "image/png"}).status_code == 200


def test_a_decompression_bomb_is_refused_before_it_is_decoded(client, tmp_path):
    data = bomb_png(tmp_path / "bomb.png").read_bytes()  # 2.5 gigapixels claimed in a few hundred bytes
    response = client.post("/predict", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 413 and response.json()["error"] == "decompression_bomb"
    assert client.get("/healthz").status_code == 200


def test_wrong_method_and_unknown_paths_are_counted(client):
    before = _metric(client, "xception_errors_total", kind="method_not_allowed")
    assert client.get("/predict").status_code == 405
    assert client.get("/nothing-here").status_code == 404
    assert _metric(client, "xception_errors_total", kind="method_not_allowed") == before + 1


def _concurrently(client: TestClient, n: int) -> list[int]:
    statuses: list[int] = []
    barrier = threading.Barrier(n)

    def send(seed: int) -> None:
        barrier.wait()
        r = client.post("/predict", content=image_bytes(seed=seed), headers={"content-type": "image/png"})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


@pytest.mark.parametrize("max_batch", [1, 4])
def test_concurrent_requests_share_model_calls_up_to_max_batch(weights, max_batch):
    app = create_app(str(weights), device="cpu", options=ServeOptions(max_batch=max_batch, max_wait_ms=400))
    with TestClient(app) as c:
        _ready(c)
        batches = _metric(c, "xception_batch_size_count")  # warm-up runs outside the batcher
        assert _concurrently(c, 6) == [200] * 6
        calls = _metric(c, "xception_batch_size_count") - batches
        largest = max((float(le) for le in ("1", "2", "4", "8") if _metric(c, "xception_batch_size_bucket", le=le)
                       < _metric(c, "xception_batch_size_bucket", le="+Inf")), default=0.0)
        if max_batch == 1:
            assert calls == 6 and largest == 0.0  # every batch ≤ 1
        else:
            assert calls < 6 and largest >= 1.0  # some batch held more than one image, none more than 4
            assert _metric(c, "xception_batch_size_bucket", le="4") == _metric(c, "xception_batch_size_count")


def test_a_request_past_its_deadline_gets_504_and_the_server_goes_on(weights):
    # The first image of a batch waits 3 s for company; the deadline is 0.3 s.
    app = create_app(str(weights), device="cpu", options=ServeOptions(max_wait_ms=3000, timeout_s=0.3))
    with TestClient(app) as c:
        _ready(c)
        r = c.post("/predict", content=image_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 504 and r.json()["error"] == "timeout"
        assert _metric(c, "xception_errors_total", kind="timeout") == 1
        assert c.get("/healthz").status_code == 200


def test_onnxruntime_backend_serves_the_same_top_5(weights):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    app = create_app(str(weights), backend_name="onnxruntime", device="cpu")
    png = image_bytes((32, 32), seed=5)
    expected = _reference(png).topk(5)
    with TestClient(app) as c:
        _ready(c)
        assert c.get("/readyz").json()["backend"] == "onnxruntime"
        top = c.post("/predict", content=png, headers={"content-type": "image/png"}).json()["top"]
        assert [t["class"] for t in top] == [CLASSES[i] for i in expected.indices]
        assert [t["probability"] for t in top] == pytest.approx(expected.values.tolist(), rel=1e-4)
        # Exported from weights, the plain model stays for Grad-CAM.
        assert c.post("/explain", content=png, headers={"content-type": "image/png"}).status_code == 200
    onnx_file = app.state.backend.details["onnx"]
    with TestClient(create_app(onnx_file, backend_name="onnxruntime")) as c:
        _ready(c)
        top = c.post("/predict", content=png, headers={"content-type": "image/png"}).json()["top"]
        assert [t["class"] for t in top] == [CLASSES[i] for i in expected.indices]
        r = c.post("/explain", content=png, headers={"content-type": "image/png"})
        assert r.status_code == 501 and r.json()["error"] == "explain_unavailable"


def test_what_cannot_be_served_fails_before_the_server_starts(weights, tmp_path):
    onnx_header = tmp_path / "model.bin"  # what an ONNX file starts with: its content says ONNX, not its name
    onnx_header.write_bytes(b"\x08\x0a\x12\x07pytorch\x1a\x062.14.1")
    with pytest.raises(ConfigError, match="an ONNX export: it runs on onnxruntime, not fast"):
        create_app(str(onnx_header), backend_name="torch")
    with pytest.raises(XceptionError):
        create_app(str(tmp_path / "model.onnx"))
    with pytest.raises(XceptionError):
        create_app(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="max_batch"):
        create_app(str(weights), options=ServeOptions(max_batch=0))


def test_an_unexpected_failure_is_a_500_in_json_counted_and_the_server_goes_on(weights):
    from xception.serve.backends import load_backend

    backend = load_backend(str(weights), device="cpu")

    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a bug in a kernel")

    backend.run = broken  # what the micro-batcher calls; warming up goes through the runner itself
    with TestClient(create_app(backend=backend)) as c:
        _ready(c)
        r = c.post("/predict", content=image_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 500 and r.json() == {"error": "internal", "message": "the server failed; see its log"}
        assert "kernel" not in r.text  # never the exception or its traceback
        assert _metric(c, "xception_errors_total", kind="internal") == 1
        assert _metric(c, "xception_requests_total", endpoint="/predict", status="500") == 1
        assert c.get("/healthz").status_code == 200


def test_metrics_of_several_worker_processes_are_summed(tmp_path, monkeypatch):
    """prometheus-client's multiprocess mode: each process writes its values under PROMETHEUS_MULTIPROC_DIR,
    and /metrics of any of them reads all. Two processes are simulated by the process id each value records."""
    from prometheus_client import values

    from xception.serve.metrics import Metrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    workers = []
    for pid in (os.getpid(), 4_000_000):  # this process, and another one
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda pid=pid: pid))
        metrics = Metrics()
        metrics.request("/predict", 200, 0.02)
        metrics.error("timeout")
        metrics.batch(3)
        metrics.in_flight.inc()
        workers.append(metrics)

    def sample(name: str, **labels: str) -> float:
        body, content_type = workers[0].render()
        assert content_type.startswith("text/plain")
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return 0.0

    assert sample("xception_requests_total", endpoint="/predict", status="200") == 2
    assert sample("xception_errors_total", kind="timeout") == 2
    assert sample("xception_batch_size_sum") == 6 and sample("xception_batch_size_count") == 2
    assert sample("xception_requests_in_flight") == 2
    workers[0].close()  # this process stops: its requests stay counted, its in-flight gauge leaves the sum
    assert sample("xception_requests_in_flight") == 1
    assert sample("xception_requests_total", endpoint="/predict", status="200") == 2
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="is not a folder: create it"):
        Metrics()
