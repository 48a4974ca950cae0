"""The web page of `groundscope serve` in a real browser: upload an image, run detect and refer, see the boxes;
with a describer, drag a region on the image and read its description.

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
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str):
    """The web page at `url` in a new tab, once it has read /healthz; `page.js_errors` collects errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(15_000)  # fail in seconds, not Playwright's default 30 s per step
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("#model:not(:text('connecting'))")
    page.js_errors = errors
    return page


@pytest.fixture(scope="module")
def page(browser, server_url):
    page = open_page(browser, server_url)
    yield page
    page.close()


def save_screenshot(page, tmp_path, name: str) -> None:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / name)
    print(f"screenshot: {shot} and {artifacts / name}")


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

    save_screenshot(page, tmp_path, "serve_page.png")
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


def test_describe_a_region_dragged_on_the_image(browser, page, dam_dir, tmp_path):
    # Without a describer the Describe task is not offered.
    assert page.is_hidden("#describe-task")
    with serve_in_thread(create_app(gs.load_detector("nano"), describer=dam_dir)) as url:
        dpage = open_page(browser, url)
        assert dpage.is_visible("#describe-task") and str(dam_dir) in dpage.text_content("#model")
        dpage.set_input_files("#file", str(SYNTH))
        dpage.wait_for_selector('#stage[data-state="ready"]')
        dpage.click(".tasks span:text-is('Describe')")
        assert dpage.is_visible("#region-box") and dpage.is_hidden("#classes")
        # Drag from image pixel (139, 57) to (264, 182) (the big pink cross): CSS pixels via the canvas's scale.
        rect = dpage.evaluate("(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
                              " return [r.left, r.top, r.width / document.getElementById('canvas').width]; })()")
        left, top, scale = rect
        dpage.mouse.move(left + 139 * scale, top + 57 * scale)
        dpage.mouse.down()
        dpage.mouse.move(left + 200 * scale, top + 120 * scale, steps=4)
        dpage.mouse.move(left + 264 * scale, top + 182 * scale, steps=4)
        dpage.mouse.up()
        drawn = [int(v) for v in dpage.input_value("#region-box").split(",")]
        assert all(abs(a - b) <= 2 for a, b in zip(drawn, [139, 57, 264, 182])), drawn
        assert run_and_wait(dpage) == 1
        record = dpage.evaluate("JSON.parse(document.getElementById('json').textContent)")
        (region,) = record["regions"]
        assert region["box"] == drawn and region["error"] is None and region["text"]
        assert dpage.text_content("#results .region .text") == region["text"]
        # A bad box typed by hand is refused on the page, before any request.
        dpage.fill("#region-box", "30,40,10")
        dpage.click("#run")
        assert "x2 > x1" in dpage.text_content("#status")
        save_screenshot(dpage, tmp_path, "serve_describe_page.png")
        assert not dpage.js_errors, dpage.js_errors


def _far_from_box(shape, box, margin: int) -> "np.ndarray":
    """bool (H, W): pixels more than `margin` from the box's edges and out of its label's band at the top edge
    (the stroke and the label are drawn over the mask)."""
    import numpy as np

    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    x1, y1, x2, y2 = box
    near_edge = ((np.abs(xs - x1) <= margin) | (np.abs(xs - x2) <= margin)) & (ys >= y1 - margin) & (ys <= y2 + margin)
    near_edge |= ((np.abs(ys - y1) <= margin) | (np.abs(ys - y2) <= margin)) & (xs >= x1 - margin) & (xs <= x2 + margin)
    label_band = (ys >= y1 - 3 * margin) & (ys <= y1 + 3 * margin) & (xs >= x1 - margin)
    return ~(near_edge | label_band)


