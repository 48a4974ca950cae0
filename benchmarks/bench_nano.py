"""The bundled nano model's quality on a freshly drawn synthetic test world, and on the `make demo` image.

    python benchmarks/bench_nano.py                  # ~3 minutes on 2 CPU cores
    python benchmarks/bench_nano.py --model runs/nano/model --seed 5

Draws a test world (``groundscope synth --n 200 --seed 2 --split test`` by default: seed 0 is the training
world and seed 1 the validation world that training and recipe choices looked at, so seed 2 was never seen by
anything), runs `evaluate_synth_world` on it, and prints each of the five numbers beside the value recorded in
``groundscope/models/bundled/nano/results.json`` (same seed, same n) and the issue's target. Then the demo
check: on ``examples/synth_shapes.png`` every object must get its own name as the best-scoring detection that
overlaps it (IoU >= 0.5), scoring >= 0.3, and no other name may score >= 0.3 on it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from groundscope.data.synth import generate_world
from groundscope.detections import box_iou
from groundscope.evaluate.synth import evaluate_synth_world
from groundscope.models.hub import BUNDLED_DIR
from groundscope.models.loading import load_detector

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"base_AP50": 0.8, "novel_AP50": 0.6, "synonyms_AP50": 0.4, "rec_P@1": 0.8}


def demo_check(detector, threshold: float = 0.3) -> list[dict]:
    """Per object of the demo image: the best detection overlapping it and whether the demo is right there."""
    example = json.loads((REPO / "examples" / "synth_shapes.json").read_text())
    classes = example["classes"]
    dets = detector.detect(REPO / "examples" / "synth_shapes.png", classes, box_threshold=0.0, max_detections=300)
    rows = []
    for obj in example["objects"]:
        iou = box_iou(np.asarray([obj["box"]], dtype=np.float32), dets.xyxy)[0] if len(dets) else np.zeros(0)
        over = iou >= 0.5
        best = int(np.argmax(np.where(over, dets.scores, -1.0))) if over.any() else None
        wrong = [(dets.labels[i], float(dets.scores[i])) for i in np.nonzero(over)[0]
                 if dets.labels[i] != obj["name"] and dets.scores[i] >= threshold]
        ok = (best is not None and dets.labels[best] == obj["name"] and dets.scores[best] >= threshold and not wrong)
        rows.append({"name": obj["name"], "box": obj["box"], "ok": bool(ok),
                     "best": None if best is None else (dets.labels[best], round(float(dets.scores[best]), 3)),
                     "other_names_over_threshold": [(n, round(s, 3)) for n, s in wrong]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano", help="model to measure (default: the bundled nano)")
    ap.add_argument("--seed", type=int, default=2, help="seed of the test world (default 2: never used before)")
    ap.add_argument("--n", type=int, default=200, help="images in the test world")
    ap.add_argument("--out", type=Path, default=None, help="keep the evaluation outputs here")
    ap.add_argument("--json", type=Path, default=None, help="write the measured numbers here")
    args = ap.parse_args()
    recorded = json.loads((BUNDLED_DIR / "nano" / "results.json").read_text())
    same_world = recorded.get("test_seed") == args.seed and recorded.get("test_images") == args.n
    detector = load_detector(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "synth_test"
        generate_world(world, args.n, seed=args.seed, split="test")
        start = time.perf_counter()
        result = evaluate_synth_world(detector, world, args.out or Path(tmp) / "eval", progress=True)
        seconds = time.perf_counter() - start
    print(f"\n{args.model} on a synthetic test world ({args.n} images, seed {args.seed}), {seconds:.0f} s for the "
          f"four parts" + ("" if same_world else "; the card's figures are for another world: ratio left out"))
    print(f"{'metric':<15}{'measured':>10}{'card':>10}{'ratio':>8}{'target':>8}")
    for key, value in result["summary"].items():
        card = recorded.get(key)
        ratio = f"{value / card:>8.3f}" if same_world and card else f"{'':>8}"
        target = f"{TARGETS[key]:.2f}" if key in TARGETS else ""
        print(f"{key:<15}{value:>10.4f}{card if card is not None else float('nan'):>10.4f}{ratio}{target:>8}")
    rows = demo_check(detector)
    print(f"\nmake demo image: {sum(r['ok'] for r in rows)}/{len(rows)} objects right "
          "(own name best at IoU >= 0.5, score >= 0.3, no other name >= 0.3)")
    for r in rows:
        print(f"  {'ok ' if r['ok'] else 'BAD'} {r['name']:<15} best {r['best']}  others>=0.3 "
              f"{r['other_names_over_threshold']}")
    if args.json:
        args.json.write_text(json.dumps({**result["summary"], "test_seed": args.seed, "test_images": args.n,
                                         "demo_objects_right": sum(r["ok"] for r in rows),
                                         "demo_objects": len(rows)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
