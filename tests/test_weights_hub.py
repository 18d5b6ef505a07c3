"""Named weights and downloads: served by a local HTTP server on 127.0.0.1, never the internet."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from weights_helpers import assert_same_state
from xception import create_model, save_weights
from xception.errors import ConfigError, DownloadError, StorageError, XceptionError
from xception.preprocessing import Preprocessing
from xception.weights import hub
from xception.weights.hub import ChecksumError, WeightsTag, download, fetch, verify_checksum
from xception.weights.imagenet import imagenet_class_names, imagenet_wnids

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, str] = field(default_factory=dict)  # "cut-once", "cut-always", "no-range"
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        byte_range = self.headers.get("Range")
        state.requests.append((self.path, byte_range))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        behaviour = state.behaviour.get(self.path, "")
        start = 0
        if byte_range and behaviour != "no-range":
            start = int(re.fullmatch(r"bytes=(\d+)-", byte_range)[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if behaviour == "cut-always" or (behaviour == "cut-once" and self.path not in state.cut):
            state.cut.add(self.path)
            self.wfile.write(payload[: len(payload) // 2])  # then drop the connection mid-body
            self.wfile.flush()
            self.close_connection = True
            return
        if behaviour == "slow":  # long enough for a second client to arrive mid-download
            for i in range(0, len(payload), len(payload) // 16):
                self.wfile.write(payload[i : i + len(payload) // 16])
                self.wfile.flush()
                time.sleep(0.04)
            return
        if behaviour == "stall-once" and self.path not in state.cut:  # two thirds of the file, then nothing
            state.cut.add(self.path)
            self.wfile.write(payload[: 2 * len(payload) // 3])
            self.wfile.flush()
            time.sleep(30)
            return
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XCEPTION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_download_verifies_and_shows_progress(server, tmp_path, capsys):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    dest = download(f"{base}/w.bin", tmp_path / "w.bin", checksum=f"md5:{MD5}")
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "w.bin.part").exists()
    err = capsys.readouterr().err
    assert "w.bin" in err and "100%" in err


def test_wrong_checksum_leaves_nothing_behind(server, tmp_path):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    with pytest.raises(ChecksumError, match=r"not the published file.*deleted"):
        download(f"{base}/w.bin", tmp_path / "w.bin", checksum="sha256:" + "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_connection_cut_mid_file_resumes_with_a_range_request(server, tmp_path):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    state.behaviour["/w.bin"] = "cut-once"
    dest = download(f"{base}/w.bin", tmp_path / "w.bin", checksum=f"md5:{MD5}", progress=False, retry_pause=0)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [("/w.bin", None), ("/w.bin", f"bytes={len(PAYLOAD) // 2}-")]


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    state.behaviour["/w.bin"] = "no-range"
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD[:1000])  # left by an earlier, interrupted run
    dest = download(f"{base}/w.bin", tmp_path / "w.bin", checksum=f"md5:{MD5}", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [("/w.bin", "bytes=1000-")]


def test_repeated_cuts_keep_the_part_for_a_later_resume(server, tmp_path):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    state.behaviour["/w.bin"] = "cut-always"
    url, dest = f"{base}/w.bin", tmp_path / "w.bin"
    with pytest.raises(OSError, match=r"could not download .*/w.bin: connection closed after .*next try resumes"):
        download(url, dest, checksum=f"md5:{MD5}", progress=False, retries=3, retry_pause=0)
    assert not dest.exists()
    kept = (tmp_path / "w.bin.part").stat().st_size
    assert kept == len(PAYLOAD) - len(PAYLOAD) // 8  # each of the 3 tries got half of what was left
    state.behaviour.clear()
    download(url, dest, checksum=f"md5:{MD5}", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests[-1] == ("/w.bin", f"bytes={kept}-")


def test_complete_part_file_is_verified_without_refetching(server, tmp_path):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD)
    download(f"{base}/w.bin", tmp_path / "w.bin", checksum=f"md5:{MD5}", progress=False)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert state.requests == [("/w.bin", f"bytes={len(PAYLOAD)}-")]  # answered 416: nothing left to send


def test_offline_error_names_the_url_and_where_to_put_the_file(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/xception-0123456789.pth"
    with pytest.raises(OSError) as err:
        fetch(url, progress=False)
    message = str(err.value)
    assert url in message and "copy the file to" in message
    assert str(hub.cache_dir() / "weights") in message


def test_http_error_is_reported(server, tmp_path):
    base, _ = server
    with pytest.raises(OSError, match="answered 404"):
        download(f"{base}/missing.bin", tmp_path / "m.bin", checksum=f"md5:{MD5}", progress=False)


def test_urls_must_carry_a_checksum(server):
    base, state = server
    state.files["/plain.bin"] = PAYLOAD
    with pytest.raises(ValueError, match="no checksum known"):
        fetch(f"{base}/plain.bin", progress=False)
    path = fetch(f"{base}/plain.bin#sha256={SHA256}", progress=False)
    assert path.read_bytes() == PAYLOAD and path.parent == hub.cache_dir() / "weights"
    # torch.hub / timm convention: the file name carries the start of the sha256
    state.files[f"/model-{SHA256[:9]}.pth"] = PAYLOAD
    assert fetch(f"{base}/model-{SHA256[:9]}.pth", progress=False).read_bytes() == PAYLOAD
    state.files["/model-deadbeef0.pth"] = PAYLOAD
    with pytest.raises(ChecksumError):
        fetch(f"{base}/model-deadbeef0.pth", progress=False)


def test_cache_location(monkeypatch, tmp_path):
    assert hub.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("XCEPTION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "xception"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == Path.home() / ".cache" / "xception"


@pytest.fixture
def local_tag(server, monkeypatch, tmp_path):
    """A tag for a small model of ours, served locally, registered as the default 'imagenet' weights."""
    base, state = server
    model = create_model("xception", num_classes=10, width=0.25, middle_repeats=1)
    save_weights(model, tmp_path / "small.safetensors", source="trained here")
    data = (tmp_path / "small.safetensors").read_bytes()
    state.files["/small.safetensors"] = data
    tag = WeightsTag(
        "xception.test_small", "xception", f"{base}/small.safetensors", f"sha256:{hashlib.sha256(data).hexdigest()}",
        10, Preprocessing(input_size=64, crop_pct=1.0), "a local test file", {"top1": 12.5},
    )
    monkeypatch.setitem(hub.TAGS, tag.name, tag)
    monkeypatch.setitem(hub.DEFAULT_TAGS, "xception", tag.name)
    return tag, model, state


def test_create_model_from_a_tag_downloads_once_and_attaches_its_metadata(local_tag):
    tag, original, state = local_tag
    model = create_model(weights=tag.name, progress=False)
    assert tag.path().exists() and len(state.requests) == 1
    assert model.preprocessing == tag.preprocessing and model.weights_meta.metrics == {"top1": 12.5}
    assert model.weights_meta.source == "trained here"  # our files keep the provenance they record
    assert_same_state(model, original)
    again = create_model("xception", weights="imagenet", progress=False)  # the cache answers
    assert len(state.requests) == 1 and again.weights_meta.metrics == {"top1": 12.5}


def test_a_corrupted_cache_entry_is_not_used(local_tag):
    tag, _, _ = local_tag
    create_model(weights=tag.name, progress=False)
    tag.path().write_bytes(b"garbage")
    with pytest.raises(ChecksumError, match="delete it to download it again"):
        create_model(weights=tag.name, progress=False)


def test_create_model_from_a_url(local_tag):
    tag, _, _ = local_tag
    model = create_model(weights=f"{tag.url}#{tag.checksum.replace(':', '=')}", progress=False)
    assert model.config.num_classes == 10 and model.config.width == 0.25


def test_unknown_weights_name_lists_the_tags():
    with pytest.raises(FileNotFoundError, match=r"no such file, and not a URL or a known tag \(xception.keras_in1k"):
        create_model(weights="xception.nonexistent")


def test_published_tags_record_their_sources_and_checksums():
    keras_top, keras_notop, legacy = (hub.TAGS[t] for t in
                                      ("xception.keras_in1k", "xception.keras_in1k_notop", "legacy_xception.tf_in1k"))
    base = "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
    assert keras_top.url == base + "xception_weights_tf_dim_ordering_tf_kernels.h5"
    assert keras_top.checksum == "md5:0a58e3b7378bc2990ea3b43d5981f1f6"
    assert keras_notop.url == base + "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert keras_notop.checksum == "md5:b0042744bf5b25fce3cb969f33bebb97" and keras_notop.num_classes == 0
    assert legacy.checksum == hub.checksum_from_url(legacy.url) == "sha256:43020ad28"
    assert keras_top.preprocessing.mean == (0.5,) * 3 and keras_top.preprocessing.input_size == 299
    assert keras_top.class_names == imagenet_class_names() and keras_notop.class_names is None
    assert keras_top.metrics["top1"] == 79.0 and legacy.model == "legacy_xception"


def test_verify_checksum_accepts_prefixes_and_rejects_malformed(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert verify_checksum(path, f"sha256:{SHA256[:10]}") == SHA256
    with pytest.raises(ValueError, match="checksum must look like"):
        verify_checksum(path, "crc32:1234")


def test_imagenet_class_names_ship_with_the_package():
    names, wnids = imagenet_class_names(), imagenet_wnids()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert wnids[0] == "n01440764" and wnids == sorted(wnids) and len(set(wnids)) == 1000


# -- two processes, one download ---------------------------------------------------------------------------

FETCH_WHEN_TOLD = """
import sys
from xception.weights.hub import fetch
print("ready", flush=True)
sys.stdin.readline()  # every process starts fetching at the same moment
print(fetch(sys.argv[1], progress=False), flush=True)
"""


def _start_fetches(url: str, n: int) -> list[subprocess.Popen]:
    """``n`` processes, each fetching ``url`` once told to (every one has imported the library by then)."""
    processes = [subprocess.Popen([sys.executable, "-c", FETCH_WHEN_TOLD, url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for process in processes:
        assert process.stdout.readline() == "ready\n"
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    return processes


def test_two_processes_fetching_the_same_file_download_it_once(server, cache):
    base, state = server
    state.files["/slow.bin"] = PAYLOAD
    state.behaviour["/slow.bin"] = "slow"  # about 0.6 s: the second process arrives mid-download
    url = f"{base}/slow.bin#sha256={SHA256}"
    processes = _start_fetches(url, 2)
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == PAYLOAD
    assert len(state.requests) == 1
    assert not list((cache / "weights").glob("*.part"))


def test_a_download_killed_midway_leaves_no_lock_and_the_next_one_resumes(server, cache):
    base, state = server
    big = PAYLOAD * 3  # 3 MiB: the reader writes its first 1 MiB chunks before the server stalls
    state.files["/w.bin"] = big
    state.behaviour["/w.bin"] = "stall-once"
    url = f"{base}/w.bin#sha256={hashlib.sha256(big).hexdigest()}"
    [process] = _start_fetches(url, 1)

    def written() -> int:
        return sum(p.stat().st_size for p in (cache / "weights").glob("*.part")) if (cache / "weights").exists() else 0

    deadline = time.monotonic() + 30
    while written() == 0:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # while it holds the lock, part of the file written
    process.communicate()
    path = fetch(url, progress=False)  # does not wait for the dead process: the kernel released its lock
    assert path.read_bytes() == big
    assert len(state.requests) == 2 and re.fullmatch(r"bytes=[1-9]\d*-", state.requests[1][1] or "")  # resumed


# -- what the errors say -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fragment", ["sha256=xyz", "sha256=abc", "sha256:" + "0" * 64, "sha256=", "sha512=" + "0" * 64,
                                      "SHA256", "md5=not-hex"])
def test_a_malformed_checksum_in_a_url_is_called_malformed(server, fragment):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    with pytest.raises(ConfigError, match=rf"malformed checksum '#{re.escape(fragment)}' in .*#sha256=<hex digest>"):
        fetch(f"{base}/w.bin#{fragment}", progress=False)
    assert state.requests == []  # refused before any network access


def test_a_checksum_fragment_may_be_upper_case(server):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    assert fetch(f"{base}/w.bin#SHA256={SHA256.upper()}", progress=False).read_bytes() == PAYLOAD


def test_download_errors_are_the_librarys_own_and_keep_their_cause(server, tmp_path):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="answered 404") as err:
        download(f"{base}/missing.bin", tmp_path / "m.bin", checksum=f"md5:{MD5}", progress=False)
    assert err.value.__cause__ is not None
    with pytest.raises(ChecksumError) as err:
        download(f"{base}/w.bin", tmp_path / "w.bin", checksum="md5:" + "0" * 32, progress=False)
    assert isinstance(err.value, XceptionError) and isinstance(err.value.__cause__, ChecksumError)


def test_a_cache_that_cannot_be_written_says_so(server, tmp_path, monkeypatch):
    base, state = server
    state.files["/w.bin"] = PAYLOAD
    (tmp_path / "file").write_text("a file where the cache folder should be")
    monkeypatch.setenv("XCEPTION_CACHE", str(tmp_path / "file"))
    with pytest.raises(StorageError, match="XCEPTION_CACHE"):
        fetch(f"{base}/w.bin#md5={MD5}", progress=False)
