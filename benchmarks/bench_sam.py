"""Masks, measured: segmenter parity with transformers, mask AP against pycocotools, and (when sam-nano is bundled)
sam-nano's masks and dam-nano prompted through it, on synthetic worlds drawn with fresh seeds.

    python benchmarks/bench_sam.py                     # parity and ap; writes benchmarks/results/sam.md (+ .json)
    python benchmarks/bench_sam.py --parts parity,ap,nano,dam   # also sam-nano's parts, once one is bundled

Parts:
- parity: tiny random SAM / SAM 2 / SAM 3-tracker models (tests/conftest.py `build_tiny_segmenter`) on random
  images, boxes and clicks: groundscope's `Segmenter.segment` against transformers' own path (SAM: `SamProcessor`
  + `SamModel(**inputs)` + `post_process_masks` + argmax of the predicted IoU, as Describe Anything's
  `apply_sam`; SAM 2 family: the model's forward from pixels, since transformers' SAM 2 image processor needs
  torchvision, which tests/test_segmenter.py covers with a fixture). Prints mask pixels that differ and the
  largest score difference.
- ap: random RLE detections on random RLE ground truth, groundscope's `evaluate_coco(iou_types=["segm"])` against
  pycocotools' `COCOeval(iouType="segm")` run directly: the largest difference over the 12 summary numbers.
- nano: sam-nano's mean mask IoU on a fresh-seed synthetic world, from each object's exact box and from one click
  at a random interior pixel, overall and by COCO size (benchmarks/bench_sam_nano.py's measurement).
- dam: dam-nano's synthetic DLC scores with each region given as its exact mask, as sam-nano's mask from its box,
  as sam-nano's mask from one click at its most interior pixel, and (the fallback without a segmenter) the filled
  box and the click's disc (benchmarks/dam_breakdown.py's test world and rule judge).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
PARTS = ("parity", "ap", "nano", "dam")


def parity(n_cases: int = 20, seed: int = 0) -> list[dict]:
    """Per segmenter kind: cases run, mask pixels that differ from transformers' path, largest |score diff|."""
    import torch
    import transformers
    from conftest import build_tiny_segmenter
    from PIL import Image

    from groundscope.models.sam2_processing import Sam2Processing
    from groundscope.models.segmenter import FAMILIES, load_segmenter

    rng = np.random.RandomState(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sam", "sam2", "sam3"):
            folder = build_tiny_segmenter(kind, Path(tmp) / kind)
            seg = load_segmenter(folder)
            model = getattr(transformers, FAMILIES[seg.model.config.model_type][0]).from_pretrained(folder).eval()
            if kind == "sam":
                proc = transformers.SamProcessor.from_pretrained(folder)
            else:
                proc = Sam2Processing.from_folder(folder)
            diff_px, max_score, total_px = 0, 0.0, 0
            for _ in range(n_cases):
                h, w = rng.randint(40, 200, size=2)
                image = (rng.rand(h, w, 3) * 255).astype(np.uint8)
                n = rng.randint(1, 5)
                x1, y1 = rng.rand(n) * w * 0.6, rng.rand(n) * h * 0.6
                boxes = np.stack([x1, y1, x1 + 2 + rng.rand(n) * w * 0.4, y1 + 2 + rng.rand(n) * h * 0.4], 1)
                got = seg.segment(image, boxes=boxes)
                with torch.no_grad():
                    if kind == "sam":
                        inputs = proc(Image.fromarray(image), input_boxes=[boxes.tolist()], return_tensors="pt")
                        out = model(**inputs)
                        masks = proc.image_processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                                        inputs["reshaped_input_sizes"])[0]
                    else:
                        out = model(pixel_values=proc.pixel_values([Image.fromarray(image)]),
                                    **proc.prompts((h, w), boxes.tolist()))
                        masks = proc.masks(out.pred_masks[0], (h, w))
                best = out.iou_scores[0].argmax(-1)
                ref = masks[torch.arange(n), best].numpy()
                diff_px += int((ref != got.masks).sum())
                total_px += ref.size
                max_score = max(max_score, float(np.abs(out.iou_scores[0][torch.arange(n), best].numpy()
                                                        - got.scores).max()))
            rows.append({"kind": kind, "cases": n_cases, "pixels": total_px, "pixels_differing": diff_px,
                         "max_score_diff": max_score})
    return rows


