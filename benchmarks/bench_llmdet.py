"""LLMDet's caption supervision, measured on the synthetic world: the same detector fine-tuned for the same steps
on the same data with and without the two caption losses, side by side.

    groundscope synth --out data/synth_train --n 4000 --seed 0 --split train
    python benchmarks/bench_llmdet.py                    # ~45 min on 2 CPU cores
    python benchmarks/bench_llmdet.py --steps 100 --stage1-steps 50 --out runs/llmdet_quick

Arms (all through the real CLI, so every row is a command a user can rerun):

* ``start``     the bundled nano, as it is (the common starting point).
* ``baseline``  ``configs/llmdet_stage2_synth.yaml --set caption.enabled=false --set model.path=nano``: plain
  grounding fine-tuning.
* ``llmdet``    stage 1 (``configs/llmdet_stage1_synth.yaml``: projectors only, detector frozen, so detection is
  unchanged) then stage 2 (the same file as the baseline, with the caption head, LoRA on the LM and the two
  caption losses).

The LM is the world LM (``groundscope pretrain-lm``), made first when ``runs/world_lm`` is missing. Each arm is
scored with ``groundscope eval synth`` on a test world drawn with a seed nothing else used (default 3), and the
LLMDet arm's image captions are checked word by word against the scenes (`groundscope.evaluate.captions`).
Results: ``OUT/results.json`` and ``benchmarks/results/llmdet_synth.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli_runs import REPO, results_journal, run, sets  # benchmarks/ is on sys.path when a script runs
KEYS = ["base_AP", "base_AP50", "novel_AP50", "synonyms_AP50", "rec_P@1"]


def caption_check(model_dir: Path, test_dir: Path, n: int, out: Path) -> dict:
    """Caption `n` test images with the trained head; the share of objects named by colour + shape."""
    from groundscope.evaluate.captions import scene_categories, score_caption
    from groundscope.models.loading import load_detector

    det = load_detector(model_dir)
    scenes = scene_categories(test_dir / "groundingcap.jsonl")
    named = total = 0
    samples = []
    for k, (name, cats) in enumerate(sorted(scenes.items())[:n]):
        caption = det.caption(test_dir / name)
        score = score_caption(caption, cats)
        named += sum(score.named.values())
        total += len(score.named)
        samples.append({"image": name, "objects": cats, "caption": caption, "named": score.named})
    out.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return {"images": len(samples), "objects": total, "objects_named": named,
            "named_rate": named / total if total else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="stage-2 (and baseline) optimizer steps")
    ap.add_argument("--stage1-steps", type=int, default=600)
    ap.add_argument("--lm", type=Path, default=Path("runs/world_lm"), help="the world LM (made when missing)")
    ap.add_argument("--test-seed", type=int, default=3, help="seed of the test world (0, 1, 2 are used elsewhere)")
    ap.add_argument("--test-n", type=int, default=200)
    ap.add_argument("--caption-images", type=int, default=50, help="test images captioned for the word check")
    ap.add_argument("--out", type=Path, default=Path("runs/llmdet_bench"))
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "groundscope")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    results, save = results_journal(out)

    if not (args.lm / "config.json").exists():
        results["lm_seconds"] = run([exe, "pretrain-lm", "--data", "data/synth_train/groundingcap.jsonl",
                                     "--out", str(args.lm)], log)
    test_dir = Path(f"data/synth_seed{args.test_seed}")
    if not (test_dir / "summary.json").exists() and not (test_dir / "meta.json").exists():
        run([exe, "synth", "--out", str(test_dir), "--n", str(args.test_n), "--seed", str(args.test_seed),
             "--split", "test"], log)

    common = [f"train.max_steps={args.steps}", "eval.at_end=false", "eval.every=0"]
    arms = {
        "stage1": ("configs/llmdet_stage1_synth.yaml",
                   [f"train.max_steps={args.stage1_steps}", f"caption.llm={args.lm}",
                    f"train.out_dir={out / 'stage1'}"]),
        "llmdet": ("configs/llmdet_stage2_synth.yaml",
                   [f"model.path={out / 'stage1' / 'model'}", f"caption.head={out / 'stage1' / 'model' / 'caption_head'}",
                    *common, f"train.out_dir={out / 'llmdet'}"]),
        "baseline": ("configs/llmdet_stage2_synth.yaml",
                     ["caption.enabled=false", "model.path=nano", *common, f"train.out_dir={out / 'baseline'}"]),
    }
    for name, (config, overrides) in arms.items():
        if name in results.get("train", {}):
            print(f"{name}: trained before, skipped", flush=True)
            continue
        seconds = run([exe, "train", config, *sets(*overrides)], log)
        results.setdefault("train", {})[name] = {"config": config, "overrides": overrides,
                                                 "minutes": round(seconds / 60, 1)}
        save()
        print(f"{name}: trained in {seconds / 60:.1f} min", flush=True)

    models = {"start": "nano", "baseline": str(out / "baseline" / "model"), "llmdet": str(out / "llmdet" / "model")}
    for name, model in models.items():
        if name in results.get("eval", {}):
            continue
        ev = out / "eval" / name
        run([exe, "eval", "synth", str(test_dir), "--model", model, "--out", str(ev), "--no-progress"], log)
        results.setdefault("eval", {})[name] = json.loads((ev / "summary.json").read_text())
        save()
    for name in ("stage1", "llmdet"):
        if name not in results.get("captions", {}):
            results.setdefault("captions", {})[name] = caption_check(
                out / name / "model", test_dir, args.caption_images, out / f"captions_{name}.jsonl")
            save()

    rows = ["| arm | what | " + " | ".join(KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    what = {"start": "the bundled nano (starting point)",
            "baseline": f"+ {args.steps} steps of grounding fine-tuning",
            "llmdet": f"+ stage 1 ({args.stage1_steps} steps, head only) + {args.steps} steps with both caption losses"}
    for name in ("start", "baseline", "llmdet"):
        e = results["eval"][name]
        rows.append(f"| {name} | {what[name]} | " + " | ".join(f"{e[k]:.3f}" for k in KEYS) + " |")
    diff = results["eval"]["llmdet"]["base_AP50"] - results["eval"]["baseline"]["base_AP50"]
    cap = results["captions"]
    text = (
        "# LLMDet caption supervision on the synthetic world\n\n"
        f"`python benchmarks/bench_llmdet.py {' '.join(sys.argv[1:])}`; test world `groundscope synth --n "
        f"{args.test_n} --seed {args.test_seed} --split test` (no other measurement used this seed).\n\n"
        + "\n".join(rows) + "\n\n"
        f"LLM-supervised minus baseline, base AP50: {diff:+.3f}.\n\n"
        "Image captions written by the trained head, objects named by colour and shape "
        f"(`groundscope.evaluate.captions`, {cap['llmdet']['images']} test images): after stage 1 "
        f"{cap['stage1']['named_rate']:.1%} ({cap['stage1']['objects_named']}/{cap['stage1']['objects']}), after "
        f"stage 2 {cap['llmdet']['named_rate']:.1%} ({cap['llmdet']['objects_named']}/{cap['llmdet']['objects']}).\n\n"
        "Training minutes: " + ", ".join(f"{k} {v['minutes']}" for k, v in results["train"].items()) + ".\n"
    )
    print(text)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "llmdet_synth.md").write_text(text)


if __name__ == "__main__":
    main()
