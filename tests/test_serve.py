"""`groundscope serve`: the API answers the CLI's JSON, refuses bad input with the right status and keeps
serving, batches queued requests into one forward pass, sheds load with 503 and drains on SIGTERM."""

from __future__ import annotations

import json
import os
import re
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
