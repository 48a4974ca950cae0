"""`groundscope serve`: the API answers the CLI's JSON, refuses bad input with the right status and keeps
serving, batches queued requests into one forward pass, sheds load with 503 and drains on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import groundscope as gs  # noqa: E402
from groundscope.cli import app as cli_app  # noqa: E402
from groundscope.serve.app import create_app  # noqa: E402
from groundscope.serve.background import serve_in_thread  # noqa: E402
from groundscope.serve.batcher import DynamicBatcher, QueueFull  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO / "examples" / "synth_shapes.png"
CLASSES = "pink cross,cyan star,blue diamond,yellow diamond,red circle,green heart"


@pytest.fixture(scope="module")
def nano():
    return gs.load_detector("nano")


@pytest.fixture(scope="module")
def synth_bytes() -> bytes:
    return SYNTH.read_bytes()


def post(client, task: str, data: dict, image: bytes, name: str = str(SYNTH)):
    """POST one multipart request; `name` is the upload's file name, which the answer echoes as "image"."""
    return client.post(f"/v1/{task}", files={"image": (name, image, "image/png")}, data=data)


class Gated:
    """The detector behind a gate: `detect` records each call's image count and waits for `release`, so a test
    can hold the worker busy while it queues more requests."""

    def __init__(self, det):
        self.det = det
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    name = property(lambda self: self.det.name)
    device = property(lambda self: self.det.device)

    def detect(self, images, classes, **kw):
        self.calls.append(len(images))
        self.entered.set()
        assert self.release.wait(30), "test never released the gate"
        return self.det.detect(images, classes, **kw)


