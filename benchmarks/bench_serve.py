"""`groundscope serve` under load: requests/s and latency at 1, 4 and 16 concurrent clients, against the Python
API called directly one image at a time.

The server runs as a real deployment does, in its own process (`groundscope serve --model nano --port 0` on
loopback), so the clients here never share its interpreter lock. Each client is a thread with its own keep-alive
connection posting examples/synth_shapes.png to /v1/detect; every level sends the same bounded number of requests
after a short warm-up. The direct baseline loads the same model here and calls `detector.detect(path, classes)`
(file decode included, as the server decodes each upload) before the server starts, so the two never compete.
For each level the server's /healthz counters give the requests per forward call and the model's share of the
wall time ("busy": the rest is the worker waiting for requests to arrive and be decoded).

    python benchmarks/bench_serve.py [--requests 48] [--concurrency 1 4 16] [--max-batch 4] [--model nano]
                                     [--threads N] [--precision fp32|bf16]

--threads sets torch's intra-op threads in both the server and the direct baseline (default: torch's, one per
core). On a machine where other processes hold cores, fewer threads than cores avoids OpenMP workers spinning
while they wait for a descheduled sibling, which can slow a forward pass several-fold.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "synth_shapes.png"
CLASSES = "pink cross,cyan star,blue diamond,yellow diamond,red circle,green heart"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def direct_api(det, n: int, batch: int = 1) -> tuple[float, list[float]]:
    """Images/s and per-call latencies of the Python API, `batch` images per call (n images in all)."""
    classes = CLASSES.split(",")
    paths, prompts = [str(IMAGE)] * batch, [classes] * batch
    for _ in range(2):  # warm-up: first calls allocate and fill the text cache
        det.detect(paths, prompts, box_threshold=0.3, batch_size=batch)
    lat = []
    calls = max(1, n // batch)
    t0 = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        det.detect(paths, prompts, box_threshold=0.3, batch_size=batch)
        lat.append(time.perf_counter() - t)
    return calls * batch / (time.perf_counter() - t0), lat


def upload_costs(det, n: int = 20) -> tuple[float, float]:
    """ms per upload the server spends outside the model: decoding the PNG, and resizing + normalising it."""
    from groundscope.images import preprocess
    from groundscope.serve.uploads import decode_image

    data = IMAGE.read_bytes()
    t = time.perf_counter()
    for _ in range(n):
        image = decode_image(data, IMAGE.name)
    decode = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n):
        preprocess(image, *det.image_size)
    return decode * 1000, (time.perf_counter() - t) / n * 1000


def start_server(model: str, max_batch: int, threads: int | None, max_wait_ms: float | None = None,
                 streams: int | None = None, precision: str = "fp32") -> tuple[subprocess.Popen, str]:
    """`groundscope serve` on a free loopback port; returns the process and its URL once it answers."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op pool reads it at start-up
    proc = subprocess.Popen(
        [sys.executable, "-c", "from groundscope.cli import main; main()", "serve", "--model", model,
         "--port", "0", "--max-batch", str(max_batch), "--precision", precision]
        + (["--max-wait-ms", str(max_wait_ms)] if max_wait_ms is not None else [])
        + (["--streams", str(streams)] if streams is not None else []),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
    )
    log: list[str] = []
    for line in proc.stdout:
        log.append(line)
        m = re.search(r"Uvicorn running on (http://\S+)", line)
        if m:
            # Keep reading its log so the pipe never fills and blocks the server.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    raise RuntimeError("the server exited before it started:\n" + "".join(log))


