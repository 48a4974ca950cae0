"""Why `groundscope serve` loads its model in a thread that exits: the forward pass's speed by thread layout.

Each layout runs in its own fresh process (an OpenMP pool, once made, lives as long as its thread):
    main                 model loaded and run in the main thread (what a script does)
    worker               loaded in the main thread, run in another thread (the server before the fix)
    fresh-load           loaded in a thread that exits, run in another thread (the server now: serve/threads.py)
    fresh-load+arena     the same with glibc's malloc limited to one arena (mallopt M_ARENA_MAX 1; measured and
                         not adopted, see benchmarks/results/serve.md)

    main, OMP_WAIT_POLICY=passive   the main layout with OpenMP's helper threads sleeping at every barrier
                         instead of spinning: as slow as `worker`, which is what happens there (libgomp stops
                         spinning once its threads outnumber the CPUs; the main thread's idle pool tips it over)

    python benchmarks/bench_omp_threads.py [--model nano] [--calls 30] [--batch 1 4]
    python benchmarks/bench_omp_threads.py --streams      # the server's model streams (serve/batcher.py)

Prints ms per image of `detect` (examples/synth_shapes.png, six class names; --batch images per call, after
warm-up calls of every smaller batch size, as a server mixes them), minor page faults per call, and the ratio to
`main` at the same batch size.

--streams instead prints images/s for one stream on all threads against several one-thread streams running at
once (each a thread that loaded nothing, as in the server), per batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, resource, sys, time
import groundscope as gs
from groundscope.images import load_image
from groundscope.serve.threads import in_fresh_thread
layout, model, calls, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
images = [load_image("examples/synth_shapes.png")] * batch
classes = [["pink cross", "cyan star", "blue diamond", "yellow diamond", "red circle", "green heart"]] * batch
if layout.endswith("+arena"):
    import ctypes
    ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX = 1: every thread allocates from the main arena
def timed(det):
    # Smaller batches first, as a server sees them: what the allocator kept from them decides the page faults.
    for b in range(1, batch + 1):
        for _ in range(3):
            det.detect(images[:b], classes[:b], box_threshold=0.3, batch_size=b)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    for _ in range(calls):
        det.detect(images, classes, box_threshold=0.3, batch_size=batch)
    seconds = time.perf_counter() - t
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms": seconds / calls / batch * 1000, "faults": faults / calls}
if layout == "main":
    res = timed(gs.load_detector(model))
else:
    det = gs.load_detector(model) if layout == "worker" else in_fresh_thread(gs.load_detector, model)
    res = in_fresh_thread(timed, det, name="run")
print(json.dumps(res))
"""


STREAMS_CHILD = r"""
import json, sys, threading, time, torch
import groundscope as gs
from groundscope.images import load_image
from groundscope.serve.threads import in_fresh_thread
model, streams, threads, batch, images_total = sys.argv[1], *map(int, sys.argv[2:6])
det = in_fresh_thread(gs.load_detector, model)
images = [load_image("examples/synth_shapes.png")] * batch
classes = [["pink cross", "cyan star", "blue diamond", "yellow diamond", "red circle", "green heart"]] * batch
calls = max(2, images_total // (streams * batch))
barrier, seconds = threading.Barrier(streams), [0.0] * streams
def stream(i):
    torch.set_num_threads(threads)
    for _ in range(3):
        det.detect(images, classes, box_threshold=0.3, batch_size=batch)
    barrier.wait()
    t = time.perf_counter()
    for _ in range(calls):
        det.detect(images, classes, box_threshold=0.3, batch_size=batch)
    seconds[i] = time.perf_counter() - t
workers = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
[w.start() for w in workers]
[w.join() for w in workers]
print(json.dumps({"images_per_s": streams * batch * calls / max(seconds), "ms_per_call": max(seconds) / calls * 1000}))
"""


def streams_table(model: str, batches: list[int], images: int, env: dict) -> None:
    import torch

    cores = torch.get_num_threads()
    print(f"model {model}, {os.cpu_count()} CPUs, {cores} threads, load average {os.getloadavg()[0]:.1f}")
    print("| batch | layout | images/s | ms per call | vs one stream |")
    print("|---:|---|---:|---:|---:|")
    for batch in batches:
        base = None
        for streams, threads in ((1, cores), (cores, 1)):
            out = subprocess.run([sys.executable, "-c", STREAMS_CHILD, model, str(streams), str(threads), str(batch),
                                  str(images)], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            base = base or r["images_per_s"]
            print(f"| {batch} | {streams} stream{'s' if streams > 1 else ''} x {threads} thread{'s' if threads > 1 else ''} "
                  f"| {r['images_per_s']:.2f} | {r['ms_per_call']:.0f} | {r['images_per_s'] / base:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano")
    ap.add_argument("--calls", type=int, default=30, help="timed calls per layout (divided by --batch)")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="images per detect call (default: 1 4; "
                    "with --streams 1 2 4)")
    ap.add_argument("--streams", action="store_true", help="compare one stream on all threads with one-thread "
                    "streams running at once")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MALLOC_ARENA_MAX", None)  # the layouts choose the arena themselves
    env.pop("OMP_WAIT_POLICY", None)
    if args.streams:
        streams_table(args.model, args.batch or [1, 2, 4], 24, env)
        return
    args.batch = args.batch or [1, 4]
    print(f"model {args.model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| batch | layout | ms per image | page faults per call | vs main |")
    print("|---:|---|---:|---:|---:|")
    for batch in args.batch:
        rows = {}
        for layout in ("main", "worker", "fresh-load", "fresh-load+arena", "main, OMP_WAIT_POLICY=passive"):
            calls = max(3, args.calls // batch)
            run_env = {**env, "OMP_WAIT_POLICY": "passive"} if "passive" in layout else env
            out = subprocess.run([sys.executable, "-c", CHILD, layout.split(",")[0], args.model, str(calls), str(batch)],
                                 cwd=REPO, env=run_env, capture_output=True, text=True, check=True).stdout
            rows[layout] = json.loads(out.strip().splitlines()[-1])
        for layout, r in rows.items():
            print(f"| {batch} | {layout} | {r['ms']:.1f} | {r['faults']:.0f} | {r['ms'] / rows['main']['ms']:.2f}x |")


if __name__ == "__main__":
    main()