def wait_until(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# ---------------------------------------------------------------------------- answers = CLI files
@pytest.mark.parametrize(
    "task, cli_args, form",
    [
        ("detect", ["--classes", CLASSES], {"classes": CLASSES}),
        ("detect", ["--classes", CLASSES, "-t", "0.1", "-k", "5", "--nms", "0.5"],
         {"classes": CLASSES, "box_threshold": "0.1", "max_detections": "5", "nms": "0.5"}),
        ("ground",
         ["--caption", "a pink cross above a cyan star", "--phrase", "a pink cross", "--phrase", "a cyan star"],
         {"caption": "a pink cross above a cyan star", "phrase": ["a pink cross", "a cyan star"]}),
        ("ground", ["--caption", "a pink cross and a yellow diamond", "-t", "0.2"],
         {"caption": "a pink cross and a yellow diamond", "box_threshold": "0.2"}),
        ("refer", ["--expression", "the large pink cross", "--top-k", "2"],
         {"expression": "the large pink cross", "top_k": "2"}),
    ],
    ids=["detect-defaults", "detect-options", "ground-phrases", "ground-decoded", "refer"],
)
def test_answer_is_the_clis_json(nano, synth_bytes, tmp_path, monkeypatch, task, cli_args, form):
    from groundscope.models import loading

    # The CLI gets the module's loaded nano instead of reading the weights again (seconds per run on 2 CPUs).
    monkeypatch.setattr(loading, "load_detector", lambda name, *args, **kwargs: nano if name == "nano" else None)
    res = CliRunner().invoke(cli_app, [task, str(SYNTH), "--model", "nano", "--out", str(tmp_path), *cli_args])
    assert res.exit_code == 0, res.output
    cli_record = json.loads((tmp_path / "synth_shapes.json").read_text())
    assert cli_record["detections"], "pick prompts that find something, or the comparison proves little"
    with TestClient(create_app(nano)) as client:
        r = post(client, task, form, synth_bytes)
    assert r.status_code == 200, r.text
    assert r.json() == cli_record


# ---------------------------------------------------------------------------- describe
def test_describe_answer_is_the_clis_json(nano, dam_dir, synth_bytes, tmp_path):
    """Boxes, a mask upload and points in one request: the answer is `groundscope describe --json`'s object."""
    from PIL import Image

    from groundscope.describe import region_to_mask

    image = tmp_path / "synth.png"
    image.write_bytes(synth_bytes)
    mask = tmp_path / "m.png"
    Image.fromarray(region_to_mask((429, 601), box=(40, 30, 160, 120)).astype(np.uint8) * 255).save(mask)
    res = CliRunner().invoke(cli_app, ["describe", str(image), "-m", str(dam_dir), "--box", "200,100,320,220",
                                       "--mask", str(mask), "--points", "50,60;55,65", "--json"])
    assert res.exit_code == 0, res.output
    cli_record = json.loads(res.stdout.strip().splitlines()[-1])
    cli_record["image"] = str(image)  # the API echoes the upload's file name
    cli_record["regions"][1]["name"] = f"mask {mask}"
    with TestClient(create_app(nano, describer=dam_dir)) as client:
        r = client.post("/v1/describe", files=[("image", (str(image), synth_bytes, "image/png")),
                                               ("mask", (str(mask), mask.read_bytes(), "image/png"))],
                        data={"box": "200,100,320,220", "points": "50,60;55,65"})
        assert r.status_code == 200, r.text
        assert r.json() == cli_record
        assert client.get("/healthz").json()["describer"] == str(dam_dir)
        # the expression form: the served detector's top-1 box is described
        r = client.post("/v1/describe", files={"image": ("s.png", synth_bytes)}, data={"expression": "pink cross"})
        (region,) = r.json()["regions"]
        assert r.status_code == 200 and region["expression"] == "pink cross" and region["text"]
        assert region["box"] == [round(v, 2) for v in nano.refer(image, "pink cross").xyxy[0].tolist()]


def test_describe_bad_input_is_400_and_no_describer_is_501(nano, dam_dir, synth_bytes):
    with TestClient(create_app(nano)) as client:
        r = client.post("/v1/describe", files={"image": ("s.png", synth_bytes)}, data={"box": "1,2,30,40"})
        assert r.status_code == 501 and "--describer dam-nano" in r.json()["error"]
    with TestClient(create_app(nano, describer=dam_dir)) as client:
        def describe(data, files=()):
            return client.post("/v1/describe", files=[("image", ("s.png", synth_bytes, "image/png")), *files],
                               data=data)

        r = describe({"box": "30,40,10"})
        assert r.status_code == 400 and "form field 'box'" in r.json()["error"]
        r = describe({})
        assert r.status_code == 400 and "no region given" in r.json()["error"]
        r = describe({"box": "1,2,30,40", "expression": "a cross"})
        assert r.status_code == 400 and "not both" in r.json()["error"]
        r = describe({}, [("mask", ("m.png", b"not a png", "image/png"))])
        assert r.status_code == 400 and "cannot read mask 'm.png'" in r.json()["error"]
        # one region outside the image: the other is still described, the bad one carries its error
        r = describe({"box": ["10,10,50,50", "900,900,990,990"]})
        assert r.status_code == 200
        good, bad = r.json()["regions"]
        assert good["error"] is None and good["text"] and "box 900,900,990,990" in bad["error"]
        r = describe({"box": "900,900,990,990"})  # nothing describable: the request is at fault
        assert r.status_code == 400 and "outside" in r.json()["error"]
        assert client.app.state.batcher.incoming == 0


# ---------------------------------------------------------------------------- bad input
def test_oversized_upload_is_413_and_the_server_keeps_serving(nano, synth_bytes):
    app = create_app(nano, max_upload_mb=0.05)  # 52 KB
    with TestClient(app) as client:
        # Far over: refused by the middleware (Content-Length) before the body is parsed.
        r = post(client, "detect", {"classes": "a"}, os.urandom(400_000), "huge.png")
        assert r.status_code == 413 and "0.05 MB" in r.json()["error"] and "--max-upload-mb" in r.json()["error"]
        # Streamed without a Content-Length: counted as it arrives.
        req = client.build_request("POST", "/v1/detect", files={"image": ("huge.png", os.urandom(400_000))},
                                   data={"classes": "a"})
        body = req.read()
        chunks = (body[i:i + 16_384] for i in range(0, len(body), 16_384))
        r = client.post("/v1/detect", content=chunks, headers={"content-type": req.headers["content-type"]})
        assert r.status_code == 413, r.text
        # Just over the image limit but inside the form overhead: the route itself names the file and its size.
        r = post(client, "detect", {"classes": "a"}, os.urandom(60_000), "slightly.png")
        assert r.status_code == 413 and "'slightly.png' is 0.1 MB" in r.json()["error"]
        assert client.get("/healthz").status_code == 200
        assert app.state.batcher.incoming == 0


def test_corrupt_or_non_image_is_400_naming_it(nano, synth_bytes):
    with TestClient(create_app(nano)) as client:
        r = post(client, "detect", {"classes": "cat"}, b"just some notes\n", "notes.txt")
        assert r.status_code == 400
        err = r.json()["error"]
        assert "'notes.txt'" in err and "not an image" in err and "form field 'image'" in err
        r = post(client, "detect", {"classes": "cat"}, synth_bytes[: len(synth_bytes) // 3], "cut.png")
        assert r.status_code == 400 and "'cut.png'" in r.json()["error"] and "truncated" in r.json()["error"]
        r = post(client, "detect", {"classes": "cat"}, b"", "empty.png")
        assert r.status_code == 400 and "empty" in r.json()["error"]
        assert post(client, "detect", {"classes": "pink cross"}, synth_bytes).status_code == 200
        assert client.app.state.batcher.incoming == 0


def test_bad_prompts_are_400_or_422_naming_the_field(nano, synth_bytes):
    with TestClient(create_app(nano)) as client:
        r = post(client, "detect", {"classes": " , ,"}, synth_bytes)
        assert r.status_code == 400 and "form field 'classes'" in r.json()["error"]
        r = post(client, "detect", {}, synth_bytes)
        assert r.status_code == 422 and "form field 'classes': Field required" in r.json()["error"]
        r = post(client, "detect", {"classes": "cat", "box_threshold": "1.5"}, synth_bytes)
        assert r.status_code == 422 and "box_threshold" in r.json()["error"]
        r = post(client, "ground", {"caption": "a pink cross", "phrase": "a green dog"}, synth_bytes)
        assert r.status_code == 400 and "'a green dog' does not occur" in r.json()["error"]
        r = post(client, "refer", {"expression": " . "}, synth_bytes)
        assert r.status_code == 400 and "expression" in r.json()["error"]
        # Over the model's 256-token text limit: caught in the worker (PromptError), still a 400.
        r = post(client, "detect", {"classes": " ".join(["pink"] * 300)}, synth_bytes)
        assert r.status_code == 400 and "token" in r.json()["error"]
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.app.state.batcher.incoming == 0  # every refused request withdrew its announcement


# ---------------------------------------------------------------------------- concurrency and batching
@pytest.mark.parametrize("streams", [1, 2])
def test_24_concurrent_requests_on_a_real_server(nano, synth_bytes, streams):
    """Two streams run the one model from two threads at once: the answers must not change."""
    with serve_in_thread(create_app(nano, max_batch=4, streams=streams)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            single = post(client, "detect", {"classes": CLASSES}, synth_bytes).json()

        def one(_):
            with httpx.Client(base_url=url, timeout=60) as c:
                return post(c, "detect", {"classes": CLASSES}, synth_bytes)

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(one, range(24)))
        assert [r.status_code for r in answers] == [200] * 24
        assert all(r.json() == single for r in answers)
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 200 and health.json()["requests_done"] == 25
        # 24 requests arriving together cannot all have run alone: queued ones shared forward passes.
        assert health.json()["batches_run"] < 24


def test_queued_requests_run_as_one_forward_call(nano, synth_bytes, monkeypatch):
    from groundscope.models import staged

    backbone_calls = []
    encode_images = staged.encode_images
    monkeypatch.setattr(staged, "encode_images", lambda m, px: backbone_calls.append(len(px)) or encode_images(m, px))
    gated = Gated(nano)
    app = create_app(gated, max_batch=4, max_wait_ms=1, streams=1)
    with serve_in_thread(app) as url, ThreadPoolExecutor(5) as pool:
        def one(i):
            with httpx.Client(base_url=url, timeout=60) as c:
                return post(c, "detect", {"classes": CLASSES}, synth_bytes, f"img{i}.png")

        first = pool.submit(one, 0)
        assert gated.entered.wait(10)  # the worker holds request 0 ...
        rest = [pool.submit(one, i) for i in range(1, 5)]
        wait_until(lambda: app.state.batcher.pending == 4, what="4 queued requests")  # ... while 4 queue up
        gated.release.set()
        answers = [first.result(), *(f.result() for f in rest)]
    assert gated.calls == [1, 4]  # one detector call for the 4 queued requests
    assert backbone_calls == [1, 4]  # and one backbone forward pass for their 4 images
    records = [a.json() for a in answers]
    assert all(a.status_code == 200 for a in answers)
    for i, rec in enumerate(records):  # batched answers equal the lone one
        assert rec["image"] == f"img{i}.png" and rec["detections"] == records[0]["detections"]


def test_request_is_announced_while_its_body_is_still_arriving(nano, synth_bytes):
    """A forming batch may wait for a request from its first byte (serve/announce.py), not only once parsed."""
    app = create_app(nano)
    req = httpx.Client().build_request("POST", "http://x/v1/detect", files={"image": ("a.png", synth_bytes)},
                                       data={"classes": "pink cross"})
    body, ctype = req.read(), req.headers["content-type"]
    half_sent, finish = threading.Event(), threading.Event()

    def slow_body():
        yield body[: len(body) // 2]
        half_sent.set()
        assert finish.wait(30)
        yield body[len(body) // 2:]

    with serve_in_thread(app) as url, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{url}/v1/detect", content=slow_body(),
                             headers={"content-type": ctype}, timeout=60)
        assert half_sent.wait(10)
        wait_until(lambda: app.state.batcher.incoming == 1, what="the announcement of the half-sent request")
        finish.set()
        assert answer.result().status_code == 200
        assert app.state.batcher.incoming == 0  # consumed by its submit


def test_in_fresh_thread_returns_or_reraises():
    from groundscope.serve.threads import in_fresh_thread

    names = []
    assert in_fresh_thread(lambda x, y=0: names.append(threading.current_thread().name) or x + y, 2, y=3) == 5
    assert names == ["groundscope-load"]
    with pytest.raises(SystemExit):  # a CLI's exit passes through unchanged
        in_fresh_thread(sys.exit, 2)


def test_full_queue_answers_503_with_retry_after(nano, synth_bytes):
    gated = Gated(nano)
    app = create_app(gated, max_batch=1, queue_size=1)
    with serve_in_thread(app) as url, ThreadPoolExecutor(2) as pool:
        def one():
            with httpx.Client(base_url=url, timeout=60) as c:
                return post(c, "detect", {"classes": "pink cross"}, synth_bytes)

        running = pool.submit(one)
        assert gated.entered.wait(10)
        queued = pool.submit(one)
        wait_until(lambda: app.state.batcher.pending == 1, what="the queued request")
        r = httpx.post(f"{url}/v1/detect", files={"image": ("x.png", synth_bytes)}, data={"classes": "pink cross"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
        assert httpx.get(f"{url}/healthz").status_code == 200  # the event loop is free while the model works
        gated.release.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200


def test_batcher_groups_by_key_and_isolates_a_failing_request():
    seen: list[list] = []

    def run(key, items):
        seen.append([key, *items])
        if "bad" in items:
            raise ValueError("bad item")
        return [f"{key}:{it}" for it in items]

    b = DynamicBatcher(run, max_batch=3, max_wait_s=0.05, queue_size=5)
    futures = [b.submit(k, it) for k, it in [("a", 1), ("b", 2), ("a", 3), ("a", "bad"), ("a", 5)]]
    with pytest.raises(QueueFull):
        b.submit("a", 6)
    b.start()
    b.close(timeout=10)  # drains everything queued
    assert [f.result() for f in futures[:3]] == ["a:1", "b:2", "a:3"]
    assert isinstance(futures[3].exception(), ValueError) and futures[4].result() == "a:5"
    # "a" jobs batched past the "b" job (which kept its place at the head of the next batch); the failing batch
    # was rerun one job at a time.
    assert seen == [["a", 1, 3, "bad"], ["a", 1], ["a", 3], ["a", "bad"], ["b", 2], ["a", 5]]


def test_batcher_waits_only_for_announced_requests():
    seen: list[list] = []
    b = DynamicBatcher(lambda key, items: seen.append(items) or items, max_batch=4, max_wait_s=2.0).start()
    try:
        t = time.monotonic()
        assert b.submit("a", "lone").result(timeout=5) == "lone"
        assert time.monotonic() - t < 1.0  # nothing announced: it did not sit out the 2 s wait
        b.announce()
        b.announce()
        first = b.submit("a", 1, announced=True)
        time.sleep(0.1)  # the worker holds job 1 and waits for the second announced request ...
        second = b.submit("a", 2, announced=True)
        assert (first.result(timeout=5), second.result(timeout=5)) == (1, 2)
        assert seen == [["lone"], [1, 2]]  # ... which joined its batch
        b.announce()
        b.withdraw()  # an announced request that failed to decode releases the wait
        t = time.monotonic()
        assert b.submit("a", 3).result(timeout=5) == 3 and time.monotonic() - t < 1.0
    finally:
        b.close(timeout=10)


def test_batcher_wait_restarts_when_a_request_joins():
    """A burst whose requests arrive one after another (images decoding in turn on a busy CPU) meets in one batch
    even when the burst lasts longer than max_wait_s, as long as each gap is shorter; a longer gap cuts it."""
    seen: list[list] = []
    b = DynamicBatcher(lambda key, items: seen.append(items) or items, max_batch=4, max_wait_s=0.5).start()
    try:
        for _ in range(4):
            b.announce()
        futures = [b.submit("a", 0, announced=True)]
        for i in (1, 2):  # at +0.3 s and +0.6 s: past a fixed 0.5 s window, each within 0.5 s of the previous
            time.sleep(0.3)
            futures.append(b.submit("a", i, announced=True))
        time.sleep(1.2)  # the fourth announced request comes too late: the batch of three has left
        futures.append(b.submit("a", 3, announced=True))
        assert [f.result(timeout=5) for f in futures] == [0, 1, 2, 3]
        assert seen == [[0, 1, 2], [3]]
    finally:
        b.close(timeout=10)


def test_batcher_streams_share_the_threads_and_split_queued_work():
    """Two streams on 2 threads: a lone batch gets both threads and a second batch waits for them (never more
    threads in flight than the CPU has); 4 requests arriving together run as two concurrent batches of 2 on one
    thread each, set in the thread that runs them."""
    lock = threading.Lock()
    in_flight: list[int] = []  # threads of the batches running now
    most_threads, most_batches = [0], [0]
    thread_setting: dict[str, int] = {}  # worker thread -> what set_threads told it
    seen: list[tuple[int, list]] = []
    gate = threading.Event()

    def run(key, items):
        n = thread_setting.get(threading.current_thread().name, 2)
        with lock:
            in_flight.append(n)
            seen.append((n, list(items)))
            most_threads[0] = max(most_threads[0], sum(in_flight))
            most_batches[0] = max(most_batches[0], len(in_flight))
        if items == ["held"]:
            assert gate.wait(10)
        time.sleep(0.1)
        with lock:
            in_flight.remove(n)
        return items

    b = DynamicBatcher(run, max_batch=4, max_wait_s=1.0, streams=2, threads=2,
                       set_threads=lambda n: thread_setting.__setitem__(threading.current_thread().name, n)).start()
    try:
        held = b.submit("a", "held")
        wait_until(lambda: seen, what="the held batch")
        waiting = b.submit("a", "next")
        time.sleep(0.3)
        assert b.pending == 1  # both threads are taken by the lone batch: the second stream does not start
        gate.set()
        assert held.result(timeout=5) == "held" and waiting.result(timeout=5) == "next"
        assert [n for n, _ in seen] == [2, 2]  # each ran alone, so with every thread

        seen.clear()
        for _ in range(4):
            b.announce()
        futures = [b.submit("a", i, announced=True) for i in range(4)]
        assert [f.result(timeout=5) for f in futures] == [0, 1, 2, 3]
        assert sorted(items for _, items in seen) == [[0, 1], [2, 3]]  # split in order, one batch per stream
        assert [n for n, _ in seen] == [1, 1] and most_batches[0] == 2  # concurrently, one thread each
        assert most_threads[0] == 2
        assert b.batches_run == 4 and b.jobs_done == 6
    finally:
        b.close(timeout=10)


def test_a_closed_streams_batcher_hands_the_process_its_threads_back():
    """torch.set_num_threads in a stream's thread also sets what every later thread starts with; a server with
    streams > 1 that has stopped must not leave later servers (and any new thread) on one stream's share."""
    import torch

    def fresh_thread_count() -> int:
        out: list[int] = []
        t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
        t.start()
        t.join()
        return out[0]

    own = torch.get_num_threads()
    torch.set_num_threads(2)  # what this process (and every thread it starts) runs with, whatever the suite set
    before = 2
    shares: list[int] = []

    def run(key, items):
        shares.append(torch.get_num_threads())
        time.sleep(0.3)  # long enough that the queued items are split between both streams
        return items

    b = DynamicBatcher(run, max_batch=1, max_wait_s=0.0, streams=2, threads=before,
                       set_threads=torch.set_num_threads).start()
    try:
        futures = [b.submit("k", i) for i in range(4)]  # queued together: the two streams take one share each
        assert [f.result(timeout=10) for f in futures] == list(range(4))
    finally:
        b.close(timeout=10)
    after = fresh_thread_count()
    torch.set_num_threads(own)
    assert min(shares) < before  # the streams did run on shares
    assert after == before


# ---------------------------------------------------------------------------- masks
@pytest.fixture(scope="module")
def tiny_sam(tiny_sam_dir):
    from groundscope.models.segmenter import load_segmenter

    return load_segmenter(tiny_sam_dir)


def _with_masks(dets: list[dict], also: bool) -> list[dict]:
    return [d if also else {k: v for k, v in d.items() if k != "mask"} for d in dets]


@pytest.mark.parametrize(
    "task, form, api",
    [
        ("detect", {"classes": CLASSES},
         lambda det, im, **kw: det.detect(im, CLASSES.split(","), box_threshold=0.3, max_detections=300, **kw)),
        ("ground", {"caption": "a pink cross above a cyan star", "phrase": ["a pink cross", "a cyan star"]},
         lambda det, im, **kw: det.ground(im, "a pink cross above a cyan star", ["a pink cross", "a cyan star"],
                                          box_threshold=0.3, text_threshold=0.25, max_detections=100, **kw)),
        ("refer", {"expression": "the large pink cross", "top_k": "2"},
         lambda det, im, **kw: det.refer(im, "the large pink cross", top_k=2, **kw)),
    ],
    ids=["detect", "ground", "refer"],
)
def test_masks_answer_is_the_python_apis(nano, tiny_sam, synth_bytes, task, form, api):
    """masks=true: the record `result_record` makes of ``det.<task>(..., masks=True, segmenter=seg)`` (the
    CLI's defaults spelled out), RLE strings included; the same request without masks has the same boxes."""
    from groundscope.answers import result_record
    from groundscope.images import load_image

    image = load_image(SYNTH)
    expected = result_record(str(SYNTH), image.width, image.height, nano.name, task,
                             api(nano, image, masks=True, segmenter=tiny_sam))
    assert expected["detections"], "pick prompts that find something, or the comparison proves little"
    with TestClient(create_app(nano, segmenter=tiny_sam)) as client:
        with_masks = post(client, task, {**form, "masks": "true"}, synth_bytes)
        plain = post(client, task, form, synth_bytes)
        health = client.get("/healthz").json()
    assert with_masks.status_code == 200, with_masks.text
    assert with_masks.json() == expected
    assert all(d["mask"]["size"] == [image.height, image.width] for d in expected["detections"])
    assert plain.status_code == 200 and "mask" not in plain.json()["detections"][0]
    assert plain.json()["detections"] == _with_masks(expected["detections"], also=False)
    assert health["segmenter"] == tiny_sam.name and health["segmenter_error"] is None


def test_masks_answer_is_the_clis_detect_masks(nano, tiny_sam_dir, synth_bytes, tmp_path, monkeypatch):
    """The served answer equals what ``groundscope detect --masks --segmenter DIR`` writes, the segmenter given
    to the server by name (loaded at create_app)."""
    from groundscope.models import loading

    monkeypatch.setattr(loading, "load_detector", lambda name, *args, **kwargs: nano if name == "nano" else None)
    res = CliRunner().invoke(cli_app, ["detect", str(SYNTH), "--model", "nano", "--out", str(tmp_path),
                                       "--classes", CLASSES, "--masks", "--segmenter", str(tiny_sam_dir)])
    assert res.exit_code == 0, res.output
    cli_record = json.loads((tmp_path / "synth_shapes.json").read_text())
    assert cli_record["detections"] and all("mask" in d for d in cli_record["detections"])
    with TestClient(create_app(nano, segmenter=tiny_sam_dir)) as client:
        r = post(client, "detect", {"classes": CLASSES, "masks": "true"}, synth_bytes)
    assert r.status_code == 200, r.text
    assert r.json() == cli_record


def test_masks_requests_batch_only_with_masks_requests(nano, tiny_sam, synth_bytes):
    gated = Gated(nano)
    app = create_app(gated, segmenter=tiny_sam, max_batch=4, max_wait_ms=1, streams=1)
    with serve_in_thread(app) as url, ThreadPoolExecutor(5) as pool:
        def one(masks: bool):
            with httpx.Client(base_url=url, timeout=60) as c:
                return masks, post(c, "detect", {"classes": "pink cross", "masks": str(masks).lower()}, synth_bytes)

        first = pool.submit(one, False)
        assert gated.entered.wait(10)  # the worker holds the first request while 2 + 2 queue up
        rest = [pool.submit(one, m) for m in (True, False, True, False)]
        wait_until(lambda: app.state.batcher.pending == 4, what="4 queued requests")
        gated.release.set()
        answers = [first.result(), *(f.result() for f in rest)]
    assert gated.calls[0] == 1 and sorted(gated.calls[1:]) == [2, 2]  # masks and plain requests never mixed
    for masks, r in answers:
        assert r.status_code == 200, r.text
        assert all(("mask" in d) == masks for d in r.json()["detections"])


def test_default_segmenter_loads_once_on_the_first_masks_request(nano, tiny_sam, synth_bytes, monkeypatch):
    """No segmenter configured: concurrent first masks requests share one load of `default_segmenter(nano)`."""
    from groundscope.models import segmenter as segmenter_module

    loads = []

    def slow_load(name, device="cpu", **kwargs):
        loads.append((name, device))
        time.sleep(0.3)  # long enough for the other requests to arrive while the first one loads
        return tiny_sam

    monkeypatch.setattr(segmenter_module, "load_segmenter", slow_load)
    with serve_in_thread(create_app(nano)) as url:
        assert httpx.get(f"{url}/healthz").json()["segmenter"] is None  # nothing loaded before it is needed

        def one(_):
            with httpx.Client(base_url=url, timeout=60) as c:
                return post(c, "refer", {"expression": "pink cross", "masks": "true"}, synth_bytes)

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(one, range(3)))
        assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
        assert all("mask" in r.json()["detections"][0] for r in answers)
        assert loads == [("sam-nano", "cpu")]
        assert httpx.get(f"{url}/healthz").json()["segmenter"] == tiny_sam.name


def test_a_segmenter_that_cannot_load_is_503_and_boxes_keep_flowing(nano, synth_bytes, monkeypatch):
    from groundscope.models import segmenter as segmenter_module
    from groundscope.models.hub import ModelLoadError

    loads = []
    message = "segmenter 'sam-nano' is not in the cache and HF_HUB_OFFLINE=1; download it once online"

    def failing_load(name, **kwargs):
        loads.append(name)
        raise ModelLoadError(message)

    monkeypatch.setattr(segmenter_module, "load_segmenter", failing_load)
    with TestClient(create_app(nano)) as client:
        r = post(client, "detect", {"classes": "pink cross", "masks": "true"}, synth_bytes)
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert message in err and "form field 'masks'" in err and "--segmenter" in err
        assert post(client, "detect", {"classes": "pink cross"}, synth_bytes).status_code == 200
        r = post(client, "ground", {"caption": "a pink cross", "masks": "1"}, synth_bytes)
        assert r.status_code == 503 and message in r.json()["error"]
        assert loads == ["sam-nano"]  # the failure is remembered, not retried per request
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["segmenter"] is None and message in health["segmenter_error"]
        assert client.app.state.batcher.incoming == 0  # the refused requests withdrew their announcements


def test_masks_field_validation_and_where_it_exists(nano, synth_bytes, tmp_path):
    with TestClient(create_app(nano)) as client:
        r = post(client, "detect", {"classes": "pink cross", "masks": "maybe"}, synth_bytes)
        assert r.status_code == 422 and "form field 'masks'" in r.json()["error"]
        spec = client.get("/openapi.json").json()
    fields = {}
    for path in ("/v1/detect", "/v1/ground", "/v1/refer", "/v1/describe"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        fields[path] = set(spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])
    assert all("masks" in fields[p] for p in ("/v1/detect", "/v1/ground", "/v1/refer"))
    assert "masks" not in fields["/v1/describe"]  # describe segments through its describer, not this field
    # A segmenter named at start that does not load fails then, naming the folder.
    from groundscope.models.hub import ModelLoadError

    with pytest.raises(ModelLoadError, match="config.json"):
        create_app(nano, segmenter=tmp_path)


def test_serve_with_a_bad_segmenter_exits_2_before_binding(nano, tmp_path, monkeypatch):
    import groundscope.cli.serve as serve_cli

    monkeypatch.setattr(serve_cli, "load_model", lambda *args: nano)
    res = CliRunner().invoke(cli_app, ["serve", "--model", "nano", "--segmenter", str(tmp_path), "--port", "0"])
    assert res.exit_code == 2, res.output
    assert "config.json" in res.output and "Uvicorn running" not in res.output


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed; the browser test covers the decoder in Chromium")
def test_page_rle_decoder_matches_pycocotools():
    """static/rle.js (the page's decoder) against masks pycocotools encoded, and counts past 32 bits."""
    from pycocotools import mask as coco_mask

    from groundscope import masks as mask_ops

    rng = np.random.default_rng(0)
    big = np.zeros((300, 900), bool)
    big[10:290, 100:800] = True  # long runs: multi-chunk counts and negative deltas
    big[150, 3] = True
    arrays = [rng.random((37, 53)) > 0.5, np.zeros((5, 7), bool), np.ones((4, 9), bool), big]
    rles = [mask_ops.encode(a)[0] for a in arrays]
    counts = [0, 3_000_000_000, 1, 2**31 + 7, 5, 1000]  # what a 1 x 3e9 mask would hold; never allocated
    wide = coco_mask.frPyObjects({"size": [1, sum(counts)], "counts": counts}, 1, sum(counts))
    script = (
        "const rle = require(process.argv[1]);"
        "const inp = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify({masks: inp.masks.map(r => Array.from(rle.decode(r).data).join('')),"
        " counts: rle.decodeCounts(inp.counts)}));"
    )
    res = subprocess.run([NODE, "-e", script, str(REPO / "groundscope" / "serve" / "static" / "rle.js")],
                         input=json.dumps({"masks": rles, "counts": wide["counts"].decode()}),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["counts"] == counts
    for a, decoded in zip(arrays, out["masks"]):  # row-major 0/1 strings
        assert decoded == "".join(a.reshape(-1).astype(int).astype(str))


# ---------------------------------------------------------------------------- web page, docs, shutdown
def test_web_page_static_files_and_docs(nano):
    with TestClient(create_app(nano)) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="canvas"' in page.text and "/static/app.js" in page.text
        assert "http" not in re.sub(r'href="/docs"|xmlns="[^"]*"', "", page.text)  # nothing from the network
        assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
        spec = client.get("/openapi.json").json()
        assert {"/v1/detect", "/v1/ground", "/v1/refer", "/healthz"} <= set(spec["paths"])
        assert client.get("/healthz").json()["model"] == "nano"


def test_sigterm_finishes_requests_in_flight_then_exits(synth_bytes):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from groundscope.cli import main; main()", "serve", "--model", "nano", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
    )
    try:
        url = None
        for line in proc.stdout:  # uvicorn names the port it bound once the model is loaded
            m = re.search(r"Uvicorn running on (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the server never reported its address"
        # 16 requests: more than two streams' batches of 4 hold, so some are still queued when SIGTERM arrives.
        with ThreadPoolExecutor(16) as pool:
            def one(_):
                with httpx.Client(base_url=url, timeout=60) as c:
                    return post(c, "detect", {"classes": CLASSES}, synth_bytes)

            futures = [pool.submit(one, i) for i in range(16)]
            wait_until(lambda: httpx.get(f"{url}/healthz").json()["queued"] > 0, what="queued requests")
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200] * 16
        rest = proc.communicate(timeout=60)[0]
        assert "Application shutdown complete" in rest
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------------------- masks
def test_masks_answer_equals_detect_with_masks_and_a_missing_segmenter_is_503(nano, synth_bytes, tiny_sam_dir,
                                                                             monkeypatch):
    """masks=true: the answer's detections carry the masks `detect(..., masks=True)` gives (COCO RLE); requests
    without masks in the same server are unchanged; a segmenter that cannot load is a 503 naming it, and box
    requests keep working."""
    from groundscope.answers import result_record
    from groundscope.images import load_image
    from groundscope.models import segmenter as segmenter_mod

    seg = segmenter_mod.load_segmenter(tiny_sam_dir)
    want = nano.detect(load_image(SYNTH), CLASSES.split(","), box_threshold=0.3, masks=True, segmenter=seg)
    assert len(want), "the prompt should find boxes"
    image = load_image(SYNTH)
    with TestClient(create_app(nano, segmenter=seg)) as client:
        r = post(client, "detect", {"classes": CLASSES, "masks": "true"}, synth_bytes)
        plain = post(client, "detect", {"classes": CLASSES}, synth_bytes)
        health = client.get("/healthz").json()
        bad = post(client, "detect", {"classes": CLASSES, "masks": "maybe"}, synth_bytes)
    assert r.status_code == 200, r.text
    assert r.json() == result_record(str(SYNTH), image.width, image.height, nano.name, "detect", want)
    assert all("mask" in d for d in r.json()["detections"])
    assert plain.status_code == 200 and all("mask" not in d for d in plain.json()["detections"])
    assert health["segmenter"] == seg.name
    assert bad.status_code == 422

    monkeypatch.setattr(segmenter_mod, "default_segmenter", lambda name: str(tiny_sam_dir.parent / "no-such-sam"))
    with TestClient(create_app(nano)) as client:
        r = post(client, "refer", {"expression": "the large pink cross", "masks": "true"}, synth_bytes)
        ok = post(client, "refer", {"expression": "the large pink cross"}, synth_bytes)
    assert r.status_code == 503 and "no-such-sam" in r.json()["error"] and "--segmenter" in r.json()["error"]
    assert ok.status_code == 200


# ---------------------------------------------------------------------------- security: API key, CORS, bind
KEY = "s3cret-key"


def test_api_key_guards_every_v1_route_and_leaves_health_and_page_open(nano, synth_bytes, monkeypatch):
    from groundscope.serve import auth

    compared = []
    real_compare = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real_compare(a, b))
    with TestClient(create_app(nano, api_key=KEY)) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["auth"] is True
        assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
        for task, form in [("detect", {"classes": "pink cross"}), ("ground", {"caption": "a pink cross"}),
                           ("refer", {"expression": "the pink cross"}), ("describe", {"box": "1,1,9,9"})]:
            r = post(client, task, form, synth_bytes)
            assert r.status_code == 401, (task, r.text)
            assert "Authorization: Bearer" in r.json()["error"] and "--api-key" in r.json()["error"]
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = client.post("/v1/detect", files={"image": ("s.png", synth_bytes)}, data={"classes": "pink cross"},
                        headers={"Authorization": "Bearer wrong-key"})
        assert r.status_code == 401 and "not this server's" in r.json()["error"]
        r = client.post("/v1/detect", files={"image": ("s.png", synth_bytes)}, data={"classes": "pink cross"},
                        headers={"Authorization": f"Basic {KEY}"})
        assert r.status_code == 401 and "must be 'Bearer <key>'" in r.json()["error"]
        assert compared == [(b"wrong-key", KEY.encode())]  # the one well-formed guess, compared in constant time
        r = client.post("/v1/detect", files={"image": ("s.png", synth_bytes)}, data={"classes": "pink cross"},
                        headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["detections"], r.text
        assert client.app.state.batcher.incoming == 0  # refused requests never reached the batcher
    with TestClient(create_app(nano)) as client:  # without a key: open, as before
        assert client.get("/healthz").json()["auth"] is False
        assert post(client, "detect", {"classes": "pink cross"}, synth_bytes).status_code == 200
    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(nano, api_key=" ")


def test_cors_is_closed_unless_origins_are_named(nano, synth_bytes):
    preflight = {"Origin": "https://tools.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    with TestClient(create_app(nano)) as client:
        r = client.options("/v1/detect", headers=preflight)
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        r = client.post("/v1/detect", files={"image": ("s.png", synth_bytes)}, data={"classes": "pink cross"},
                        headers={"Origin": "https://tools.example.com"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the browser hides it
    with TestClient(create_app(nano, api_key=KEY, cors_origins=["https://tools.example.com"])) as client:
        r = client.options("/v1/detect", headers=preflight)  # a preflight carries no key and must still pass
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "https://tools.example.com"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = client.options("/v1/detect", headers={**preflight, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = client.post("/v1/detect", files={"image": ("s.png", synth_bytes)}, data={"classes": "pink cross"},
                        headers={"Origin": "https://tools.example.com", "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://tools.example.com"


def _serve_cli(monkeypatch, nano, args, env=None):
    """`groundscope serve ARGS` with uvicorn.run caught: (the CLI result, the app it would have served)."""
    import uvicorn

    import groundscope.cli.serve as serve_cli

    served = {}
    monkeypatch.setattr(serve_cli, "load_model", lambda *a: nano)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.delenv("GROUNDSCOPE_API_KEY", raising=False)
    res = CliRunner().invoke(cli_app, ["serve", "--model", "nano", *args], env=env)
    return res, served.get("app")


def test_serve_api_key_from_the_environment_and_the_open_bind_warning(nano, synth_bytes, monkeypatch):
    res, app = _serve_cli(monkeypatch, nano, ["--host", "0.0.0.0"], env={"GROUNDSCOPE_API_KEY": KEY})
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output and "API key required" in res.output
    with TestClient(app) as client:
        assert post(client, "detect", {"classes": "pink cross"}, synth_bytes).status_code == 401
        r = client.post("/v1/detect", files={"image": ("s.png", synth_bytes)}, data={"classes": "pink cross"},
                        headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200, r.text

    res, app = _serve_cli(monkeypatch, nano, ["--host", "0.0.0.0", "--port", "8123"])
    assert res.exit_code == 0, res.output
    (warning,) = [line for line in res.output.splitlines() if "warning" in line]  # one line, however wide
    assert "0.0.0.0 without an API key" in warning and "--api-key" in warning and "8123" in warning
    with TestClient(app) as client:
        assert post(client, "detect", {"classes": "pink cross"}, synth_bytes).status_code == 200

    for host in ["127.0.0.1", "localhost", "::1"]:  # loopback: only this machine can connect, no warning
        res, _ = _serve_cli(monkeypatch, nano, ["--host", host])
        assert res.exit_code == 0 and "warning" not in res.output, (host, res.output)
    res, app = _serve_cli(monkeypatch, nano, ["--api-key", ""])
    assert res.exit_code == 2 and "API key is empty" in res.output and app is None


# ---------------------------------------------------------------------------- refusals reach urllib
def _multipart(size: int, filler: bytes = b"\0") -> tuple[bytes, str]:
    """A detect form whose image is `size` bytes: (body, content type)."""
    boundary = "groundscopeboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="classes"\r\n\r\ncat\r\n--{boundary}\r\n'
            f'Content-Disposition: form-data; name="image"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n')
    return head.encode() + filler * size + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _urllib_post(url: str, data, headers: dict) -> tuple[int, dict]:
    """POST with Python's urllib, which sends the whole body before it reads the answer: (status, JSON body)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:  # a connection reset would raise URLError instead and fail the test
        return e.code, json.loads(e.read())


def test_oversized_upload_reaches_urllib_as_413_not_a_reset(nano, synth_bytes):
    """The server reads (and throws away) a refused body before answering: closing with it unread makes the
    kernel reset the connection, and urllib, still sending, would see "connection reset by peer"."""
    body, ctype = _multipart(64 * 2**20)  # the 64 MB photo against the default 20 MB limit
    with serve_in_thread(create_app(nano)) as url:
        status, answer = _urllib_post(f"{url}/v1/detect", body, {"Content-Type": ctype})
        assert status == 413 and "limit of 20 MB" in answer["error"] and "--max-upload-mb" in answer["error"]
        # Without a Content-Length (chunked): refused while it streams in, the rest read and dropped.
        chunks = (body[i:i + 2**20] for i in range(0, 30 * 2**20, 2**20))
        status, answer = _urllib_post(f"{url}/v1/detect", chunks,
                                      {"Content-Type": ctype, "Transfer-Encoding": "chunked"})
        assert status == 413 and "limit of 20 MB" in answer["error"]
        health = httpx.get(f"{url}/healthz").json()
        assert health["status"] == "ok" and health["queued"] == 0
    with serve_in_thread(create_app(nano, api_key=KEY)) as url:  # a 401 is read the same way
        status, answer = _urllib_post(f"{url}/v1/detect", _multipart(8 * 2**20)[0], {"Content-Type": ctype})
        assert status == 401 and "Authorization: Bearer" in answer["error"]
        status, answer = _urllib_post(f"{url}/v1/detect", body, {"Content-Type": ctype,
                                                                  "Authorization": f"Bearer {KEY}"})
        assert status == 413


def test_a_refused_body_is_read_only_up_to_its_bound():
    """`discard_body` stops at its byte bound and its time bound, so a huge or trickling body cannot hold the
    server; the bound is twice the limit, at least 128 MiB."""
    import asyncio

    from groundscope.serve.limits import DRAIN_FLOOR_BYTES, discard_body, drain_bound

    assert drain_bound(2**20) == DRAIN_FLOOR_BYTES == 128 * 2**20 and drain_bound(100 * 2**20) == 200 * 2**20
    read = []

    async def endless():
        read.append(2**16)
        return {"type": "http.request", "body": b"\0" * 2**16, "more_body": True}

    async def trickle():
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def short():
        return {"type": "http.request", "body": b"last", "more_body": False}

    assert asyncio.run(discard_body(endless, 2**20)) is False
    assert sum(read) == 2**20 + 2**16  # stopped at the first chunk past the bound
    started = time.monotonic()
    assert asyncio.run(discard_body(trickle, 2**30, seconds=0.3)) is False
    assert time.monotonic() - started < 2
    assert asyncio.run(discard_body(short, 10)) is True
