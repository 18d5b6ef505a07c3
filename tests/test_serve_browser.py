"""The page in a real headless Chromium: drop a photo, see the top-5 bars and the Grad-CAM overlay; drop
something that is not an image, see the error and nothing of the photo before; and /docs renders the API
with nothing but the server itself (every other address refused).

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


# What the page shows, read in one call: bars, caption, images, whether the results are shown, the status.
SHOWN = """() => {
  const $ = (id) => document.getElementById(id);
  return {bars: document.querySelectorAll('#bars .bar').length, caption: $('camnote').textContent,
          preview: $('preview').getAttribute('src'), overlay: $('overlay').getAttribute('src'),
          results: getComputedStyle($('results')).display, status: $('status').textContent,
          error: $('status').className === 'error'};
}"""


def _upload_photo_then_junk(page, photo: Path) -> tuple[dict, dict]:
    """What the page reads after a good photo (its bars, overlay size, screenshot), then after junk."""
    page.set_input_files("#file", str(photo))
    page.wait_for_function("document.querySelectorAll('#bars .bar').length === 5", timeout=60_000)
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=60_000)
    good = {"names": page.locator("#bars .label span:first-child").all_inner_texts(),
            "shown": page.locator("#bars .label span:last-child").all_inner_texts(),
            "widths": page.eval_on_selector_all("#bars .fill", "fs => fs.map(f => f.getBoundingClientRect().width)"),
            "size": page.evaluate("[document.getElementById('overlay').naturalWidth,"
                                  " document.getElementById('overlay').naturalHeight]"),
            "page": page.evaluate(SHOWN)}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
    print(f"screenshot: {ARTIFACTS / 'serve-page.png'}")
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png",
                                          "buffer": b"shopping list: milk, eggs; not a picture at all"}])
    page.wait_for_function("document.getElementById('status').className === 'error'", timeout=60_000)
    return good, page.evaluate(SHOWN)


def _docs_offline(browser, url: str) -> tuple[int, list[str], list[str]]:
    """Operations Swagger UI drew at /docs, the requests it made elsewhere (refused), the page's errors."""
    page = browser.new_page()
    elsewhere: list[str] = []
    errors: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{url}/docs")
    page.wait_for_function("document.querySelectorAll('.opblock').length >= 6", timeout=60_000)
    page.wait_for_selector("text=Prediction", timeout=30_000)  # the schemas section names the response model
    return page.locator(".opblock").count(), elsewhere, errors


def test_page_shows_top_5_and_the_overlay_then_clears_them_for_a_bad_upload(tmp_path):
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
            good, bad = _upload_photo_then_junk(page, photo)
            operations, elsewhere, docs_errors = _docs_offline(browser, url)
        finally:
            browser.close()
    assert not errors
    # The bars are the model's own top 5 for this photo, in its order, with its probabilities.
    from xception.predict import predict

    (expected,) = predict(weights, [photo], top_k=5)
    assert good["names"] == [name for name, _ in expected.top]
    assert [float(text.removesuffix(" %")) for text in good["shown"]] == pytest.approx(
        [100 * p for _, p in expected.top], abs=0.051)
    widths = good["widths"]
    assert all(w > 0 for w in widths) and widths == sorted(widths, reverse=True)  # most probable first
    from PIL import Image

    assert tuple(good["size"]) == Image.open(photo).size  # the overlay covers the photo itself
    assert good["page"]["caption"].startswith("class: ") and not good["page"]["error"]
    # After the junk: the server's reason, and nothing left of the photo (bars, caption, images).
    assert bad["error"] and "notes.png" in bad["status"] and "not an image" in bad["status"], bad
    assert bad["bars"] == 0 and bad["caption"] == "" and bad["preview"] is None and bad["overlay"] is None, bad
    assert bad["results"] == "none", bad
    # /docs: Swagger UI drew every operation from this server alone.
    assert operations >= 6 and not elsewhere and not docs_errors, (elsewhere, docs_errors)
