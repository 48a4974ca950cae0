"""The web page of `groundscope serve` in a real browser: upload an image, run detect and refer, see the boxes.

Needs Playwright's Python package and a system Chromium (Debian: `apt-get install chromium`); no
`playwright install` download is used. Skipped with the reason when either is missing. A screenshot of the page
with its boxes is saved under pytest's tmp_path and to test-artifacts/serve_page.png (gitignored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no system Chromium on PATH (Debian/Ubuntu: apt-get install chromium)", allow_module_level=True)

import groundscope as gs  # noqa: E402
from groundscope.serve.app import create_app  # noqa: E402
from groundscope.serve.background import serve_in_thread  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO / "examples" / "synth_shapes.png"
CLASSES = "pink cross, cyan star, blue diamond, yellow diamond"
PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#7FDBFF", "#B10DC9"]


@pytest.fixture(scope="module")
def server_url():
    with serve_in_thread(create_app(gs.load_detector("nano"))) as url:
        yield url


@pytest.fixture(scope="module")
def page(server_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(15_000)  # fail in seconds, not Playwright's default 30 s per step
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server_url + "/")
            page.wait_for_selector("#model:not(:text('connecting'))")
            page.js_errors = errors
            yield page
        finally:
            browser.close()


def run_and_wait(page) -> int:
    """Press Find and wait for the answer; returns the number of boxes the page reports."""
    page.click("#run")
    page.wait_for_selector('#stage[data-state="done"], #stage[data-state="error"]', timeout=60_000)
    assert page.get_attribute("#stage", "data-state") == "done", page.text_content("#status")
    return int(page.get_attribute("#stage", "data-count"))


def canvas_pixel(page, x: float, y: float) -> str:
    return page.evaluate(
        """([x, y]) => {
            const d = document.getElementById('canvas').getContext('2d').getImageData(x, y, 1, 1).data;
            return '#' + [d[0], d[1], d[2]].map(v => v.toString(16).padStart(2, '0')).join('').toUpperCase();
        }""",
        [x, y],
    )


def colour_distance(a: str, b: str) -> int:
    """Largest channel difference of two #RRGGBB colours."""
    return max(abs(int(a[i:i + 2], 16) - int(b[i:i + 2], 16)) for i in (1, 3, 5))


def test_detect_draws_boxes_and_lists_them(page, tmp_path):
    assert page.text_content("#model").startswith("nano")
    page.set_input_files("#file", str(SYNTH))
    page.wait_for_selector('#stage[data-state="ready"]')
    page.fill("#classes", CLASSES)
    n = run_and_wait(page)
    assert n >= 1
    assert page.locator("#results li").count() == n
    labels = page.locator("#results .label").all_text_contents()
    assert set(labels) <= {c.strip() for c in CLASSES.split(",")}
    record = page.evaluate("JSON.parse(document.getElementById('json').textContent)")
    assert record["task"] == "detect" and len(record["detections"]) == n
    # The canvas holds the image at full size with each box stroked in its class colour: sample the middle of
    # the first box's left edge.
    assert page.evaluate("document.getElementById('canvas').width") == record["width"]
    first = record["detections"][0]
    x, y = round(first["box"][0]), round((first["box"][1] + first["box"][3]) / 2)
    colour = PALETTE[first["class_id"] % len(PALETTE)]
    drawn = canvas_pixel(page, x, y)
    original = "#%02X%02X%02X" % Image.open(SYNTH).convert("RGB").getpixel((x, y))
    # Anti-aliasing blends the stroke's edge with the image a little; the pixel must be the box colour, not the
    # image's.
    assert colour_distance(drawn, colour) <= 48 < colour_distance(original, colour), (drawn, colour, original)

    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "serve_page.png")
    print(f"screenshot: {shot} and {artifacts / 'serve_page.png'}")
    assert not page.js_errors, page.js_errors


def test_refer_and_a_server_error_shown_on_the_page(page):
    page.click(".tasks span:text-is('Refer')")  # the visible segment, as a user clicks it
    assert page.is_hidden("#classes") and page.is_visible("#expression")
    page.fill("#expression", "the large pink cross")
    assert run_and_wait(page) == 1
    # An error from the server (a phrase missing from the caption) is shown, not swallowed.
    page.click(".tasks span:text-is('Ground')")
    page.fill("#caption", "a pink cross")
    page.fill("#phrases", "a green dog")
    page.click("#run")
    page.wait_for_selector('#stage[data-state="error"]')
    assert "'a green dog' does not occur" in page.text_content("#status")
    assert not page.js_errors, page.js_errors
