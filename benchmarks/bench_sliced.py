"""Sliced inference on the large-image synthetic world: the bundled nano with slices vs without.

    python benchmarks/bench_sliced.py --threads 1 --out benchmarks/results/sliced.md   # 8 images, ~3 minutes
    python benchmarks/bench_sliced.py --n 4 --slices 256x256 --box-threshold 0

Draws a fresh test world of the large-image layout (``groundscope synth --small --split test --seed 31``:
2048 x 2048 canvases, 24-48 shapes, most 16-26 px), runs the model over its images with each arm (the whole
image only; slices merged by greedy NMM; slices merged by NMS), scores ``coco_base.json`` (the 56 base classes
the model was trained on) with faster-coco-eval, and prints one table row per arm: AP50 overall, AP50 on small
objects (COCO's area < 32^2: precision at IoU 0.5 over the "small" area range, the AP50 analogue of APs), APs
(COCO's AP@[.5:.95] on small), AP50 on medium and large, and seconds per image. pycocotools' caps are
mmdetection's [100, 300, 1000] (an image holds up to 48 objects), so AP50 is at 1000 detections, of which each
image gives at most 300. Every arm keeps boxes scoring >= ``--box-threshold`` (0.1 by default).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from groundscope.data.synth import generate_world, small_layout
from groundscope.evaluate.coco import MMDET_MAX_DETS, run_cocoeval
from groundscope.evaluate.validate import load_detection_ground_truth
from groundscope.models.loading import load_detector
from groundscope.slicing import SliceSpec, parse_slices, sliced_detect


def area_ap(ev, area: str, iou: float | None = 0.5) -> float:
    """AP at `iou` (None: the mean over 0.5:0.95) on one area range, at the last cap, as pycocotools averages."""
    p = ev.params
    precision = ev.eval["precision"]  # (T, R, K, A, M)
    s = precision[..., list(p.areaRngLbl).index(area), -1]
    if iou is not None:
        s = s[np.isclose(p.iouThrs, iou)]
    s = s[s > -1]
    return float(s.mean()) if s.size else -1.0


def run_arm(detector, world: Path, gt, spec: SliceSpec | None, max_detections: int, box_threshold: float
            ) -> tuple[list[dict], float]:
    """COCO results of one arm over every image, and seconds per image (detection only, image load included)."""
    names = [gt.category_name(c) for c in gt.category_ids]
    records, seconds = [], 0.0
    for image in gt.data["images"]:
        path = world / image["file_name"]
        start = time.perf_counter()
        if spec is None:
            dets = detector.detect(path, names, box_threshold=box_threshold, max_detections=max_detections)
        else:
            dets = sliced_detect(detector, path, names, spec, box_threshold=box_threshold,
                                 max_detections=max_detections)
        seconds += time.perf_counter() - start
        records += dets.to_coco_results(image["id"], category_ids=list(gt.category_ids))
    return records, seconds / len(gt.data["images"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano")
    ap.add_argument("--seed", type=int, default=31, help="seed of the test world (31: drawn for this benchmark only)")
    ap.add_argument("--n", type=int, default=8, help="images")
    ap.add_argument("--size", default="2048x2048", help="canvas WIDTHxHEIGHT")
    ap.add_argument("--slices", default="320x320", help="tile HEIGHTxWIDTH")
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--max-detections", type=int, default=300)
    ap.add_argument("--box-threshold", type=float, default=0.1,
                    help="minimum score kept, in every arm (0.1: SAHI's LOW_MODEL_CONFIDENCE; at 0 the tiles' "
                         "near-zero boxes, merged by NMM, swallow small objects' boxes)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--world", type=Path, default=None, help="draw the world here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    width, height = (int(v) for v in args.size.lower().split("x"))
    tmp = tempfile.TemporaryDirectory() if args.world is None else None
    world = Path(tmp.name) if tmp else args.world
    summary = generate_world(world, args.n, seed=args.seed, split="test", layout=small_layout((width, height)))
    gt = load_detection_ground_truth(world / "coco_base.json")
    detector = load_detector(args.model)
    h, w = parse_slices(args.slices)
    arms = [("whole image", None),
            (f"slices {h}x{w} + whole image, NMM (IOS 0.5)", SliceSpec(h, w, args.overlap, True, "nmm")),
            (f"slices {h}x{w} + whole image, NMS (IOS 0.5)", SliceSpec(h, w, args.overlap, True, "nms")),
            (f"slices {h}x{w} only, NMM (IOS 0.5)", SliceSpec(h, w, args.overlap, False, "nmm"))]
    # warm-up (the deformable-attention kernel's first call, the text encoding): not timed
    detector.detect(world / gt.data["images"][0]["file_name"], ["red circle"], max_detections=1)
    rows = []
    for name, spec in arms:
        records, spi = run_arm(detector, world, gt, spec, args.max_detections, args.box_threshold)
        ev = run_cocoeval(gt, records, "bbox", max_dets=MMDET_MAX_DETS)
        row = {"arm": name, "AP50": area_ap(ev, "all"), "AP50_small": area_ap(ev, "small"),
               "APs": area_ap(ev, "small", None), "AP50_medium": area_ap(ev, "medium"),
               "AP50_large": area_ap(ev, "large"), "s_per_image": spi}
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    n_small = sum(1 for a in gt.data["annotations"] if a["area"] < 32 ** 2)
    lines = [
        f"Sliced inference, `{args.model}` on the large-image world (`python benchmarks/bench_sliced.py --n {args.n} "
        f"--seed {args.seed} --size {args.size} --slices {args.slices} --overlap {args.overlap} --box-threshold "
        f"{args.box_threshold} --threads {args.threads}`, {date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads): {args.n} images, {len(gt.data['annotations'])} base-class objects "
        f"({n_small} small), {summary['objects']} objects in all.",
        "",
        "| arm | AP50 | AP50 small | APs | AP50 medium | AP50 large | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['AP50']:.3f} | {r['AP50_small']:.3f} | {r['APs']:.3f} | "
                     f"{r['AP50_medium']:.3f} | {r['AP50_large']:.3f} | {r['s_per_image']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
