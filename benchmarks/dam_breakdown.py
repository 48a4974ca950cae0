"""Synthetic DLC scores of DAM models broken down by question: which attribute costs the points.

    python benchmarks/dam_breakdown.py runs/dam_bench4/full/model runs/base_vlm4:base
    (a folder with the suffix :base is a base VLM, described on the focal crop as bench_dam.py's `base` arm)

Same test world, descriptions and rule judge as benchmarks/bench_dam.py. For each model it prints Pos / Neg / Avg,
the share of regions whose description names the right shape (the recognition question; a miss caps the
region's positive scores at 0), that share by the object's size word (small / medium / large), and the mean score
of each positive question (colour, shape, pattern, size, relation: +1 right, -1 a wrong word stated, 0 not
stated), after the cap. With --boxes, each model is also measured with every region given as its box (a filled
rectangle, what a box prompt gives) instead of its exact mask: how much the model reads the mask's outline. With
--points, also with every region given as one click at its most interior pixel (the small disc a points prompt
becomes; `bench_dam.click_point`).

    python benchmarks/dam_breakdown.py runs/base_vlm:base runs/dam_bench/full/model --boxes --points

A second table gives the recognition by how much the encoder's resize stretches each region's focal crop (its
longer side over its shorter: a crop clamped at the image's border is not square, and DAM's reference stretches it
to the square input, so a circle there reaches the tower as an ellipse). The bins are those of DAM's clamped crop
for every model; a model trained with `--crop-mode square` sees no stretch, and its row shows whether the regions
that would have been stretched are still the hard ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dam import ROOT, SMALL, describe_world  # noqa: E402

SHOWN = {"mask": "", "box": " (box as mask)", "point": " (one click)"}
STRETCH_BINS = ((1.0, 1.15), (1.15, 1.5), (1.5, float("inf")))  # focal-crop side ratios


def crop_stretch(mask) -> float:
    """Longer over shorter side of the mask's clamped focal crop (DAM's; 1.0: square, reaches the encoder
    undistorted)."""
    from groundscope.describe.focal import focal_crop

    c = focal_crop(mask)
    w, h = c.x1 - c.x0, c.y1 - c.y0
    return max(w, h) / min(w, h)

KINDS = ("colour", "shape", "pattern", "size", "relation")  # the order of `region_questions`' positives
SIZES = ("small", "medium", "large")


def main() -> None:
    from groundscope.data.coco import read_coco
    from groundscope.data.regions import read_regions
    from groundscope.describe.model import load_dam
    from groundscope.evaluate.dlc import RuleJudge, evaluate_dlc, synthetic_bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="DIR[:base]", help="DAM folders (':base' for a base VLM)")
    ap.add_argument("--boxes", action="store_true",
                    help="also describe every region from its box (a box prompt) instead of its exact mask")
    ap.add_argument("--points", action="store_true",
                    help="also describe every region from one click at its most interior pixel (a points prompt)")
    a = ap.parse_args()
    world = ROOT / "data" / "synth_seed4"
    if not (world / "regions.json").exists():
        raise SystemExit(f"{world} is missing: run benchmarks/bench_dam.py first (it generates the test world)")
    regions = read_regions(world / "regions.json", world).records
    bench = synthetic_bench(read_coco(world / "coco_all.json").images, source=str(world / "coco_all.json"))
    annotations = json.loads((world / "coco_all.json").read_text())["annotations"]
    attributes = {str(ann["id"]): ann["attributes"] for ann in annotations}
    size_of = {rid: attrs["size"] for rid, attrs in attributes.items()}
    unoccluded = {rid for rid, attrs in attributes.items() if attrs.get("visible", 1.0) >= 0.95}
    print("| model | Pos | Neg | Avg | recognised | " + " | ".join(f"{s} rec." for s in SIZES) + " | "
          + " | ".join(KINDS) + " |")
    print("|---|---|---|---|---|" + "---|" * (len(SIZES) + len(KINDS)))
    stretch = {str(r.id): crop_stretch(r.mask()) for r in regions}
    by_stretch = []
    prompts = ["mask"] + ["box"] * a.boxes + ["point"] * a.points
    for arg, prompt in [(m, p) for m in a.models for p in prompts]:
        path, _, kind = arg.partition(":")
        model = load_dam(ROOT / path, from_base_vlm=kind == "base")
        model.eval()
        res = evaluate_dlc(describe_world(model, regions, prompt=prompt), bench.qa, RuleJudge(),
                           class_names=bench.class_names, areas=bench.areas, small_area=SMALL)
        per = {k: [] for k in KINDS}
        for r in res.per_region.values():
            for k, v in zip(KINDS, r.positives):
                per[k].append(v)
        recognised = sum(bool(r.recognised) for r in res.per_region.values()) / len(res.per_region)
        by_size = {s: [bool(r.recognised) for rid, r in res.per_region.items() if size_of[rid] == s] for s in SIZES}
        name = arg + SHOWN[prompt]
        for label, keep in (("", res.per_region), (", regions >= 95 % visible", unoccluded)):
            by_stretch.append((name + label, [[bool(r.recognised) for rid, r in res.per_region.items()
                                               if rid in keep and lo <= stretch[rid] < hi] for lo, hi in STRETCH_BINS]))
        print(f"| {name} | {res.pos:.3f} | {res.neg:.3f} | {res.avg:.3f} | {recognised:.2f} | "
              + " | ".join(f"{sum(v) / len(v):.2f} ({len(v)})" if v else "-" for v in by_size.values()) + " | "
              + " | ".join(f"{sum(v) / len(v):.2f}" if v else "-" for v in per.values()) + " |", flush=True)
    print("\nRecognised, by the stretch of the region's clamped focal crop (DAM's; longer side / shorter side; "
          "a model with square crops sees none):\n")
    print("| model | " + " | ".join(f"{lo:g}-{hi:g}" if hi != float("inf") else f">= {lo:g}" for lo, hi in STRETCH_BINS)
          + " |")
    print("|---|" + "---|" * len(STRETCH_BINS))
    for name, bins in by_stretch:
        print(f"| {name} | " + " | ".join(f"{sum(v) / len(v):.2f} ({len(v)})" if v else "-" for v in bins) + " |")


if __name__ == "__main__":
    main()
