"""Describe Anything on the synthetic world: DAM and its ablations, scored with synthetic DLC-Bench questions.

    python benchmarks/bench_dam.py                       # trains what is missing, then evaluates every arm
    python benchmarks/bench_dam.py --arms base,full      # a subset

Arms (every trained arm: `configs/dam_nano.yaml` from the same base VLM, same data, same steps):
    base      the base VLM on the focal crop, no DAM training (what DAM starts from: zero-initialised parts)
    full      DAM: focal crop + mask embedding + context adapters (+ LoRA on the LM)
    nocrop    without the focal crop: the full image and its mask only (dam.focal_crop false)
    noadapt   without the context adapters: their gates stay at zero (backbone.adapters frozen)
    boxmix    DAM trained with half of its regions given as their filled box (dam.box_prob 0.5)

Test world: `groundscope synth --n 60 --seed 4 --split test --regions` (a seed no other measurement uses).
Each region is described greedily from its exact mask, and again from its filled box (what `groundscope describe
--box` and `--expression` send: the "box" columns); `groundscope.evaluate.dlc` asks the synthetic DLC questions
(colour, shape, pattern, size, one relation; negatives: a neighbour's colour, an absent shape) and the rule judge
answers them from the description. Small objects: box area < 48^2 px, the focal crop's minimum side
(COCO's 32^2 leaves 3 of 264 regions here; 48^2 leaves 70).

Prints a markdown table and writes it to benchmarks/results/dam_synth.md (with --write).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
SMALL = 48 * 48
CLI = [str(Path(sys.executable).with_name("groundscope"))]  # the venv's console script
ARMS = {
    "base": ("the base VLM on the focal crop (DAM's starting point)", None),
    "full": ("DAM: focal crop + mask embedding + context adapters", []),
    "nocrop": ("without the focal crop (full image + mask only)", ["dam.focal_crop=false"]),
    "noadapt": ("without the context adapters (gates kept at 0)", ["+freeze=backbone.adapters"]),
    "boxmix": ("DAM trained with half of the regions given as their box", ["dam.box_prob=0.5"]),
}


def sh(cmd: list[str], log: Path, append: bool = False) -> float:
    t = time.time()
    with open(log, "a" if append else "w") as f:
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.time() - t


def train_arm(arm: str, out: Path, base_vlm: str, steps: int | None, train_data: str | None = None,
              vision_lr_mult: float | None = None, extra: list[str] = ()) -> tuple[float, bool] | None:
    """Train one arm unless its model exists: (minutes spent, resumed), None when reused. An arm cut off before its
    end (a checkpoint in OUT/ARM/checkpoints, no model yet) goes on from its last checkpoint (`train --resume`);
    its minutes are then this run's part only.

    `vision_lr_mult` unfreezes the ViT (`backbone.vision`, frozen in configs/dam_nano.yaml) at that multiple of
    the learning rate, in every arm; an arm's "+freeze=" entries add to the frozen prefixes either way.
    `extra`: more `--set KEY=VALUE` settings for every arm (not model.freeze: use `vision_lr_mult`).
    """
    if (out / "model" / "config.json").exists():
        return None
    cmd = CLI + ["train", "configs/dam_nano.yaml", "--set", f"train.out_dir={out}",
           "--set", f"model.path={base_vlm}", "--set", "eval.every=0"]
    if steps:
        cmd += ["--set", f"train.max_steps={steps}"]
    if train_data:
        cmd += ["--set", f"data.train.path={train_data}"]
    freeze = ["backbone.vision"]
    if vision_lr_mult is not None:
        freeze = []
        cmd += ["--set", f"optim.backbone_lr_mult={vision_lr_mult}"]
    for s in ARMS[arm][1]:
        if s.startswith("+freeze="):
            freeze.append(s.removeprefix("+freeze="))
        else:
            cmd += ["--set", s]
    cmd += ["--set", f"model.freeze=[{', '.join(freeze)}]"]
    for s in extra:
        cmd += ["--set", s]
    resume = (out / "checkpoints" / "last.pt").exists()
    cmd += ["--resume"] * resume
    print(f"[{arm}] {'resuming' if resume else 'training'}: groundscope {' '.join(cmd[1:])}", flush=True)
    return sh(cmd, out.with_suffix(".log"), append=resume) / 60, resume


PROMPTS = ("mask", "box", "point")  # how describe_world gives each region


def click_point(mask) -> tuple[float, float]:
    """(x, y) of the mask's most interior pixel (farthest from its outline; the first in row-major order on a
    tie): where a user would click the object."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(np.asarray(mask, dtype=bool), 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(x), float(y)


