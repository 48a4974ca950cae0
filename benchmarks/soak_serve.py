"""`groundscope serve` under load and abuse, on loopback: a long mix of good and bad requests, slow clients, and
oversized uploads from every common client. Bounded in time and in requests.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/soak_serve.py                 # 10 minutes, 4 clients (the target)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/soak_serve.py --minutes 1     # a quick look

What it does:
- starts ``groundscope serve --model nano`` in its own process on a free loopback port (127.0.0.1 only) and
  samples that process's resident memory (VmRSS) every 5 s;
- `--clients` threads (4) send requests back to back for `--minutes`, at most `--max-requests` in all: good ones
  (/v1/detect, /v1/ground, /v1/refer on the synthetic example image; 70 %) and bad ones (a text file as the image,
  a truncated PNG, no class names, a missing field, an out-of-range number, a prompt over the token limit, a
  request without its image; 30 %); each bad one must get its 4xx with a JSON error, each good one a 200;
- two slow clients run all the while (slowloris): one sends its request headers a byte every 0.5 s, one sends
  complete headers and then the body a byte every 0.5 s; the good requests' latency is reported with them running
  and must stay within 3x the latency measured before they started;
- an upload over the limit (the limit + 1 MB) from curl, requests, httpx and urllib (which sends the whole body
  before it reads the answer): each must see the 413 with its JSON error, not a reset connection.

Pass (exit 0) when there is no 5xx and no transport error, every answer has the status its request calls for,
RSS after warm-up (the first 20 % of the run, at least 30 s) grows by less than 10 %, the slow clients do not slow
the others by more than 3x, and every client sees its 413. Writes benchmarks/results/soak_serve.md and .json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "synth_shapes.png"
CLASSES = "pink cross,cyan star,blue diamond,yellow diamond,red circle,green heart"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------------------------- requests
def request_kinds(image: bytes) -> list[tuple[str, float, int, dict]]:
    """(name, weight, expected status, httpx arguments) of every request the clients send."""
    png = io.BytesIO()
    Image.open(IMAGE).convert("RGB").save(png, "PNG")
    truncated = png.getvalue()[:400]
    img = {"image": ("synth_shapes.png", image, "image/png")}
    return [
        ("detect", 0.40, 200, {"url": "/v1/detect", "files": img, "data": {"classes": CLASSES}}),
        ("ground", 0.15, 200, {"url": "/v1/ground", "files": img,
                               "data": {"caption": "a pink cross above a cyan star",
                                        "phrase": ["a pink cross", "a cyan star"]}}),
        ("refer", 0.15, 200, {"url": "/v1/refer", "files": img, "data": {"expression": "the large pink cross"}}),
        ("text as image", 0.05, 400, {"url": "/v1/detect", "files": {"image": ("notes.jpg", b"not a picture\n" * 40)},
                                      "data": {"classes": CLASSES}}),
        ("truncated png", 0.05, 400, {"url": "/v1/detect", "files": {"image": ("cut.png", truncated)},
                                      "data": {"classes": CLASSES}}),
        ("no class names", 0.05, 400, {"url": "/v1/detect", "files": img, "data": {"classes": " , ,"}}),
        ("missing field", 0.04, 422, {"url": "/v1/ground", "files": img, "data": {}}),
        ("out of range", 0.04, 422, {"url": "/v1/refer", "files": img,
                                     "data": {"expression": "the cross", "top_k": "0"}}),
        ("over the token limit", 0.04, 400, {"url": "/v1/refer", "files": img,
                                             "data": {"expression": "the red circle " * 100}}),
        ("no image", 0.03, 422, {"url": "/v1/detect", "data": {"classes": CLASSES}}),
    ]


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.status: Counter = Counter()
        self.wrong: list[str] = []  # answers whose status is not the one the request calls for
        self.transport: list[str] = []
        self.latency: dict[str, list[tuple[float, float]]] = {}  # kind -> (time since start, seconds)
        self.sent = 0

    def add(self, kind: str, expect: int, status: int | None, t: float, seconds: float, note: str = "") -> None:
        with self.lock:
            if status is None:
                self.transport.append(f"{kind}: {note}")
                return
            self.status[status] += 1
            if status != expect:
                self.wrong.append(f"{kind}: {status} (expected {expect}) {note[:200]}")
            self.latency.setdefault(kind, []).append((t, seconds))


def client(base: str, kinds, deadline: float, budget: list[int], tally: Tally, seed: int, t0: float) -> None:
    rng = random.Random(seed)
    names, weights = [k[0] for k in kinds], [k[1] for k in kinds]
    table = {k[0]: k for k in kinds}
    with httpx.Client(base_url=base, timeout=120) as http:
        while time.monotonic() < deadline:
            with tally.lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
                tally.sent += 1
            name = rng.choices(names, weights)[0]
            _, _, expect, kw = table[name]
            start = time.monotonic()
            try:
                r = http.post(**kw)
                body = r.json()
                ok_json = isinstance(body, dict) and ("error" in body if r.status_code >= 400 else True)
                tally.add(name, expect, r.status_code if ok_json else -1, start - t0, time.monotonic() - start,
                          r.text if r.status_code != expect or not ok_json else "")
            except Exception as e:  # a reset or timeout is what this measures
                tally.add(name, expect, None, start - t0, time.monotonic() - start, f"{type(e).__name__}: {e}")


# ----------------------------------------------------------------------------------------------- slow clients
def slow_headers(port: int, stop: threading.Event, log: list[str]) -> None:
    """Send a request's headers one byte every 0.5 s, reconnecting whenever the server closes."""
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            "boundary=x\r\nContent-Length: 100000\r\nX-Slow: " + "a" * 4000 + "\r\n\r\n").encode()
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for i in range(len(head)):
                    if stop.is_set():
                        return
                    s.sendall(head[i:i + 1])
                    time.sleep(0.5)
        except OSError as e:
            log.append(f"headers: {type(e).__name__}")
            time.sleep(0.5)


