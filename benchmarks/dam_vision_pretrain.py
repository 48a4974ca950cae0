"""Can the base VLM's from-scratch vision tower learn shapes? `pretrain_vision` arms scored on another world.

    python benchmarks/dam_vision_pretrain.py [--arms p16,p16-jitter,p8-jitter,p16-jitter-sincos] [--steps 1500]
                                             [--train data/synth_train/groundingcap.jsonl [MORE ...]]

With several --train files every arm runs on each (e.g. a 4,000- and a 12,000-image world: does more data
generalise better at the same steps?).

Each arm builds the base VLM of `groundscope pretrain-vlm` (SigLIP tower, 128 px input, width 192, 4 layers; the
arms vary the patch size, the jitter and the position embedding's init) and runs its vision stage
(`groundscope.train.base_vlm.pretrain_vision`: colour and shape heads on the centre of the focal crop's token grid,
batch 64, AdamW lr 1e-3, cosine) on the training world's regions. Every 250 steps the heads score the regions
of the validation world (seed 1; the DAM test world, seed 4, is left for bench_dam.py). Chance is 1/8 for shape.
Table: stdout, and appended to ``benchmarks/results/dam_vision.md``.
"""

from __future__ import annotations

import argparse
import time
from itertools import product
from pathlib import Path

import torch

from bench_recipes import REPO, pick

ARMS = {  # name: (what, patch size, jitter, position init)
    "p16": ("patch 16 (8x8 tokens), the exact crops", 16, 0.0, "random"),
    "p16-jitter": ("patch 16, boxes jittered by up to 25 %", 16, 0.25, "random"),
    "p8-jitter": ("patch 8 (16x16 tokens), boxes jittered by up to 25 %", 8, 0.25, "random"),
    "p16-jitter-sincos": ("patch 16, jittered boxes, position embedding initialised 2-D sine-cosine", 16, 0.25,
                          "sincos"),
}


def main() -> None:
    from groundscope.train.base_vlm import build_base_vlm, pretrain_vision, vlm_samples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default="", help="comma-separated arm names (default: all)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--train", type=Path, nargs="+", default=[Path("data/synth_train/groundingcap.jsonl")],
                    help="training worlds' groundingcap.jsonl (each arm runs on each)")
    ap.add_argument("--val", type=Path, default=Path("data/synth_test/groundingcap.jsonl"))
    ap.add_argument("--lm", type=Path, default=Path("runs/world_lm"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    val = vlm_samples(args.val, captions=False)
    rows = []
    arms = pick(args.arms, ARMS, "arm")
    worlds = {train: vlm_samples(train, captions=False) for train in args.train}  # each file parsed once
    for (train, samples), arm in product(worlds.items(), arms):
        what, patch, jitter, position_init = ARMS[arm]
        n_images = len({s.image for s in samples})
        name = f"{arm}, {n_images} images" if len(args.train) > 1 else arm
        what = f"{what}; {len(samples)} crops of {n_images} images (`{train}`)"
        model, _ = build_base_vlm(args.lm, [s.text for s in samples], patch_size=patch,
                                  position_init=position_init)
        t0 = time.perf_counter()
        log = pretrain_vision(model, samples, args.steps, jitter=jitter, val_samples=val,
                              bar=lambda step, info: print(f"{name} {step} {info}", flush=True)
                              if step % 50 == 0 else None)
        minutes = (time.perf_counter() - t0) / 60
        curve = [r for r in log if r["type"] == "vision_val"]
        last = [r["accuracy"] for r in log if r["type"] == "vision"][-20:]
        rows.append((name, what, minutes, [sum(a[k] for a in last) / len(last) for k in range(2)], curve))
    lines = ["| arm | what | minutes | train batch colour / shape (last 20 steps) | validation colour / shape by step |",
             "|---|---|---|---|---|"]
    for name, what, minutes, train, curve in rows:
        val_cells = ", ".join(f"{r['step']}: {r['accuracy'][0]:.2f} / {r['accuracy'][1]:.2f}" for r in curve)
        lines.append(f"| {name} | {what} | {minutes:.1f} | {train[0]:.2f} / {train[1]:.2f} | {val_cells} |")
    table = "\n".join(lines)
    print(table)
    out = REPO / "benchmarks" / "results" / "dam_vision.md"
    # Each run adds its section: earlier arms stay beside it (a run takes tens of minutes per arm).
    head = "" if out.exists() else "# DAM base VLM: vision pretraining arms\n"
    with open(out, "a", encoding="utf-8") as f:
        f.write(head + "\n`python benchmarks/dam_vision_pretrain.py "
                f"--arms {','.join(arms)} --steps {args.steps} --train "
                f"{' '.join(map(str, args.train))}` (validation: the {len([s for s in val if s.box])} regions of "
                f"`{args.val}`).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
