"""``labelless demo`` in a real headless browser: the server runs as ``python -m labelless
demo`` on a free local port, Chromium (Debian's package, driven by Playwright with
``executable_path``: no browser is downloaded) uploads a photo, types the words, submits,
and the overlay, the legend and the label map that come back are checked against the
Python API's result for the same model; an empty vocabulary shows its message. A
screenshot of the page goes to the test's tmp dir and, when ``LABELLESS_SCREENSHOT_DIR``
is set, there as ``demo.png``.

Skipped (with the reason) without Playwright, Gradio or Chromium, unless
``LABELLESS_BROWSER_TEST=required`` (``.ci/run`` sets it): then those fail the test.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import labelless
from labelless.demo import example_images

REPO = Path(__file__).resolve().parents[1]
WORDS = "sky, road|street, car"
TIMEOUT_MS = 60_000


def _require(reason: str):
    if os.environ.get("LABELLESS_BROWSER_TEST") == "required":
        pytest.fail(f"LABELLESS_BROWSER_TEST=required, but {reason}")
    pytest.skip(reason)


@pytest.fixture
def chromium() -> str:
    """Chromium's path, once Playwright and Gradio are known to be there (else skip, module doc)."""
    for module, extra in (("playwright", "test"), ("gradio", "demo")):
        if importlib.util.find_spec(module) is None:
            _require(f"{module} is not installed (pip install 'labelless[{extra}]')")
    for name in (os.environ.get("LABELLESS_CHROMIUM"), "chromium", "chromium-browser"):
        path = name and shutil.which(name)
        if path:
            return path
    _require("Chromium not found (apt-get install chromium, or set LABELLESS_CHROMIUM to its path)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(chromium, tmp_path):
    """``labelless demo`` on a tiny random model, as a subprocess; its URL."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w+")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.Popen([sys.executable, "-m", "labelless", "demo", "--model", "tiny-vit", "--pretrained", "none",
                             "--device", "cpu", "--server-name", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the demo server did not come up (exit {proc.poll()}):\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _image_bytes(page, src: str) -> np.ndarray:
    body = page.request.get(src, timeout=TIMEOUT_MS).body()
    return np.asarray(Image.open(io.BytesIO(body)))


def test_the_demo_segments_an_uploaded_photo_in_a_browser(chromium, server, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = example_images()[0]
    expected = labelless.load("tiny-vit", "none", device="cpu")(photo, WORDS)  # what the page must show
    outside = []

    def local_only(route):  # the page must work without any other host
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.route("**/*", local_only)
            page.goto(server)
            page.set_input_files("#image input[type=file]", str(photo))
            page.wait_for_selector("#image img")  # the upload is shown
            page.fill("#words textarea", WORDS)
            page.click("#segment")
            page.wait_for_selector("#legend table.labelless-legend")
            page.wait_for_selector("#overlay img")
            rows = page.locator("#legend tr.labelless-class")
            names = rows.locator("td.name").all_inner_texts()
            shares = [float(s.split()[0]) for s in rows.locator("td.share").all_inner_texts()]
            overlay = _image_bytes(page, page.get_attribute("#overlay img", "src"))
            label_map = _image_bytes(page, page.get_attribute("#labels a", "href"))
            status = page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

            page.fill("#words textarea", " , ")
            page.click("#segment")
            page.wait_for_selector(".toast-body.error")
            error = page.inner_text(".toast-body.error")
        finally:
            browser.close()

    assert names == ["sky", "road", "car"]
    assert shares == [round(100 * v, 1) for v in expected.shares.values()]
    assert np.array_equal(overlay[..., :3], np.asarray(expected.overlay()))  # legend drawn on the right
    assert np.array_equal(label_map, expected.labels.numpy())
    assert "tiny-vit · none · mode pixelclip · squash · 480×360 px" in status
    assert "the vocabulary is empty" in error
    assert outside == []
    if os.environ.get("LABELLESS_SCREENSHOT_DIR"):
        out = Path(os.environ["LABELLESS_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "demo.png", out / "demo.png")
