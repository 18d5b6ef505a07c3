"""Fashion-MNIST: IDX files, where they are looked for, and a checksum-verified download (local server)."""

import gzip
import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch

from xception.data import fashion_mnist as fm
from xception.data import read_idx, training_sources
from xception.errors import DownloadError


def idx_bytes(tensor: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
    return header + tensor.to(torch.uint8).numpy().tobytes()


def write_fake_dataset(folder, n_train=30, n_test=10, gz=True):
    """Four small IDX files in Fashion-MNIST's names; returns {file name: MD5} of what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sums = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = fm.SPLITS[split]
        for name, tensor in ((images_name, torch.randint(0, 256, (n, 28, 28), generator=g)),
                             (labels_name, torch.arange(n) % 10)):
            data = idx_bytes(tensor)
            path = folder / (name + (".gz" if gz else ""))
            path.write_bytes(gzip.compress(data) if gz else data)
            sums[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    return sums


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server for tmp_path/served on 127.0.0.1; yields (base URL, served folder)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_read_gzipped_or_not(tmp_path, gz):
    write_fake_dataset(tmp_path, gz=gz)
    images, labels = fm.load_fashion_mnist("train", tmp_path, download=False)
    assert images.shape == (30, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [i % 10 for i in range(30)]


def test_damaged_idx_files_are_refused(tmp_path):
    good = idx_bytes(torch.zeros(4, 3, 3))
    (tmp_path / "cut").write_bytes(good[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "cut")
    (tmp_path / "foreign").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "foreign")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot be read"):
        read_idx(tmp_path / "bad.gz")


def test_missing_files_without_download_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.locate(tmp_path, download=False)


def test_download_verifies_checksums_and_keeps_the_files(tmp_path, http_server):
    url, served = http_server
    sums = write_fake_dataset(served)
    target = tmp_path / "data"
    assert fm.download_fashion_mnist(target, base_url=url, checksums=sums) == target
    assert fm.has_files(target)
    images, _ = fm.load_fashion_mnist("test", target, download=False)
    assert images.shape == (10, 1, 28, 28)
    # Present and intact: a second call downloads nothing (the server may be gone).
    fm.download_fashion_mnist(target, base_url="http://127.0.0.1:9/", checksums=sums)


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, http_server):
    url, served = http_server
    sums = write_fake_dataset(served)
    name = next(iter(sums))
    with pytest.raises(DownloadError, match=r"expected 0{32}"):
        fm.download_fashion_mnist(tmp_path / "data", base_url=url, checksums={name: "0" * 32})
    assert not any((tmp_path / "data").iterdir())  # no file, no temporary left behind


def test_unreachable_mirror_gives_a_clear_error(tmp_path, http_server):
    url, _ = http_server  # serves nothing: 404
    with pytest.raises(OSError, match=r"could not download .*dataset-fashion-mnist"):
        fm.download_fashion_mnist(tmp_path / "data", base_url=url, checksums={"x.gz": "0" * 32})


def test_locate_downloads_into_the_data_dir(tmp_path, http_server, monkeypatch):
    url, served = http_server
    sums = write_fake_dataset(served)
    monkeypatch.setenv(fm.MIRROR_ENV, url)  # the download goes where the setting says
    monkeypatch.setattr(fm, "CHECKSUMS", sums)
    train, val = training_sources("fashion-mnist", data_dir=tmp_path / "fm", val_fraction=0.2)
    assert (len(train), len(val)) == (20, 10) and train.classes == fm.CLASSES  # one of each class held out


@pytest.mark.slow  # `make test-slow` installs the dataset first; the default suite uses none
@pytest.mark.skipif(not fm.has_files(fm.DEBIAN_DIR), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_real_dataset_has_the_published_sizes_and_statistics():
    images, labels = fm.load_fashion_mnist("train", fm.DEBIAN_DIR, download=False)
    assert images.shape == (60_000, 1, 28, 28) and torch.bincount(labels).tolist() == [6000] * 10
    pixels = images.float() / 255
    assert pixels.mean().item() == pytest.approx(fm.MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(fm.STD, abs=1e-4)
    test_images, _ = fm.load_fashion_mnist("test", fm.DEBIAN_DIR, download=False)
    assert test_images.shape == (10_000, 1, 28, 28)