def describe_world(model, regions, batch: int = 16, prompt: str = "mask") -> dict[str, str]:
    """region id -> greedy description, for every region of the test world, each region given as `prompt`: its
    exact mask, its box (the filled rectangle a box prompt becomes) or one click at its most interior pixel (the
    small disc a points prompt becomes)."""
    from groundscope.describe.focal import filled_box, region_to_mask

    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")

    def region_mask(r):
        m = r.mask()
        if prompt == "box":
            return filled_box(m)
        if prompt == "point":
            return region_to_mask(m.shape, points=[click_point(m)])
        return m

    out = {}
    for i in tqdm(range(0, len(regions), batch), desc="describe", leave=False):
        chunk = regions[i:i + batch]
        with torch.inference_mode():
            texts = model.generate([str(r.image) for r in chunk], [region_mask(r) for r in chunk], temperature=0.0,
                                   max_new_tokens=96)
        out.update({str(r.id): t for r, t in zip(chunk, texts)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="base,full,nocrop,noadapt")
    ap.add_argument("--world", default="data/synth_seed4")
    ap.add_argument("--base-vlm", default="runs/base_vlm")
    ap.add_argument("--out", default="runs/dam_bench")
    ap.add_argument("--steps", type=int, default=None, help="override train.max_steps of every trained arm")
    ap.add_argument("--train-data", default=None,
                    help="regions.json to train every arm on (default: the config's, data/synth_train's)")
    ap.add_argument("--vision-lr-mult", type=float, default=None,
                    help="train the ViT too, at this multiple of the learning rate (default: frozen, as the config)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a configs/dam_nano.yaml setting for every trained arm (repeatable), e.g. dam.lora=null")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/dam_synth.md")
    a = ap.parse_args()
    if any(s.startswith("model.freeze") for s in a.set):
        ap.error("--set model.freeze: the arms set it themselves; use --vision-lr-mult to train the ViT")

    from groundscope.data.coco import read_coco
    from groundscope.data.regions import read_regions
    from groundscope.describe.model import load_dam
    from groundscope.evaluate.dlc import RuleJudge, evaluate_dlc, synthetic_bench

    world = ROOT / a.world
    if not (world / "regions.json").exists():
        subprocess.run(CLI + ["synth", "--out", str(world), "--n", "60", "--seed", "4",
                        "--split", "test", "--regions"], cwd=ROOT, check=True)
    regions = read_regions(world / "regions.json", world).records
    records = read_coco(world / "coco_all.json").images
    bench = synthetic_bench(records, source=str(world / "coco_all.json"))
    missing = [r.id for r in regions if str(r.id) not in bench.qa]
    if missing:
        raise SystemExit(f"regions.json and coco_all.json of {world} disagree on annotation ids ({missing[:5]} ...)")

    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    rows, minutes = [], {}
    for arm in a.arms.split(","):
        if arm == "base":
            model = load_dam(ROOT / a.base_vlm, from_base_vlm=True)
        else:
            minutes[arm] = train_arm(arm, out / arm, a.base_vlm, a.steps, a.train_data, a.vision_lr_mult, a.set)
            model = load_dam(out / arm / "model")
        model.eval()
        descriptions = describe_world(model, regions)
        res = evaluate_dlc(descriptions, bench.qa, RuleJudge(), class_names=bench.class_names, areas=bench.areas,
                           small_area=SMALL)
        boxed = evaluate_dlc(describe_world(model, regions, prompt="box"), bench.qa, RuleJudge(),
                             class_names=bench.class_names)
        small = res.small_objects
        rows.append((arm, ARMS[arm][0], res.pos, res.neg, res.avg, small.pos if small else float("nan"),
                     small.neg if small else float("nan"), small.avg if small else float("nan"), boxed.pos,
                     boxed.avg))
        example = next(iter(descriptions.values()))
        print(f"[{arm}] Pos {res.pos:.3f} Neg {res.neg:.3f} Avg {res.avg:.3f}; from boxes Pos {boxed.pos:.3f} "
              f"Avg {boxed.avg:.3f}; e.g. {example!r}", flush=True)

    n_small = sum(1 for v in bench.areas.values() if v < SMALL)
    lines = ["# Describe Anything on the synthetic world (synthetic DLC-Bench questions, rule judge)", "",
             f"`python benchmarks/bench_dam.py {' '.join(sys.argv[1:])}`; test world "
             f"`{a.world}` (seed 4, {len(regions)} regions, {n_small} small: box area < 48^2 px). Every trained arm starts from the same "
             f"base VLM (`{a.base_vlm}`, `groundscope pretrain-vlm`; its settings in `{a.base_vlm}/train_log.json`) with "
             "`configs/dam_nano.yaml`.", "",
             "The box columns: every region given as its filled box instead of its mask.", "",
             "| arm | what | Pos | Neg | Avg | small Pos | small Neg | small Avg | box Pos | box Avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | " + " | ".join(f"{v:.3f}" for v in r[2:]) + " |")
    spent = {k: v for k, v in minutes.items() if v is not None}
    if spent:
        lines += ["", "Training minutes: " + ", ".join(
            f"{k} {m:.1f}" + (" (resumed: this run's part only)" if resumed else "") for k, (m, resumed) in spent.items())
            + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        import json

        (ROOT / "benchmarks" / "results" / "dam_synth.md").write_text(text, encoding="utf-8")
        keys = ("pos", "neg", "avg", "small_pos", "small_neg", "small_avg", "box_pos", "box_avg")
        (ROOT / "benchmarks" / "results" / "dam_synth.json").write_text(json.dumps(
            {r[0]: {k: round(v, 4) for k, v in zip(keys, r[2:])} for r in rows}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