def test_masks_are_tinted_under_the_boxes(browser, tiny_sam_dir, tmp_path):
    """Masks ticked: the answer carries RLE masks, the page decodes them as pycocotools does and tints the
    inside of the mask in the box colour at alpha 0.4; a pixel outside keeps the image's colour."""
    import numpy as np

    from groundscope.masks import decode_one

    with serve_in_thread(create_app(gs.load_detector("nano"), segmenter=tiny_sam_dir)) as url:
        mpage = open_page(browser, url)
        assert mpage.is_visible("#masks")  # offered for detect ...
        mpage.set_input_files("#file", str(SYNTH))
        mpage.wait_for_selector('#stage[data-state="ready"]')
        mpage.click(".tasks span:text-is('Refer')")
        assert mpage.is_visible("#masks")  # ... and refer
        mpage.fill("#expression", "the large pink cross")
        mpage.check("#masks")
        assert run_and_wait(mpage) == 1
        assert "with masks" in mpage.text_content("#status")
        record = mpage.evaluate("JSON.parse(document.getElementById('json').textContent)")
        (det,) = record["detections"]
        mask = decode_one(det["mask"])
        assert mask.shape == (record["height"], record["width"])
        # The page's decoder, in Chromium, against pycocotools' pixels.
        decoded = mpage.evaluate("(r) => Array.from(GroundscopeRle.decode(r).data)", det["mask"])
        assert np.array_equal(np.array(decoded, bool).reshape(mask.shape), mask)

        clear = _far_from_box(mask.shape, det["box"], margin=8)
        inside, outside = np.argwhere(mask & clear), np.argwhere(~mask & clear)
        assert len(inside) and len(outside), "the tiny SAM's mask must leave pixels on both sides to compare"
        original = np.asarray(Image.open(SYNTH).convert("RGB")).astype(float)
        colour = np.array([int(PALETTE[det["class_id"] % len(PALETTE)][i:i + 2], 16) for i in (1, 3, 5)], float)
        rng = np.random.default_rng(0)
        for y, x in inside[rng.choice(len(inside), 5)].tolist():
            tinted = "#%02X%02X%02X" % tuple(int(round(v)) for v in original[y, x] * 0.6 + colour * 0.4)
            assert colour_distance(canvas_pixel(mpage, x, y), tinted) <= 3, (x, y, tinted)
        for y, x in outside[rng.choice(len(outside), 5)].tolist():
            untouched = "#%02X%02X%02X" % tuple(int(v) for v in original[y, x])
            assert colour_distance(canvas_pixel(mpage, x, y), untouched) <= 2, (x, y, untouched)
        save_screenshot(mpage, tmp_path, "serve_masks_page.png")

        # Unticked: no masks asked for, none drawn.
        y, x = inside[0].tolist()
        mpage.uncheck("#masks")
        assert run_and_wait(mpage) == 1
        record = mpage.evaluate("JSON.parse(document.getElementById('json').textContent)")
        assert "mask" not in record["detections"][0]
        untouched = "#%02X%02X%02X" % tuple(int(v) for v in original[y, x])
        assert colour_distance(canvas_pixel(mpage, x, y), untouched) <= 2
        assert not mpage.js_errors, mpage.js_errors


def test_page_asks_for_the_api_key_and_sends_it(browser, page, tmp_path):
    """A server with --api-key: the page shows the key field (/healthz says auth), a request without the key
    shows the server's 401, and with it a detection succeeds; the key is kept in sessionStorage for the tab."""
    key = "browser-test-key"
    with serve_in_thread(create_app(gs.load_detector("nano"), api_key=key)) as url:
        kpage = open_page(browser, url)
        assert kpage.is_visible("#api-key-field") and "needs an API key" in kpage.text_content("#status")
        kpage.set_input_files("#file", str(SYNTH))
        kpage.wait_for_selector('#stage[data-state="ready"]')
        kpage.fill("#classes", CLASSES)
        kpage.click("#run")
        kpage.wait_for_selector('#stage[data-state="error"]', timeout=60_000)
        assert "Authorization: Bearer" in kpage.text_content("#status")
        kpage.fill("#api-key", "not-the-key")
        kpage.click("#run")
        kpage.wait_for_selector('#stage[data-state="error"]', timeout=60_000)
        assert "not this server's" in kpage.text_content("#status")
        kpage.fill("#api-key", key)
        assert run_and_wait(kpage) >= 1
        assert kpage.evaluate("sessionStorage.getItem('groundscope.apiKey')") == key
        # Reloaded, the tab still has the key: no typing needed.
        kpage.reload()
        kpage.wait_for_selector("#model:not(:text('connecting'))")
        assert kpage.input_value("#api-key") == key
        kpage.set_input_files("#file", str(SYNTH))
        kpage.wait_for_selector('#stage[data-state="ready"]')
        kpage.fill("#classes", CLASSES)
        assert run_and_wait(kpage) >= 1
        save_screenshot(kpage, tmp_path, "serve_api_key_page.png")
        assert not kpage.js_errors, kpage.js_errors
    assert page.is_hidden("#api-key-field")  # the open server's page (no key) does not ask
