"""Named weights and downloads: served by a local HTTP server on 127.0.0.1, never the internet."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from weights_helpers import assert_same_state
from xception import create_model, save_weights
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
