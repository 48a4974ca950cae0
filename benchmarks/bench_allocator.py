"""The fast path's malloc setting (groundscope.models.fast.allocator): page faults, speed and peak memory.

1. One bf16 linear layer at the fusion layer's size, (22,223 x 256) -> 1024, whose 45 MB output is over glibc's
   largest mmap threshold: ms per call and page faults per call.
2. A Grounding-DINO-T-size bf16 `detect` (random weights, one 800x1333 image, the 80 COCO names, 2 threads),
   after a warm-up: seconds per image (fastest of --images), page faults per image, peak RSS.
Each arm runs in a fresh process, once with glibc's own setting (GROUNDSCOPE_MALLOC=system) and once with the fast
path's.

    python benchmarks/bench_allocator.py [--threads 2] [--images 3] [--model-dir /tmp/groundscope_gdino_t]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINEAR = r"""
import json, resource, sys, time, torch
from groundscope.models.fast.allocator import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(int(sys.argv[1]))
x, w, b = torch.randn(22223, 256).bfloat16(), torch.randn(1024, 256).bfloat16(), torch.randn(1024).bfloat16()
with torch.inference_mode():
    for _ in range(3):
        torch.nn.functional.linear(x, w, b)
    faults, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(20):
        torch.nn.functional.linear(x, w, b)
    ms = (time.perf_counter() - t) / 20 * 1000
print(json.dumps({"applied": applied, "ms": ms, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 20}))
"""
DETECT = r"""
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
sys.path.insert(0, "benchmarks")
from coco_names import COCO_80
import groundscope as gs
from groundscope.models.fast.allocator import keep_freed_memory
torch.set_num_threads(int(sys.argv[1]))
det = gs.load_detector(sys.argv[2], precision="bf16")
im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 1333, 3), dtype=np.uint8))
det.detect(im, COCO_80)
times, faults = [], []
for _ in range(int(sys.argv[3])):
    f, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    det.detect(im, COCO_80)
    times.append(time.perf_counter() - t)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
print(json.dumps({"applied": keep_freed_memory(), "seconds": min(times), "faults": faults[times.index(min(times))],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, args: list[str], system: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GROUNDSCOPE_MALLOC": "system" if system else ""}
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=3, help="timed detect calls per arm (the fastest is reported)")
    ap.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "groundscope_gdino_t")
    args = ap.parse_args()
    if not (args.model_dir / "config.json").exists():
        sys.path.insert(0, str(REPO / "benchmarks"))
        import bench_detect

        bench_detect.build_gdino_t(args.model_dir)
    print(f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print("| measurement | glibc's setting | the fast path's | ratio |")
    print("|---|---:|---:|---:|")
    sys_lin, ours_lin = (child(LINEAR, [str(args.threads)], s) for s in (True, False))
    assert ours_lin["applied"] and not sys_lin["applied"]
    print(f"| bf16 linear (22,223 x 256) -> 1024, ms | {sys_lin['ms']:.1f} | {ours_lin['ms']:.1f} "
          f"| {sys_lin['ms'] / ours_lin['ms']:.2f}x |")
    print(f"| its page faults per call | {sys_lin['faults']:.0f} | {ours_lin['faults']:.0f} | |")
    det_args = [str(args.threads), str(args.model_dir), str(args.images)]
    sys_det, ours_det = (child(DETECT, det_args, s) for s in (True, False))
    print(f"| GDINO-T bf16 detect, s/image | {sys_det['seconds']:.2f} | {ours_det['seconds']:.2f} "
          f"| {sys_det['seconds'] / ours_det['seconds']:.2f}x |")
    print(f"| its page faults per image | {sys_det['faults']:.0f} | {ours_det['faults']:.0f} | |")
    print(f"| its peak RSS, GB | {sys_det['peak_mb'] / 1024:.2f} | {ours_det['peak_mb'] / 1024:.2f} | |")


if __name__ == "__main__":
    main()
