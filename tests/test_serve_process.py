"""A real ``xception serve`` process on 127.0.0.1: it binds there only, and SIGTERM lets requests finish."""

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
