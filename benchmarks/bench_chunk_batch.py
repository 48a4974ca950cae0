"""Prompt chunks per forward pass on a CPU: speed against peak memory, the 1230 LVIS names (16 chunks).

Grounding-DINO-T size, bf16, random weights, one 800x1333 image; each row a fresh process that lifts the CPU cap
(groundscope.models.detector.CPU_TOKENS_PER_PASS) so `batch_size` alone decides how many (image, chunk) pairs
share a pass. The default (the cap) is one pass per chunk for an image this size.

    python benchmarks/bench_chunk_batch.py [--threads 2] [--batch 1 2 4] [--model-dir /tmp/groundscope_gdino_t]
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
CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
sys.path.insert(0, "benchmarks")
import bench_detect as bd
import groundscope as gs
from groundscope.models import detector as detector_module
detector_module.CPU_TOKENS_PER_PASS = 10**9
torch.set_num_threads(int(sys.argv[1]))
cats = json.loads(bd.LVIS_JSON.read_text())["categories"]
names = [c["name"].replace("_", " ") for c in sorted(cats, key=lambda c: c["id"])]
det = gs.load_detector(sys.argv[2], precision="bf16")
im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 1333, 3), dtype=np.uint8))
det.detect(im, names[:20])
t = time.perf_counter()
det.detect(im, names, batch_size=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "groundscope_gdino_t")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_detect

    if not bench_detect.LVIS_JSON.exists():
        sys.exit(f"needs the LVIS categories at {bench_detect.LVIS_JSON} (../shared/fixtures)")
    if not (args.model_dir / "config.json").exists():
        bench_detect.build_gdino_t(args.model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print(f"{args.threads} thread(s), LVIS vocabulary, one 800x1333 image, bf16")
    print("| chunks per pass | s/image | peak RSS (GB) |")
    print("|---:|---:|---:|")
    for b in args.batch:
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.threads), str(args.model_dir), str(b)], cwd=REPO,
                             env=env, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {b} | {r['seconds']:.1f} | {r['peak_mb'] / 1024:.2f} |", flush=True)


if __name__ == "__main__":
    main()
