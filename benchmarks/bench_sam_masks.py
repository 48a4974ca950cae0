"""The synthetic-world parts of benchmarks/bench_sam.py: sam-nano's masks (`nano_iou`) and dam-nano prompted
through a segmenter (`dam_through_segmenter`).

dam-nano is scored on DAM's synthetic DLC test world (`groundscope synth --n 60 --seed 4 --split test --regions`,
the world of benchmarks/bench_dam.py and dam_breakdown.py, which sam-nano never trains on), each region given
five ways: its exact mask; sam-nano's mask from the region's box; sam-nano's mask from one click at its most
interior pixel (`bench_dam.click_point`); and the stand-ins used without a segmenter, the filled box and the
click's small disc. Same greedy descriptions and rule judge as bench_dam.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

DAM_WORLD = ROOT / "data" / "synth_seed4"
PROMPTS = {
    "mask": "exact mask",
    "sam-box": "sam-nano mask from the box",
    "sam-click": "sam-nano mask from one click",
    "box": "filled box (no segmenter)",
    "point": "one click as a disc (no segmenter)",
}


def _dam_world() -> Path:
    if not (DAM_WORLD / "regions.json").exists():
        cli = str(Path(sys.executable).with_name("groundscope"))
        subprocess.run([cli, "synth", "--out", str(DAM_WORLD), "--n", "60", "--seed", "4", "--split", "test",
                        "--regions"], cwd=ROOT, check=True)
    return DAM_WORLD


def dam_through_segmenter(segmenter: str = "sam-nano", describer: str = "dam-nano", batch: int = 16) -> dict:
    """dam-nano's synthetic DLC Pos / Neg / Avg with each region given as each of `PROMPTS`."""
    import torch
    from tqdm import tqdm

    from bench_dam import SMALL, click_point
    from groundscope.data.coco import read_coco
    from groundscope.data.regions import read_regions
    from groundscope.describe.api import load_describer
    from groundscope.describe.focal import filled_box, region_to_mask
    from groundscope.evaluate.dlc import RuleJudge, evaluate_dlc, synthetic_bench
    from groundscope.images import load_image
    from groundscope.models.segmenter import load_segmenter

    world = _dam_world()
    regions = read_regions(world / "regions.json", world).records
    bench = synthetic_bench(read_coco(world / "coco_all.json").images, source=str(world / "coco_all.json"))
    dam = load_describer(describer, device="cpu").model.eval()
    seg = load_segmenter(segmenter)
    embedded: dict[str, dict] = {}

    def sam(r, **prompt):
        key = str(r.image)
        if key not in embedded:
            embedded.clear()  # regions come image by image: keep one embedding
            embedded[key] = seg.embed([load_image(r.image)])[0]
        return seg.segment(embedded[key], **prompt).masks[0]

    def mask_for(r, how: str) -> np.ndarray:
        m = r.mask()
        if how == "box":
            return filled_box(m)
        if how == "point":
            return region_to_mask(m.shape, points=[click_point(m)])
        if how == "sam-box":
            ys, xs = np.nonzero(m)
            return sam(r, boxes=[[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
        if how == "sam-click":
            return sam(r, points=[[click_point(m)]])
        return m

    rows, ious = [], {}
    for how, label in PROMPTS.items():
        masks = {str(r.id): mask_for(r, how) for r in regions}
        if how.startswith("sam"):
            ious[how] = float(np.mean([(masks[str(r.id)] & r.mask()).sum() / max(1, (masks[str(r.id)] | r.mask()).sum())
                                       for r in regions]))
        texts: dict[str, str] = {}
        for i in tqdm(range(0, len(regions), batch), desc=how, leave=False):
            chunk = regions[i:i + batch]
            given = [masks[str(r.id)] for r in chunk]
            empty = [not m.any() for m in given]
            with torch.inference_mode():
                out = dam.generate([str(r.image) for r, e in zip(chunk, empty) if not e],
                                   [m for m, e in zip(given, empty) if not e], temperature=0.0, max_new_tokens=96)
            it = iter(out)
            texts.update({str(r.id): ("" if e else next(it)) for r, e in zip(chunk, empty)})  # empty mask: no text
        res = evaluate_dlc(texts, bench.qa, RuleJudge(), class_names=bench.class_names, areas=bench.areas,
                           small_area=SMALL)
        rows.append({"prompt": how, "label": label, "pos": res.pos, "neg": res.neg, "avg": res.avg,
                     "mask_iou": ious.get(how)})
        print(f"{label}: Pos {res.pos:.3f} Neg {res.neg:.3f} Avg {res.avg:.3f}", flush=True)
    md = ["## dam-nano prompted through sam-nano (synthetic DLC, rule judge)\n",
          f"Test world: `groundscope synth --n 60 --seed 4 --split test --regions` ({len(regions)} regions; the world "
          "of benchmarks/bench_dam.py). Each region given as:\n",
          "| region given as | mean mask IoU with the exact mask | Pos | Neg | Avg |", "|---|---|---|---|---|"]
    for r in rows:
        iou = "-" if r["mask_iou"] is None else f"{r['mask_iou']:.3f}"
        md.append(f"| {r['label']} | {iou} | {r['pos']:.3f} | {r['neg']:.3f} | {r['avg']:.3f} |")
    md.append("")
    return {"rows": rows, "regions": len(regions), "markdown": md}


def nano_iou() -> dict:
    """sam-nano's mean mask IoU from boxes and clicks on a fresh-seed world (benchmarks/bench_sam_nano.py)."""
    from bench_sam_nano import evaluate_bundled  # written with the sam-nano trainer

    return evaluate_bundled()
