"""The suite runs as on a fresh machine (tests/conftest.py): no installed dataset, no cache, no download.

These tests check that the cut-off holds, so that a test reaching for what the machine happens to have fails
here, on every machine, instead of passing only where the dataset is installed.
"""

import os
import time
from pathlib import Path

import pytest

from xception.data import fashion_mnist as fm
from xception.errors import DownloadError, MissingPathError
from xception.locations import cache_root, dataset_folders
from xception.weights import hub


def test_home_and_caches_are_empty_folders_of_the_suite():
    home = Path.home()
    assert home == Path(os.environ["HOME"]) and home.name.startswith("xception-test-home-")
    assert cache_root() == home / ".cache" / "xception" == hub.cache_dir()
    assert not cache_root().exists() or not any(cache_root().rglob("*.gz"))


def test_no_installed_dataset_is_searched(tmp_path, monkeypatch):
    assert dataset_folders("fashion-mnist") == []
    assert fm.find_fashion_mnist() is None  # even where Debian's package is installed
    with pytest.raises(MissingPathError, match="XCEPTION_DATA_PATH names none"):
        fm.locate(download=False)
    # The setting names folders to search, in order, in place of the system's and the cache.
    from test_data_fashion_mnist import write_fake_dataset

    write_fake_dataset(tmp_path / "b" / "fashion-mnist")
    monkeypatch.setenv("XCEPTION_DATA_PATH", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert fm.find_fashion_mnist() == tmp_path / "b" / "fashion-mnist"


def test_without_the_setting_the_system_folder_then_the_cache_are_searched(monkeypatch, tmp_path):
    monkeypatch.delenv("XCEPTION_DATA_PATH")
    monkeypatch.setenv("XCEPTION_CACHE", str(tmp_path / "cache"))
    assert dataset_folders("fashion-mnist") == [Path("/usr/share/datasets/fashion-mnist"),
                                                tmp_path / "cache" / "fashion-mnist"]


def test_reaching_for_the_real_dataset_fails_at_once():
    started = time.perf_counter()
    with pytest.raises(DownloadError, match=r"could not download http://127\.0\.0\.1:9/"):
        fm.load_fashion_mnist("test")
    assert time.perf_counter() - started < 10  # a closed local port answers at once: no network wait
