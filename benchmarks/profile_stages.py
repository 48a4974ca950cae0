"""Seconds per stage of one `detect` call on a Grounding-DINO-T-size model: where the time goes.

Random weights (`bench_detect.build_gdino_t`, cached in --model-dir), one random 800x1333 image, the 80 COCO names,
after a warm-up; forward hooks time the backbone, the text backbone, each encoder layer's fusion, text-enhancer and
deformable parts, and the decoder.

    python benchmarks/profile_stages.py [--threads 2] [--precision bf16] [--model-dir /tmp/gdino_t] [--ops]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import bench_detect as bd  # benchmarks/ is on sys.path when a script here runs
from coco_names import COCO_80

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
ap.add_argument("--ops", action="store_true", help="also print torch.profiler's table of the costliest ops")
ap.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "groundscope_gdino_t")
args = ap.parse_args()
out = args.model_dir
if not (out / "config.json").exists():
    bd.build_gdino_t(out)
import groundscope as gs  # noqa: E402

threads = args.threads
torch.set_num_threads(threads)
det = gs.load_detector(str(out), precision=args.precision)
im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 1333, 3), dtype=np.uint8))
det.detect(im, COCO_80[:20])
times: dict[str, list[float]] = {}


def hook_pair(name, mod):
    """Add the wall time of each call of `mod` to times[name]."""
    def pre(m, a):
        times.setdefault(name, []).append(-time.perf_counter())

    def post(m, a, o):
        times[name][-1] += time.perf_counter()

    mod.register_forward_pre_hook(pre)
    mod.register_forward_hook(post)


m = det.model.model
hook_pair("backbone", m.backbone)
hook_pair("text_backbone", m.text_backbone)
for layer in m.encoder.layers:
    hook_pair("enc.fusion", layer.fusion_layer)
    hook_pair("enc.text", layer.text_enhancer_layer)
    hook_pair("enc.deform", layer.deformable_layer)
hook_pair("decoder", m.decoder)
t = time.perf_counter()
det.detect(im, COCO_80)
total = time.perf_counter() - t
print(f"precision {args.precision}, {threads} thread(s): {total:.2f} s per image")
for k, v in times.items():
    print(f"  {k:14s} {sum(v):.3f}s  ({len(v)} calls)")
print(f"  other          {total - sum(sum(v) for v in times.values()):.3f}s")
if args.ops:
    from torch.profiler import profile

    with profile() as prof:
        det.detect(im, COCO_80)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