def slow_body(port: int, stop: threading.Event, log: list[str]) -> None:
    """Send complete headers, then the body one byte every 0.5 s."""
    body = b"--x\r\nContent-Disposition: form-data; name=\"classes\"\r\n\r\ncat\r\n--x--\r\n" + b" " * 100000
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary=x\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(head)
                for i in range(len(body)):
                    if stop.is_set():
                        return
                    s.sendall(body[i:i + 1])
                    time.sleep(0.5)
        except OSError as e:
            log.append(f"body: {type(e).__name__}")
            time.sleep(0.5)


# ----------------------------------------------------------------------------------------------- 413s
def oversized(base: str, limit_mb: float) -> dict[str, str]:
    """The limit + 1 MB through every client at hand -> {client: what it saw}."""
    data = os.urandom(int((limit_mb + 1) * 2**20))
    url = base + "/v1/detect"
    seen: dict[str, str] = {}

    def verdict(status, text) -> str:
        try:
            err = json.loads(text).get("error", "")
        except (ValueError, AttributeError):
            err = ""
        return f"{status}: {err[:90]}" if err else f"{status} (no JSON error)"

    try:
        r = httpx.post(url, files={"image": ("big.png", data)}, data={"classes": "cat"}, timeout=120)
        seen["httpx"] = verdict(r.status_code, r.text)
    except Exception as e:
        seen["httpx"] = f"failed: {type(e).__name__}: {e}"
    try:
        import requests

        r = requests.post(url, files={"image": ("big.png", data)}, data={"classes": "cat"}, timeout=120)
        seen["requests"] = verdict(r.status_code, r.text)
    except ImportError:
        pass
    except Exception as e:
        seen["requests"] = f"failed: {type(e).__name__}: {e}"
    import urllib.error
    import urllib.request

    boundary = "soakboundary"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"classes\"\r\n\r\ncat\r\n--{boundary}\r\n"
               f"Content-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
               f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=payload, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            seen["urllib"] = verdict(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        seen["urllib"] = verdict(e.code, e.read().decode())
    except Exception as e:
        seen["urllib"] = f"failed: {type(e).__name__}: {e}"
    if shutil.which("curl"):
        big = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-big-{os.getpid()}.png"
        big.write_bytes(data)
        try:
            p = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-F", f"image=@{big}", "-F", "classes=cat", url],
                               capture_output=True, text=True, timeout=120)
            text, _, code = p.stdout.rpartition("\n")
            seen["curl"] = verdict(int(code), text) if code.isdigit() else f"failed: exit {p.returncode}"
        finally:
            big.unlink(missing_ok=True)
    return seen


