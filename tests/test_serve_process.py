"""A real ``xception serve`` process on 127.0.0.1: it binds there only, answers without delay, SIGTERM lets
requests finish; a port in use is said at once, before the model loads."""

import signal
import socket
import threading
import time

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serve_helpers import image_bytes, save_tiny, server_process  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("serve-process") / "tiny.safetensors")


def test_sigterm_answers_the_request_in_flight_then_exits_0(weights):
    # A lone request waits up to 3 s for others to share its batch: SIGTERM arrives while it waits.
    with server_process(weights, "--max-wait-ms", "3000", "--max-batch", "8") as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
            pass  # bound to 127.0.0.1 by default, not to every address of the machine
        with httpx.Client() as http:  # one connection, kept alive: each answer must leave at once
            times = []
            for _ in range(40):
                start = time.perf_counter()
                empty = http.post(f"{url}/predict", content=b"", headers={"content-type": "image/png"})
                times.append(time.perf_counter() - start)
                assert empty.status_code == 400
        # With Nagle's algorithm on, each answer waits ~40 ms for an ACK once the connection's first exchanges
        # (acknowledged at once by Linux) are over.
        assert min(times[20:]) < 0.03, times
        outcome: dict[str, object] = {}

        def send() -> None:
            try:
                outcome["response"] = httpx.post(f"{url}/predict", content=image_bytes(),
                                                 headers={"content-type": "image/png"}, timeout=60)
            except httpx.HTTPError as err:
                outcome["error"] = err

        thread = threading.Thread(target=send)
        thread.start()
        time.sleep(1.0)
        assert "response" not in outcome  # still in flight
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert proc.wait(timeout=60) == 0
        response = outcome.get("response")
        assert response is not None, outcome.get("error")
        assert response.status_code == 200 and len(response.json()["top"]) == 5
        with pytest.raises(httpx.HTTPError):  # and nothing listens any more
            httpx.get(f"{url}/healthz", timeout=2)


def test_a_port_in_use_is_said_in_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import xception.serve.app
    from xception.cli import main
    from xception.errors import BusyError, XceptionError
    from xception.serve import serve

    loads: list[object] = []
    real_create_app = xception.serve.app.create_app
    monkeypatch.setattr(xception.serve.app, "create_app", lambda *a, **k: loads.append(a) or real_create_app(*a, **k))
    missing = tmp_path / "missing.safetensors"  # loading it fails otherwise: the port must be checked first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BusyError, match=rf"^port {port} on 127\.0\.0\.1 is in use; pass port=\d+ \(free now\)"):
            serve(str(missing), port=port)
        assert main(["serve", "--weights", str(missing), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: port {port} on 127.0.0.1 is in use; pass --port " in err, err
    assert not loads
    # A free port: the model loads (and fails here), and the port is given back.
    with pytest.raises(XceptionError):
        serve(str(missing), port=port)
    assert len(loads) == 1
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
