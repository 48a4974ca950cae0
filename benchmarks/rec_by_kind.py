"""Referring-expression Precision@1 of a model split by what the expression uses (where REC fails).

    python benchmarks/rec_by_kind.py --model runs/nano_ft/model [--world data/synth_test]

Each expression of the world's ``refexp.json`` is parsed back with `groundscope.data.expressions.parse` and
put in one group: ``relation`` ("the red circle left of the blue star"), ``superlative:<word>`` ("the leftmost
star"), ``detailed`` (a size or texture word), ``attribute`` (colour and shape) or ``attribute:partial`` (colour
or shape alone). A hit is the top box of `GroundingDetector.refer` at IoU >= 0.5 with the target, the rule of
``groundscope eval synth``'s ``rec_P@1``.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from rich.progress import track

from groundscope.data.expressions import parse
from groundscope.detections import box_iou
from groundscope.models.loading import load_detector


def kind_of(text: str) -> str:
    e = parse(text)
    if e.relation:
        return "relation"
    if e.target.superlative:
        return f"superlative:{e.target.superlative}"
    if e.target.size or e.target.texture:
        return "detailed"
    return "attribute" if e.target.shape and e.target.colour else "attribute:partial"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano")
    ap.add_argument("--world", type=Path, default=Path("data/synth_test"), help="a `groundscope synth` folder")
    ap.add_argument("--json", type=Path, default=None, help="write {kind: [hits, total]} here")
    args = ap.parse_args()
    det = load_detector(args.model)
    data = json.loads((args.world / "refexp.json").read_text())
    target = {a["image_id"]: a["bbox"] for a in data["annotations"]}
    stats: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for im in track(data["images"], description="refer"):
        x, y, w, h = target[im["id"]]
        dets = det.refer(args.world / im["file_name"], im["caption"])
        hit = len(dets) > 0 and box_iou(np.asarray([[x, y, x + w, y + h]], np.float32), dets.xyxy[:1])[0, 0] >= 0.5
        row = stats[kind_of(im["caption"])]
        row[0] += bool(hit)
        row[1] += 1
    hits, total = sum(v[0] for v in stats.values()), sum(v[1] for v in stats.values())
    print(f"{args.model} on {args.world}: P@1 {hits / total:.3f} ({hits}/{total})")
    for kind, (h, n) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        print(f"  {kind:<24}{h:>5}/{n:<5}{h / n:.2f}")
    if args.json:
        args.json.write_text(json.dumps(dict(stats), indent=1) + "\n")


if __name__ == "__main__":
    main()