def load(url: str, image: bytes, clients: int, n: int) -> tuple[float, list[float], dict]:
    """Send n detect requests from `clients` threads (each its own connection); requests/s, latencies and the
    server's counters over the timed part (requests per forward call, model busy share)."""
    local = threading.local()

    def one(_):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        t = time.perf_counter()
        r = local.client.post("/v1/detect", files={"image": ("synth_shapes.png", image, "image/png")},
                              data={"classes": CLASSES})
        r.raise_for_status()
        return time.perf_counter() - t

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(min(n, 2 * clients))))  # warm-up: open the connections
        before = httpx.get(f"{url}/healthz").json()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        lat = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
        client_cpu = time.process_time() - cpu0
        after = httpx.get(f"{url}/healthz").json()
    calls = after["batches_run"] - before["batches_run"]
    stats = {"per_call": (after["requests_done"] - before["requests_done"]) / max(calls, 1),
             "busy": (after["model_busy_s"] - before["model_busy_s"]) / wall,
             "client_cpu": client_cpu / wall}  # cores' worth of CPU the load generator itself used
    return n / wall, lat, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano")
    ap.add_argument("--requests", type=int, default=48, help="Requests per concurrency level (and direct calls).")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--max-wait-ms", type=float, default=None, help="The server's --max-wait-ms (default: its own).")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (server and direct API).")
    ap.add_argument("--streams", type=int, default=None, help="The server's --streams (default: its own).")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="The model's precision in the server and the direct baseline (serve --precision).")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:  # before torch starts, so every thread's OpenMP pool gets it, as in the server process
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]  # other work on the machine skews every row; say how busy it was
    import groundscope as gs

    det = gs.load_detector(args.model, precision=args.precision)
    decode_ms, prepare_ms = upload_costs(det)
    rows = [("Python API, direct, 1 at a time", *direct_api(det, args.requests), None)]
    # What batching alone can buy: the same images in calls of --max-batch (the latency column is per call).
    batched = direct_api(det, args.requests, args.max_batch)
    del det
    image = IMAGE.read_bytes()
    proc, url = start_server(args.model, args.max_batch, args.threads, args.max_wait_ms, args.streams,
                             args.precision)
    try:
        for c in args.concurrency:
            rows.append((f"HTTP, {c} concurrent client{'s' if c > 1 else ''}", *load(url, image, c, args.requests)))
    finally:
        proc.terminate()
        proc.wait(60)

    print(f"model {args.model} ({args.precision}), image {IMAGE.name} ({len(image) / 1024:.0f} KB, 601x429), "
          f"{args.requests} requests "
          f"per row, --max-batch {args.max_batch}; {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, load average before the run {load_before:.1f}, "
          f"after {os.getloadavg()[0]:.1f}")
    print()
    print("| mode | requests/s | p50 latency (ms) | p95 latency (ms) | requests per forward call | model busy "
          "| load generator's CPU (cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rps, lat, stats in rows:
        extra = f"{stats['per_call']:.2f} | {stats['busy']:.0%} | {stats['client_cpu']:.2f}" if stats else "- | - | -"
        print(f"| {name} | {rps:.2f} | {statistics.median(lat) * 1000:.0f} | {percentile(lat, 95) * 1000:.0f} "
              f"| {extra} |")
    by_c = {c: rows[1 + i][1] for i, c in enumerate(args.concurrency)}
    print(f"| Python API, direct, batches of {args.max_batch} (latency per call) | {batched[0]:.2f} "
          f"| {statistics.median(batched[1]) * 1000:.0f} | {percentile(batched[1], 95) * 1000:.0f} | - | - | - |")
    print()
    if 1 in by_c and 4 in by_c:
        print(f"throughput@4 / throughput@1 = {by_c[4] / by_c[1]:.2f}x (target >= 1.5x)")
    print(f"per upload outside the model: PNG decode {decode_ms:.1f} ms, resize + normalise {prepare_ms:.1f} ms")
    if 1 in by_c:
        print(f"HTTP@1 / direct API = {by_c[1] / rows[0][1]:.2f}x; direct batches of {args.max_batch} / HTTP@1 = "
              f"{batched[0] / by_c[1]:.2f}x (batching alone, images decoded one after another)")


if __name__ == "__main__":
    main()
