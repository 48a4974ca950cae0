"""sam-nano's masks on a synthetic test world drawn with a fresh seed: mean mask IoU with each object's exact
visible mask, given its tight box and given one click at a uniformly drawn pixel of the object, overall and by
COCO size (area < 32^2, < 96^2, larger).

    python benchmarks/bench_sam_nano.py [--model groundscope/models/bundled/sam-nano] [--seed 13] [--n 100]

Also run by benchmarks/bench_sam.py (part nano), which writes the table to benchmarks/results/sam.md. The
world: `groundscope synth --out data/sam_test13 --n 100 --seed 13 --split test --regions` (sam-nano trained on
seeds 11 and 12).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, float("inf")))


def _world(seed: int, n: int) -> Path:
    world = ROOT / "data" / f"sam_test{seed}"
    if not (world / "regions.json").exists():
        cli = str(Path(sys.executable).with_name("groundscope"))
        subprocess.run([cli, "synth", "--out", str(world), "--n", str(n), "--seed", str(seed), "--split", "test",
                        "--regions"], cwd=ROOT, check=True)
    return world


def evaluate_bundled(model: str = "sam-nano", seed: int = 13, n: int = 100) -> dict:
    """Mean IoU from the box and from one random click, overall and by size, with a markdown table."""
    from tqdm import tqdm

    from groundscope.data.regions import read_regions
    from groundscope.models.segmenter import load_segmenter
    from groundscope.train.sam import clicks_in, mask_box

    world = _world(seed, n)
    records = read_regions(world / "regions.json", world).records
    seg = load_segmenter(model)
    rng = np.random.default_rng(seed)
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(str(r.image), []).append(r)
    rows = []  # (area, iou from box, iou from one click)
    for path, regions in tqdm(groups.items(), desc="sam-nano", leave=False):
        masks = [m for m in (r.mask() for r in regions) if m.any()]
        prepared = seg.embed([path])[0]
        by_box = seg.segment(prepared, boxes=[mask_box(m) for m in masks]).masks
        by_click = seg.segment(prepared, points=[[tuple(clicks_in(m, 1, rng)[0])] for m in masks]).masks
        for m, b, c in zip(masks, by_box, by_click):
            rows.append((int(m.sum()), (m & b).sum() / max(1, (m | b).sum()), (m & c).sum() / max(1, (m | c).sum())))
    arr = np.array(rows, np.float64)
    out = {"model": model, "world": f"groundscope synth --n {n} --seed {seed} --split test --regions",
           "objects": len(rows), "box": float(arr[:, 1].mean()), "click": float(arr[:, 2].mean()), "by_size": {}}
    for name, lo, hi in SIZES:
        keep = (arr[:, 0] >= lo) & (arr[:, 0] < hi)
        out["by_size"][name] = {"objects": int(keep.sum()),
                                "box": float(arr[keep, 1].mean()) if keep.any() else None,
                                "click": float(arr[keep, 2].mean()) if keep.any() else None}
    md = ["## sam-nano: mean mask IoU with the exact mask (fresh-seed synthetic world)\n",
          f"`{out['world']}`, {out['objects']} objects; one click at a uniformly drawn pixel of the object.\n",
          "| objects | n | from the box | from one click |", "|---|---|---|---|",
          f"| all | {out['objects']} | {out['box']:.3f} | {out['click']:.3f} |"]
    for name, v in out["by_size"].items():
        if v["objects"]:
            md.append(f"| {name} | {v['objects']} | {v['box']:.3f} | {v['click']:.3f} |")
    md.append("")
    out["markdown"] = md
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam-nano")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--n", type=int, default=100)
    a = ap.parse_args()
    print("\n".join(evaluate_bundled(a.model, a.seed, a.n)["markdown"]))


if __name__ == "__main__":
    main()
