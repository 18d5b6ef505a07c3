"""The page in a real headless Chromium: drop a photo, see the top-5 bars and the Grad-CAM overlay.

Debian's ``chromium`` driven by Playwright's Python package (never a browser download). ``make test``
installs chromium where it can (as root with apt, as in CI, where this test must run); elsewhere it is
skipped, saying why. The screenshot is kept in ``tests/artifacts/``.
"""

import os
import shutil
from pathlib import Path

import matplotlib
import pytest

from serve_helpers import save_tiny, server_process

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _browser_or_skip() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append("/usr/bin/chromium (as root: apt-get install chromium, or `make test`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright; no browser download needed)")
    if not missing:
        return
    reason = "the page test needs " + " and ".join(missing)
    can_install = os.geteuid() == 0 and shutil.which("apt-get")
    if os.environ.get("CI") and can_install:
        pytest.fail(f"{reason}: CI runs as root with apt, so `make test` must have installed it")
    pytest.skip(reason)


def test_page_shows_top_5_and_the_overlay_for_an_uploaded_photo(tmp_path):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    weights = save_tiny(tmp_path / "tiny.safetensors")
    with server_process(weights) as (_, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url)
            page.set_input_files("#file", str(photo))
            page.wait_for_function("document.querySelectorAll('#bars .bar').length === 5", timeout=60_000)
            page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=60_000)
            names = page.locator("#bars .label span:first-child").all_inner_texts()
            shown = page.locator("#bars .label span:last-child").all_inner_texts()
            widths = page.eval_on_selector_all("#bars .fill", "bars => bars.map(b => b.getBoundingClientRect().width)")
            size = page.evaluate("[document.getElementById('overlay').naturalWidth,"
                                 " document.getElementById('overlay').naturalHeight]")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
            print(f"screenshot: {ARTIFACTS / 'serve-page.png'}")
        finally:
            browser.close()
    assert not errors
    # The bars are the model's own top 5 for this photo, in its order, with its probabilities.
    from xception.predict import predict

    (expected,) = predict(weights, [photo], top_k=5)
    assert names == [name for name, _ in expected.top]
    assert [float(text.removesuffix(" %")) for text in shown] == pytest.approx(
        [100 * p for _, p in expected.top], abs=0.051)
    assert all(w > 0 for w in widths) and widths == sorted(widths, reverse=True)  # most probable first
    from PIL import Image

    assert tuple(size) == Image.open(photo).size  # the overlay covers the photo itself