# ----------------------------------------------------------------------------------------------- run
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=20000)
    p.add_argument("--model", default="nano")
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak_serve.md")
    args = p.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "groundscope.cli", "serve", "--model", args.model, "--host",
                               "127.0.0.1", "--port", str(port), "--max-upload-mb", str(args.max_upload_mb)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                sys.exit(f"the server exited: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        image = IMAGE.read_bytes()
        kinds = request_kinds(image)

        # latency of a good request alone, before anything else runs
        with httpx.Client(base_url=base, timeout=120) as http:
            alone = []
            for _ in range(8):
                s = time.monotonic()
                http.post("/v1/detect", files={"image": ("s.png", image)}, data={"classes": CLASSES})
                alone.append(time.monotonic() - s)

        t0 = time.monotonic()
        duration = args.minutes * 60
        deadline = t0 + duration
        tally = Tally()
        budget = [args.max_requests]
        rss: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                rss.append((time.monotonic() - t0, rss_mb(server.pid)))
                stop.wait(5)

        # first phase (first 10 %): the clients alone, the latency without slow clients
        slow_start = t0 + max(20.0, 0.1 * duration)
        slow_log: list[str] = []
        threads = [threading.Thread(target=sample, daemon=True)]
        threads += [threading.Thread(target=client, args=(base, kinds, deadline, budget, tally, args.seed + i, t0),
                                     daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(max(0.0, slow_start - time.monotonic()))
        slow_stop = threading.Event()
        slow = [threading.Thread(target=f, args=(port, slow_stop, slow_log), daemon=True)
                for f in (slow_headers, slow_body)]
        for t in slow:
            t.start()
        for t in threads[1:]:
            t.join()
        elapsed = time.monotonic() - t0
        seen_413 = oversized(base, args.max_upload_mb)
        slow_stop.set()
        stop.set()
        health = httpx.get(base + "/healthz", timeout=10).json()
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()

    good = [s for k in ("detect", "ground", "refer") for _, s in tally.latency.get(k, [])]
    before = [s for t, s in tally.latency.get("detect", []) if t < slow_start - t0]
    during = [s for t, s in tally.latency.get("detect", []) if t >= slow_start - t0]
    warm = max(30.0, 0.2 * elapsed)
    after_warm = [m for t, m in rss if t >= warm]
    base_rss = after_warm[0] if after_warm else float("nan")
    growth = (max(after_warm) - base_rss) / base_rss if after_warm else float("nan")
    five_xx = sum(n for s, n in tally.status.items() if s >= 500)
    slow_ratio = statistics.median(during) / statistics.median(before) if before and during else float("nan")
    ok_413 = all(v.startswith("413:") for v in seen_413.values())
    checks = {
        "no 5xx": five_xx == 0,
        "no transport error": not tally.transport,
        "every answer as expected": not tally.wrong,
        "RSS growth after warm-up < 10 %": growth < 0.10,
        "slow clients slow the others < 3x": slow_ratio < 3.0,
        "every client sees its 413": ok_413,
    }
    result = {
        "minutes": round(elapsed / 60, 2), "clients": args.clients, "requests": tally.sent, "model": args.model,
        "status": dict(sorted(tally.status.items())), "wrong": tally.wrong[:20], "transport": tally.transport[:20],
        "latency_s": {k: {"n": len(v), "p50": round(pct([s for _, s in v], 0.5), 3),
                          "p99": round(pct([s for _, s in v], 0.99), 3)} for k, v in sorted(tally.latency.items())},
        "good_p50_s": round(pct(good, 0.5), 3), "good_p99_s": round(pct(good, 0.99), 3),
        "detect_alone_p50_s": round(statistics.median(alone), 3),
        "detect_p50_before_slow_s": round(statistics.median(before), 3) if before else None,
        "detect_p50_with_slow_s": round(statistics.median(during), 3) if during else None,
        "slow_ratio": round(slow_ratio, 2), "slow_client_events": Counter(slow_log),
        "rss_mb": [[round(t, 1), round(m, 1)] for t, m in rss], "rss_after_warmup_mb": round(base_rss, 1),
        "rss_max_after_warmup_mb": round(max(after_warm), 1) if after_warm else None,
        "rss_growth": round(growth, 4), "oversized": seen_413, "healthz": health, "checks": checks,
    }
    cmd = "python benchmarks/soak_serve.py" + ("" if args.minutes == 10 else f" --minutes {args.minutes:g}")
    lines = [
        "# `groundscope serve` soak: load, bad requests, slow clients, oversized uploads", "",
        f"Command: `HF_HUB_OFFLINE=1 {cmd}` ({platform.machine()}, {os.cpu_count()} CPUs, model {args.model}, "
        f"loopback). {result['minutes']} minutes, {args.clients} clients, {tally.sent} requests "
        f"(70 % good, 30 % bad by weight), two slow clients from minute {round((slow_start - t0) / 60, 1)}.", "",
        "| check | held |", "|---|---|", *[f"| {k} | {'yes' if v else 'NO'} |" for k, v in checks.items()], "",
        "| request | n | p50 s | p99 s |", "|---|---|---|---|",
        *[f"| {k} | {v['n']} | {v['p50']} | {v['p99']} |" for k, v in result["latency_s"].items()], "",
        f"Status codes: {result['status']}. Good requests: p50 {result['good_p50_s']} s, p99 {result['good_p99_s']} "
        f"s (a detect alone: {result['detect_alone_p50_s']} s).",
        f"Detect p50 before the slow clients {result['detect_p50_before_slow_s']} s, with them "
        f"{result['detect_p50_with_slow_s']} s (x{result['slow_ratio']}).",
        f"Server RSS after warm-up (from {warm:.0f} s): {result['rss_after_warmup_mb']} MB, at most "
        f"{result['rss_max_after_warmup_mb']} MB (growth {100 * growth:.1f} %).",
        "Oversized upload (limit + 1 MB): " + "; ".join(f"{k} {v}" for k, v in seen_413.items()) + ".",
    ]
    if tally.wrong or tally.transport:
        lines += ["", "Unexpected answers:", *[f"- {w}" for w in (tally.wrong + tally.transport)[:20]]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
