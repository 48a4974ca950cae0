"""The nano's second training stage: arms that continue the 3000-step model for the same number of steps.

    groundscope train configs/nano_synth.yaml                          # stage 1 -> runs/nano/model
    python benchmarks/bench_nano_stage2.py [--from runs/nano/model] [--steps 900] [--only continue,paraphrases]

The stage-1 model is first copied with `groundscope build-nano EXT --extend FROM` (its vocabulary gains MiniLM's
pieces of the training paraphrases; nothing else changes, and canonical prompts score exactly as before). Every
arm is then ``groundscope train configs/nano_synth.yaml`` with the common overrides (start from EXT, `--steps`
steps, a fresh warm-up to lr 3e-4 and cosine decay) plus its own, run through the real CLI in a subprocess. Each
model is scored by ``benchmarks/bench_nano.py --json`` on the validation world (seed 1: the arm is chosen on it)
and on the held-out world (seed 2: reported, chosen on by nothing), as is the stage-1 model itself.

A finished step is skipped on a rerun (a model folder or a score file that exists), so an interrupted comparison
resumes. The table goes to stdout and to ``benchmarks/results/nano_stage2.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_recipes import REPO, pick, run
from rec_by_kind import kind_of

D = "data/synth_train"
_DET = f"{{path: {D}/odvg_det.jsonl, label_map: {D}/label_map.json}}"
_REF = f"{{path: {D}/refexp.json, format: refexp}}"
_HARD = f"{{path: {{hard}}, format: refexp, image_root: {D}}}"
ARMS: dict[str, tuple[str, list[str]]] = {
    "continue": ("the same recipe, continued", []),
    "paraphrases": ("+ training-only colour paraphrases in class names and expressions (p 0.5)",
                    [f"data.paraphrases={D}/paraphrases.json"]),
    "refexp2": ("+ referring expressions listed twice in the data mix (39 % -> 56 % of samples)",
                [f"data.train=[{_DET}, {_DET}, {_DET}, {{path: {D}/odvg_grounding.jsonl, mode: grounding}}, "
                 f"{_REF}, {_REF}]"]),
    "flipexpr": ("+ referring expressions flipped too, left/right words swapped (p 0.5)",
                 ["data.flip_expressions=true"]),
    # {hard} is written by `write_hard_expressions` before the arm trains
    "hardexp": ("+ the relation and superlative expressions listed twice more in the data mix",
                [f"data.train=[{_DET}, {_DET}, {_DET}, {{path: {D}/odvg_grounding.jsonl, mode: grounding}}, "
                 f"{_REF}, {_HARD}, {_HARD}]"]),
}
KEYS = ["base_AP", "base_AP50", "novel_AP50", "synonyms_AP50", "rec_P@1"]


def write_hard_expressions(src: Path, dst: Path) -> int:
    """Copy of the refexp file ``src`` with only its relation and superlative expressions (the kinds REC misses
    most, `rec_by_kind.py`); returns how many it kept."""
    data = json.loads(src.read_text())
    keep = {im["id"] for im in data["images"]
            if kind_of(im["caption"]) == "relation" or kind_of(im["caption"]).startswith("superlative")}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(data))
    return len(keep)


def score(exe_python: str, model: Path, seed: int, out: Path) -> dict:
    if not out.exists():
        run([exe_python, str(REPO / "benchmarks" / "bench_nano.py"), "--model", str(model), "--seed", str(seed),
             "--json", str(out)], out.with_suffix(".log"))
    return json.loads(out.read_text())


def train_minutes(run_dir: Path) -> float:
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    return round(sum(r["seconds"] for r in rows if r["type"] == "train") / 60, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/nano_synth.yaml")
    ap.add_argument("--from", dest="start", type=Path, default=Path("runs/nano/model"),
                    help="the stage-1 model every arm continues")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--only", default="", help="comma-separated arm names to train (default: all); the table "
                                                "also lists arms trained before")
    ap.add_argument("--out", type=Path, default=Path("runs/stage2"))
    args = ap.parse_args()
    names = pick(args.only, ARMS, "arm")
    exe = str(Path(sys.executable).parent / "groundscope")
    ext = args.out / "extended"
    if not (ext / "model.safetensors").exists():
        run([exe, "build-nano", str(ext), "--extend", str(args.start)], args.out / "extended.log")
    common = [f"model.path={ext}", f"train.max_steps={args.steps}", f"optim.lr={args.lr}",
              "schedule.warmup_steps=50", f"eval.every={args.steps // 2}"]
    rows = [{"name": "stage 1", "what": f"the model continued ({args.start})", "steps": 0, "minutes": 0.0,
             "val": score(sys.executable, args.start, 1, args.out / "stage1_seed1.json"),
             "test": score(sys.executable, args.start, 2, args.out / "stage1_seed2.json")}]
    # the table has every arm trained so far; `--only` limits what this run trains
    for name in [n for n in ARMS if n in names or (args.out / n / "model" / "model.safetensors").exists()]:
        what, overrides = ARMS[name]
        out = args.out / name
        if not (out / "model" / "model.safetensors").exists():
            hard = args.out / "refexp_hard.json"
            if any("{hard}" in o for o in overrides) and not hard.exists():
                print(f"{hard}: {write_hard_expressions(Path(D) / 'refexp.json', hard)} expressions", flush=True)
            overrides = [o.replace("{hard}", str(hard)) for o in overrides]
            sets = [x for o in common + overrides + [f"train.out_dir={out}"] for x in ("--set", o)]
            run([exe, "train", args.config, *sets], out.with_suffix(".log"))
        rows.append({"name": name, "what": what, "steps": args.steps, "minutes": train_minutes(out),
                     "val": score(sys.executable, out / "model", 1, args.out / f"{name}_seed1.json"),
                     "test": score(sys.executable, out / "model", 2, args.out / f"{name}_seed2.json")})
        print(json.dumps(rows[-1]), flush=True)
    head = " | ".join(KEYS)
    lines = [f"| arm | what | steps | train min | validation (seed 1): {head} | held-out (seed 2): {head} | demo |",
             "|---|---|---|---|" + "---|" * (2 * len(KEYS)) + "---|"]
    for r in rows:
        cells = [f"{r[part][k]:.3f}" for part in ("val", "test") for k in KEYS]
        demo = f"{r['test']['demo_objects_right']}/{r['test']['demo_objects']}"
        lines.append(f"| {r['name']} | {r['what']} | {r['steps']} | {r['minutes']} | " + " | ".join(cells)
                     + f" | {demo} |")
    table = "\n".join(lines)
    print(table)
    (REPO / "benchmarks" / "results" / "nano_stage2.md").write_text(
        "# Nano second stage\n\n`python benchmarks/bench_nano_stage2.py " + " ".join(sys.argv[1:]) + "`: every arm "
        f"is `{args.config}` with `" + " ".join(common) + "` and its own overrides, from the same stage-1 model. "
        "The arm is chosen on the validation world (seed 1); the held-out world (seed 2) is reported only.\n\n"
        + table + "\n")


if __name__ == "__main__":
    main()
