"""Why `groundscope serve` loads its model in a thread that exits: the forward pass's speed by thread layout.

Each layout runs in its own fresh process (an OpenMP pool, once made, lives as long as its thread):
    main           model loaded and run in the main thread (what a script does)
    worker         loaded in the main thread, run in another thread (the server before the fix)
    fresh-load     loaded in a thread that exits, run in another thread (the server now: serve/threads.py)

    python benchmarks/bench_omp_threads.py [--model nano] [--calls 30]

Prints ms per `detect` call (examples/synth_shapes.png, six class names) and the ratio to `main`.
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
import json, sys, threading, time
import groundscope as gs
from groundscope.serve.threads import in_fresh_thread
layout, model, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
image = "examples/synth_shapes.png"
classes = "pink cross,cyan star,blue diamond,yellow diamond,red circle,green heart".split(",")
def timed(det):
    for _ in range(3):
        det.detect(image, classes, box_threshold=0.3)
    t = time.perf_counter()
    for _ in range(calls):
        det.detect(image, classes, box_threshold=0.3)
    return (time.perf_counter() - t) / calls * 1000
if layout == "main":
    ms = timed(gs.load_detector(model))
else:
    det = gs.load_detector(model) if layout == "worker" else in_fresh_thread(gs.load_detector, model)
    ms = in_fresh_thread(timed, det, name="run")
print(json.dumps({"ms": ms}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano")
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = {}
    for layout in ("main", "worker", "fresh-load"):
        out = subprocess.run([sys.executable, "-c", CHILD, layout, args.model, str(args.calls)], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True).stdout
        rows[layout] = json.loads(out.strip().splitlines()[-1])["ms"]
    print(f"model {args.model}, {args.calls} calls per layout, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| layout | ms per call | vs main |")
    print("|---|---:|---:|")
    for layout, ms in rows.items():
        print(f"| {layout} | {ms:.1f} | {ms / rows['main']:.2f}x |")


if __name__ == "__main__":
    main()