def mask_ap(seed: int = 0, images: int = 30) -> dict:
    """Largest difference between groundscope's segm metrics and pycocotools' on random masks."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from groundscope.evaluate.coco import evaluate_coco
    from groundscope.masks import encode

    rng = np.random.RandomState(seed)
    h, w = 120, 160
    imgs, anns, dets = [], [], []
    for i in range(1, images + 1):
        imgs.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        for _ in range(rng.randint(1, 6)):
            m = np.zeros((h, w), bool)
            x, y = rng.randint(0, w - 20), rng.randint(0, h - 20)
            m[y : y + rng.randint(4, 40), x : x + rng.randint(4, 60)] = True
            rle = encode(m)[0]
            cat = int(rng.randint(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "segmentation": rle,
                         "area": float(m.sum()), "bbox": [x, y, 1, 1], "iscrowd": 0})
            for _ in range(rng.randint(0, 3)):  # jittered copies (some hits, some misses) and strays
                jm = np.roll(m, (rng.randint(-6, 7), rng.randint(-8, 9)), axis=(0, 1))
                dets.append({"image_id": i, "category_id": cat if rng.rand() < 0.8 else int(rng.randint(1, 4)),
                             "segmentation": encode(jm)[0], "score": float(rng.rand()), "bbox": [x, y, 1, 1]})
    gt = {"images": imgs, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = Path(tmp) / "gt.json"
        gt_path.write_text(json.dumps(gt))
        ours = evaluate_coco(gt_path, dets, iou_types=["segm"], per_class=False)
        coco = COCO(str(gt_path))
        # without 'bbox': pycocotools' loadRes would otherwise replace each segmentation by its box's polygon
        ev = COCOeval(coco, coco.loadRes([{k: v for k, v in d.items() if k != "bbox"} for d in dets]), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    diffs = {k: abs(float(ours[k]) - float(v)) for k, v in zip(keys, ev.stats)}
    return {"images": images, "ground_truth": len(anns), "detections": len(dets), "AP": float(ours["AP"]),
            "max_abs_diff": max(diffs.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="parity,ap", help=f"comma-separated, of {', '.join(PARTS)} (nano and dam need "
                                                          "a bundled sam-nano)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sam.md"))
    a = ap.parse_args()
    parts = [p for p in a.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; use {', '.join(PARTS)}")
    result: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
                    f"{__import__('os').cpu_count()} CPUs", "command": "python benchmarks/bench_sam.py "
                    + (f"--parts {a.parts}" if a.parts != "parity,ap" else "")}
    lines = [f"# Masks: parity, mask AP, sam-nano\n\n{result['date']}, {result['machine']}: "
             f"`{result['command'].strip()}`\n"]
    if "parity" in parts:
        rows = parity()
        result["parity"] = rows
        lines += ["## Segmenter parity with transformers (tiny random models, 20 random images each)\n",
                  "| model | mask pixels compared | pixels differing | largest score difference |", "|---|---|---|---|"]
        lines += [f"| {r['kind']} | {r['pixels']} | {r['pixels_differing']} | {r['max_score_diff']:.2e} |" for r in rows]
        lines.append("\nThe SAM 2 family's reference is the model's forward from pixels (transformers' SAM 2 image "
                     "processor needs torchvision; tests/test_segmenter.py holds groundscope's processing to it by a "
                     "fixture). A differing pixel is one whose upsampled logit lies within float rounding of the "
                     "threshold 0 (measured: 1e-12; random models' logits sit near 0).\n")
    if "ap" in parts:
        r = mask_ap()
        result["mask_ap"] = r
        lines += ["## Mask AP against pycocotools (random masks)\n",
                  f"{r['images']} images, {r['ground_truth']} ground-truth masks, {r['detections']} detections: "
                  f"segm AP {r['AP']:.4f}; largest difference from pycocotools' COCOeval over the 12 summary "
                  f"numbers: {r['max_abs_diff']:.1e}.\n"]
    if "nano" in parts or "dam" in parts:
        from bench_sam_masks import dam_through_segmenter, nano_iou  # the synthetic-world parts

        if "nano" in parts:
            result["nano"] = nano_iou()
            lines += result["nano"]["markdown"]
        if "dam" in parts:
            result["dam"] = dam_through_segmenter()
            lines += result["dam"]["markdown"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
