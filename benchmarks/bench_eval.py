"""Seconds to score a COCO-size box result: groundscope's `evaluate_coco` against plain pycocotools, same run.

The data is the cocoapi fixture (100 val2014 images, the official fake box results) replicated to 5,000 images
with fresh image and annotation ids, written to a temp folder; both sides read the same two files, so the
groundscope time includes its input checks. Also printed: plain faster-coco-eval (the backend without our
checks) and the largest difference of the 12 stats between groundscope and pycocotools.

    python benchmarks/bench_eval.py [--images 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "metrics" / "cocoapi_val2014_100"


def replicate(n_images: int, folder: Path) -> tuple[Path, Path, dict]:
    """Write GT and results of `n_images` images (copies of the 100-image fixture) -> (gt path, results path, sizes)."""
    gt = json.loads((FIXTURE / "instances_val2014_100.json").read_text())
    dets = json.loads((FIXTURE / "instances_val2014_fakebbox100_results.json").read_text())
    copies = -(-n_images // len(gt["images"]))
    # ids of copy r: id + r * offset, with offsets past the largest id so copies never collide
    offset = 10 ** len(str(max(img["id"] for img in gt["images"])))
    ann_offset = 10 ** len(str(max(a["id"] for a in gt["annotations"])))
    out_gt = {"info": gt.get("info", {}), "images": [], "annotations": [], "categories": gt["categories"]}
    out_dets = []
    for r in range(copies):
        keep = {img["id"] for img in gt["images"][: n_images - r * len(gt["images"])]}
        out_gt["images"] += [{**img, "id": img["id"] + r * offset} for img in gt["images"] if img["id"] in keep]
        out_gt["annotations"] += [
            {**a, "id": a["id"] + r * ann_offset, "image_id": a["image_id"] + r * offset}
            for a in gt["annotations"]
            if a["image_id"] in keep
        ]
        out_dets += [{**d, "image_id": d["image_id"] + r * offset} for d in dets if d["image_id"] in keep]
    gt_path, res_path = folder / "instances.json", folder / "results.json"
    gt_path.write_text(json.dumps(out_gt))
    res_path.write_text(json.dumps(out_dets))
    sizes = {"images": len(out_gt["images"]), "annotations": len(out_gt["annotations"]), "detections": len(out_dets)}
    return gt_path, res_path, sizes


def run_groundscope(gt_path: Path, res_path: Path) -> np.ndarray:
    from groundscope.evaluate import COCO_KEYS, evaluate_coco

    m = evaluate_coco(gt_path, res_path)
    return np.array([m[k] for k in COCO_KEYS])


def run_pycocotools(gt_path: Path, res_path: Path) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(res_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.array(ev.stats)


def run_faster_coco_eval(gt_path: Path, res_path: Path) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(str(gt_path))
    ev = COCOeval_faster(gt, gt.loadRes(str(res_path)), "bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.array(ev.stats[:12])


def best_of(fn, repeat: int, *args) -> tuple[float, np.ndarray]:
    times, stats = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        stats = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="images in the replicated dataset")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the fastest is reported")
    args = parser.parse_args()
    if not FIXTURE.exists():
        print(f"benchmark data absent: {FIXTURE} (../shared/fixtures must sit beside the repo)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, res_path, sizes = replicate(args.images, Path(tmp))
        print(
            f"data: {sizes['images']} images, {sizes['annotations']} annotations, "
            f"{sizes['detections']} detections (bbox)"
        )
        t_gs, s_gs = best_of(run_groundscope, args.repeat, gt_path, res_path)
        t_pc, s_pc = best_of(run_pycocotools, args.repeat, gt_path, res_path)
        t_fc, s_fc = best_of(run_faster_coco_eval, args.repeat, gt_path, res_path)
    print(f"groundscope evaluate_coco : {t_gs:7.2f} s   (best of {args.repeat}, load + checks + eval)")
    print(f"pycocotools COCOeval      : {t_pc:7.2f} s")
    print(f"faster-coco-eval (plain)  : {t_fc:7.2f} s")
    print(f"ratio pycocotools / groundscope: {t_pc / t_gs:.2f}x")
    print(f"AP {s_gs[0]:.6f}; max |groundscope - pycocotools| over the 12 stats: {np.abs(s_gs - s_pc).max():.2e}")
    print(f"                max |faster-coco-eval - pycocotools|: {np.abs(s_fc - s_pc).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
