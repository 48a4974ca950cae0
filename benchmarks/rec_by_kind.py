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

from rich.progress import track

from groundscope.data.expressions import parse
from groundscope.evaluate.refexp import hits_at_k, load_refexp_ground_truth
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
    expressions, _ = load_refexp_ground_truth(args.world / "refexp.json")
    stats: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for e in track(expressions, description="refer"):
        dets = det.refer(args.world / e.image["file_name"], e.expression)
        hit = hits_at_k(dets.xyxy[:1].tolist(), [e.box], (1,), 0.5)[1]  # eval refexp's rule
        row = stats[kind_of(e.expression)]
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
