"""Weights from the Hugging Face Hub (``hf-hub:ORG/NAME``): through huggingface_hub, against a Hub served on
127.0.0.1 (``HF_ENDPOINT``), never the internet."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

hf_constants = pytest.importorskip("huggingface_hub.constants")

from data_factory import cli_environment, stripes_folder  # noqa: E402
from weights_helpers import assert_same_state  # noqa: E402
from xception import cli, create_model, save_weights  # noqa: E402
from xception.catalog import CATALOG  # noqa: E402
from xception.errors import ChecksumError, ConfigError, DownloadError  # noqa: E402
from xception.preprocessing import Preprocessing  # noqa: E402
from xception.weights import hub, load_pretrained  # noqa: E402
from xception.weights.hfhub import HubRef, cached  # noqa: E402
from xception.weights.timm import aligned_table  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
X65 = "timm/xception65.ra3_in1k"


@dataclass
class Hub:
    """What the local Hub serves ({repo: {file: bytes}}), what it has seen, and files it states wrongly."""

    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, authorization
    wrong_sha256: set[str] = field(default_factory=set)


class Handler(BaseHTTPRequestHandler):
    """The routes hf_hub_download calls: HEAD for the metadata (commit, ETag, size), GET for the bytes, both on
    ``/{org}/{name}/resolve/{revision}/{file}``; errors carry the Hub's X-Error-Code."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        state: Hub = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.command, self.path, self.headers.get("authorization")))
        parts = self.path.split("/", 5)  # "", org, name, "resolve", revision, file
        if len(parts) < 6 or parts[3] != "resolve":
            return self._error(404, "RepoNotFound")
        repo, revision, filename = f"{parts[1]}/{parts[2]}", parts[4], parts[5]
        if repo not in state.files:
            return self._error(404, "RepoNotFound")
        if revision not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        data = state.files[repo].get(filename)
        if data is None:
            return self._error(404, "EntryNotFound")
        stated = hashlib.sha256(b"not the file" if filename in state.wrong_sha256 else data).hexdigest()
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha1(filename.encode()).hexdigest()}"')  # the LFS pointer's
        self.send_header("X-Linked-Etag", f'"{stated}"')  # an LFS file's: the sha256 of its content
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def hf(monkeypatch, tmp_path) -> Iterator[tuple[str, Hub, Path]]:
    """A local Hub (HF_ENDPOINT) and an empty Hugging Face cache."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = Hub()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    yield endpoint, httpd.state, tmp_path / "hf-cache"  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def narrow65(tmp_path_factory) -> tuple[torch.nn.Module, bytes]:
    """A narrow xception65 and its weights as timm names them (a safetensors file, as timm's Hub repos hold)."""
    torch.manual_seed(0)
    model = create_model("xception65", width=0.125).eval()
    ours_to_timm = {ours: theirs for theirs, ours in aligned_table("xception65").items()}
    state = {f"{ours_to_timm[module]}.{param}": tensor.contiguous()
             for key, tensor in model.state_dict().items()
             for module, _, param in [key.rpartition(".")]}
    path = tmp_path_factory.mktemp("narrow65") / "model.safetensors"
    save_file(state, str(path))
    return model, path.read_bytes()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[torch.nn.Module, bytes]:
    """A small model of ours, in our format (it says its own model, classes and preprocessing)."""
    model = create_model("xception", num_classes=3, width=0.25, middle_repeats=1, stem="small")
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_weights(model, path, class_names=["diagonal", "horizontal", "vertical"],
                 preprocessing=Preprocessing(input_size=32, crop_pct=1.0), source="a test repository")
    return model, path.read_bytes()


def test_a_known_source_loads_with_its_tags_metadata_and_comes_from_the_cache_the_second_time(hf, narrow65):
    _, state, cache = hf
    model, data = narrow65
    state.files[X65] = {"model.safetensors": data}
    loaded = create_model(weights=f"hf-hub:{X65}", width=0.125, progress=False)
    assert_same_state(loaded, model)
    assert loaded.preprocessing == hub.TAGS["xception65.ra3_in1k"].preprocessing  # crop 0.94, as timm evaluates
    assert loaded.weights_meta.source == f"xception65.ra3_in1k (hf-hub:{X65})"
    assert loaded.weights_meta.sha256 == hashlib.sha256(data).hexdigest()
    assert len(loaded.class_names) == 1000
    path = f"/{X65}/resolve/main/model.safetensors"
    assert [(m, p) for m, p, _ in state.requests] == [("HEAD", path), ("GET", path)]
    [blob] = (cache / "models--timm--xception65.ra3_in1k" / "blobs").iterdir()
    assert blob.name == hashlib.sha256(data).hexdigest()  # filed under the sha256 the Hub stated, and checked

    again = create_model(weights="xception65.ra3_in1k", width=0.125, progress=False)  # the tag: the same file
    assert_same_state(again, model)
    assert [m for m, _, _ in state.requests] == ["HEAD", "GET", "HEAD"]  # only the metadata asked again


def test_another_tag_of_the_same_variant_carries_its_own_preprocessing(hf, narrow65):
    _, state, _ = hf
    state.files["timm/xception65.tf_in1k"] = {"model.safetensors": narrow65[1]}
    model, report = load_pretrained("hf-hub:timm/xception65.tf_in1k", width=0.125, progress=False)
    assert report.model == "xception65" and report.format == "timm"
    assert model.preprocessing.crop_pct == 0.903 != CATALOG["xception65"].preprocessing.crop_pct


def test_any_repository_file_and_revision(hf, tiny):
    _, state, _ = hf
    model, data = tiny
    state.files["someone/tiny"] = {"weights/tiny.safetensors": data}
    loaded = create_model(weights=f"hf-hub:someone/tiny/weights/tiny.safetensors@{COMMIT}", progress=False)
    assert_same_state(loaded, model)
    assert loaded.weights_meta.source == "a test repository"  # our files keep the provenance they record
    assert state.requests[-1][1] == f"/someone/tiny/resolve/{COMMIT}/weights/tiny.safetensors"


def test_older_repositories_hold_pytorch_model_bin(hf, narrow65, tmp_path):
    _, state, _ = hf
    model, data = narrow65
    from safetensors.torch import load

    torch.save(load(data), tmp_path / "pytorch_model.bin")
    state.files["timm/old"] = {"pytorch_model.bin": (tmp_path / "pytorch_model.bin").read_bytes()}
    assert_same_state(create_model(weights="hf-hub:timm/old", width=0.125, progress=False), model)
    assert [p.rsplit("/", 1)[-1] for _, p, _ in state.requests] == ["model.safetensors", "pytorch_model.bin",
                                                                     "pytorch_model.bin"]


def test_the_token_is_sent(hf, tiny, monkeypatch):
    _, state, _ = hf
    state.files["someone/private"] = {"model.safetensors": tiny[1]}
    monkeypatch.setenv("HF_TOKEN", "hf_xception_test_token")
    create_model(weights="hf-hub:someone/private", progress=False)
    assert {auth for _, _, auth in state.requests} == {"Bearer hf_xception_test_token"}


def test_a_file_that_does_not_match_the_stated_sha256_is_refused_and_removed(hf, tiny):
    _, state, cache = hf
    state.files["someone/tiny"] = {"model.safetensors": tiny[1]}
    state.wrong_sha256.add("model.safetensors")
    with pytest.raises(ChecksumError, match=r"hf-hub:someone/tiny has sha256 [0-9a-f]{64}, but the Hub states"):
        create_model(weights="hf-hub:someone/tiny", progress=False)
    assert not list((cache / "models--someone--tiny" / "blobs").iterdir())
    assert cached("hf-hub:someone/tiny") is None


@pytest.mark.parametrize(("reference", "message"), [
    ("hf-hub:nobody/nothing", r"hf-hub:nobody/nothing: no such repository on http://127\.0\.0\.1:\d+, or it is "
                              "private or gated"),
    ("hf-hub:someone/tiny/missing.bin", "the repository has no missing.bin"),
    ("hf-hub:someone/tiny@v9", "the repository has no revision 'v9'"),
])
def test_what_is_not_on_the_hub_is_said_in_one_line(hf, tiny, reference, message):
    _, state, _ = hf
    state.files["someone/tiny"] = {"model.safetensors": tiny[1]}
    with pytest.raises(DownloadError, match=message) as err:
        create_model(weights=reference, progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("reference", ["hf-hub:timm", "hf-hub:/x", "hf-hub:a/b@", "hf-hub:a b/c"])
def test_a_malformed_reference_says_how_to_write_one(reference):
    with pytest.raises(ConfigError, match="write hf-hub:ORG/NAME"):
        HubRef.parse(reference)


def test_offline_mode_uses_the_cache_alone(hf, tiny, monkeypatch):
    _, state, _ = hf
    model, data = tiny
    state.files["someone/tiny"] = {"model.safetensors": data}
    create_model(weights="hf-hub:someone/tiny", progress=False)
    seen = len(state.requests)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert_same_state(create_model(weights="hf-hub:someone/tiny", progress=False), model)
    with pytest.raises(DownloadError, match=r"hf-hub:someone/other is not in the Hugging Face cache \(.*hf-cache\) "
                                            "and HF_HUB_OFFLINE is set"):
        create_model(weights="hf-hub:someone/other", progress=False)
    assert len(state.requests) == seen  # not one request while offline


def test_hf_hub_offline_in_the_environment_of_a_fresh_process(hf, tiny):
    endpoint, state, cache = hf
    state.files["someone/tiny"] = {"model.safetensors": tiny[1]}
    create_model(weights="hf-hub:someone/tiny", progress=False)
    seen = len(state.requests)
    code = ("import xception; m = xception.create_model(weights='hf-hub:someone/tiny', progress=False); "
            "print(m.config.num_classes)")
    env = {**cli_environment(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3" and len(state.requests) == seen


def test_without_the_package_the_error_names_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"need the huggingface_hub package: pip install 'xception\[hub\]'"):
        create_model(weights=f"hf-hub:{X65}")
    monkeypatch.setattr(cli, "COMMANDS", ("convert", "weights"))
    assert cli.main(["convert", f"hf-hub:{X65}", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xception convert: error: hf-hub: weights need the huggingface_hub package") and \
        err.count("\n") == 1
    assert cli.main(["weights", "--json"]) == 0  # listing the Hub's tags needs no client
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["xception65.ra3_in1k"]["path"] is None and not rows["xception65.ra3_in1k"]["cached"]


def test_command_line_weights_and_download(hf, tiny, narrow65, tmp_path, capsys, monkeypatch):
    _, state, _ = hf
    state.files["someone/tiny"] = {"model.safetensors": tiny[1]}
    state.files[X65] = {"model.safetensors": narrow65[1]}
    monkeypatch.setattr(cli, "COMMANDS", ("predict", "weights"))
    image = str(next((stripes_folder(tmp_path / "data", per_class=1) / "vertical").iterdir()))
    assert cli.main(["predict", "--weights", "hf-hub:someone/tiny", "--runtime", "torch", image, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["top"][0]["class"] in ("diagonal", "horizontal", "vertical")
    assert cli.main(["weights", "xception65.ra3_in1k", "--download", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["cached"] and row["checksum"] is None and row["url"] == f"hf-hub:{X65}"
    assert Path(row["path"]).read_bytes() == narrow65[1]
