"""Nano training recipes side by side: each variant trained for the same steps on the same data, then scored on
the held-out synthetic test world (base / novel / synonyms AP50, REC P@1) — the variant table of the nano card.

    groundscope synth --out data/synth_train --n 4000 --seed 0 --split train
    groundscope synth --out data/synth_test --n 200 --seed 1 --split test
    python benchmarks/bench_recipes.py --steps 600 [--only cdn,base] [--out runs/recipes]

Every variant is ``configs/nano_synth.yaml`` plus the ``--set`` overrides listed in `VARIANTS` (plus the common
short-budget overrides: steps, warm-up, the untrained model to start from), run through the real CLI
(``groundscope train``, ``groundscope eval synth``) in a subprocess, so each row is exactly what a user reproduces
with the command it prints. Rows are appended to ``OUT/results.jsonl`` as they finish (an interrupted sweep keeps
them; a finished variant is skipped on a rerun) and the table is printed at the end and written to
``benchmarks/results/nano_recipes.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> (what it changes, overrides on top of configs/nano_synth.yaml)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("no denoising (the first nano's recipe, at the small input)", ["train.denoising.enabled=false"]),
    "cdn": ("+ contrastive denoising queries (100, label noise 0.5, box noise 1.0)",
            ["train.denoising.enabled=true"]),
    "cdn+text1": ("+ CDN, MiniLM's top layer (of 3) trained at 0.1x lr",
                  ["train.denoising.enabled=true",
                   "model.freeze=[model.text_backbone.embeddings,model.text_backbone.encoder.layer.0,"
                   "model.text_backbone.encoder.layer.1]",
                   "optim.text_lr_mult=0.1"]),
    "cdn+convnext": ("+ CDN, a ConvNeXt backbone of the same widths instead of the Swin "
                     "(groundscope build-nano --backbone convnext)",
                     ["train.denoising.enabled=true", "model.path=runs/nano_init256_convnext"]),
    "cdn+cls2": ("+ CDN, classification loss weight 2 (matching cost 2 as before)",
                 ["train.denoising.enabled=true", "loss.cls=2.0"]),
}


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")


def pick(only: str, known, what: str) -> list[str]:
    """The names of a comma-separated ``--only`` (all of `known` when empty); an unknown one exits naming the rest."""
    names = [n for n in only.split(",") if n] or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; known: {', '.join(known)}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/nano_synth.yaml")
    ap.add_argument("--init", default="runs/nano_init", help="the untrained model every variant starts from")
    ap.add_argument("--test", default="data/synth_test", help="held-out test world (groundscope synth --split test)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--set", dest="common", action="append", default=[], help="extra override for every variant")
    ap.add_argument("--out", type=Path, default=Path("runs/recipes"))
    args = ap.parse_args()
    names = pick(args.only, VARIANTS, "variant")
    exe = str(Path(sys.executable).parent / "groundscope")
    results = args.out / "results.jsonl"
    done = {}
    if results.exists():
        done = {r["name"]: r for r in map(json.loads, results.read_text().splitlines())}
    common = [f"model.path={args.init}", f"train.max_steps={args.steps}", f"schedule.warmup_steps={args.warmup}",
              "eval.every=0", "eval.at_end=false", "train.checkpoint_every=0", *args.common]
    for name in names:
        if name in done and done[name].get("steps") == args.steps:
            print(f"{name}: done before, skipped", flush=True)
            continue
        what, overrides = VARIANTS[name]
        out = args.out / name
        sets = [x for o in common + overrides + [f"train.out_dir={out}"] for x in ("--set", o)]
        cmd = [exe, "train", args.config, *sets]
        start = time.perf_counter()
        run(cmd, out.with_suffix(".log"))
        train_s = time.perf_counter() - start
        run([exe, "eval", "synth", args.test, "--model", str(out / "model"), "--out", str(out / "eval")],
            out.with_suffix(".log"))
        summary = json.loads((out / "eval" / "summary.json").read_text())
        row = {"name": name, "what": what, "steps": args.steps, "train_minutes": round(train_s / 60, 1),
               "overrides": common + overrides, **summary}
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
        print(json.dumps(row), flush=True)
    rows = [done[n] for n in VARIANTS if n in done]
    keys = ["base_AP", "base_AP50", "novel_AP50", "synonyms_AP50", "rec_P@1"]
    lines = ["| variant | what | steps | train min | " + " | ".join(keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['name']} | {r['what']} | {r['steps']} | {r['train_minutes']} | "
                     + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |")
    table = "\n".join(lines)
    print(table)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "nano_recipes.md").write_text(
        "# Nano recipe variants\n\n`python benchmarks/bench_recipes.py " + " ".join(sys.argv[1:]) + "`, common "
        "overrides: `" + " ".join(common) + "`. Scored with `groundscope eval synth` on the validation world "
        f"`{args.test}` (the recipe is chosen on it; the bundled model's final figures come from a world drawn "
        "with another seed, `benchmarks/bench_nano.py`).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
