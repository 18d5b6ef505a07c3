"""Fixtures the test modules share, and the one place the suite is cut off from the machine it runs on.

The suite must pass on a fresh machine where ``make test`` is all that was run, so before any test module is
imported (and for every subprocess the tests start, which inherit the environment) it gets:

- an empty home and cache (``HOME``, ``XDG_*``; ``XCEPTION_CACHE`` unset): nothing downloaded earlier is found;
- no installed datasets (``XCEPTION_DATA_PATH`` set and empty): Debian's Fashion-MNIST, if the machine has
  it, is invisible; a test that needs data makes it in ``tmp_path``;
- downloads of Fashion-MNIST pointed at a closed port on 127.0.0.1, so a test that reaches for the real
  dataset fails at once on every machine, online or not, instead of passing where the dataset happens to be
  installed or reachable; the Hugging Face Hub (``HF_ENDPOINT``) likewise, its cache under the empty home.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ISOLATED_HOME = Path(tempfile.mkdtemp(prefix="xception-test-home-"))
CLOSED_PORT_URL = "http://127.0.0.1:9/"  # the discard port: nothing listens there

os.environ.update({
    "HOME": str(ISOLATED_HOME),
    "XDG_CACHE_HOME": str(ISOLATED_HOME / ".cache"),
    "XDG_CONFIG_HOME": str(ISOLATED_HOME / ".config"),
    "XDG_DATA_HOME": str(ISOLATED_HOME / ".local" / "share"),
    "MPLCONFIGDIR": str(ISOLATED_HOME / ".config" / "matplotlib"),
    "XCEPTION_DATA_PATH": "",
    "XCEPTION_FASHION_MNIST_URL": CLOSED_PORT_URL,
    "HF_ENDPOINT": CLOSED_PORT_URL.rstrip("/"),
    "HF_HOME": str(ISOLATED_HOME / ".cache" / "huggingface"),
})
for _variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
    os.environ.pop(_variable, None)
os.environ.pop("XCEPTION_CACHE", None)
# The suite's workers share the cores (make test: one per core) and many tests start processes of their own:
# OpenMP threads that spin while they wait would starve the others.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the environment is set: nothing may read the real home first)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(ISOLATED_HOME, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
