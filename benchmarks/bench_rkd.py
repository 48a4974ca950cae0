"""RKD's ablation on the synthetic world: the same detector fine-tuned for the same steps on the same data with and
without distillation, pseudo-labels and weight transfer, one row each, like the paper's table.

    groundscope synth --out data/synth_ovd --n 2000 --seed 5 --split test     # made when missing
    groundscope synth --out data/synth_clip --n 1500 --seed 6 --split test    # made when missing
    python benchmarks/bench_rkd.py                     # ~90 min on 2 CPU cores
    python benchmarks/bench_rkd.py --steps 40 --train-images 200 --out runs/rkd_quick

The setting is COCO's open-vocabulary one in small. Training images (seed 5) contain novel colour-shape
combinations, but only base objects have boxes (``coco_base.json``); image-level labels name every class present
(``coco_all.json``'s categories per image: the role of COCO captions in the reference). The teacher is a small
CLIP trained on crops and names of all 64 combinations (seed 6 world; `groundscope distill train-teacher`), the
stand-in for a web-trained CLIP. Every arm starts from the bundled nano (trained on base classes only), which
also proposes the regions and pseudo-boxes. Arms (all `groundscope train configs/rkd_synth.yaml --set ...`):

* ``start``     the bundled nano, as it is.
* ``baseline``  ``rkd.enabled=false``: plain grounding fine-tuning on the base boxes.
* ``head``      + the CLIP-text classifier on base boxes (no distillation): the reference's baseline detector.
* ``rkd``       + L1 and IRM distillation of the teacher's region embeddings.
* ``pl``        head + pseudo max score loss on pseudo-boxes of the image-level labels (no distillation).
* ``rkd_pl``    distillation + pseudo-labels.
* ``full``      distillation + pseudo-labels + weight transfer, started from the ``rkd_pl`` arm's model (the
  reference's two stages: W comes from an RKD run and stays frozen while the transfer classifier trains).
* ``rkd_pl_irm0015`` ``rkd_pl`` with the IRM weight at 1/100 of the reference's (its summed term dominates here).

Each is scored with ``groundscope eval synth`` on a test world drawn with seed 3 (used by no training here).
Results: ``OUT/results.json`` (copied to ``benchmarks/results/rkd_synth.json``) and ``benchmarks/results/rkd_synth.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli_runs import REPO, measured_on, results_journal, run, sets  # benchmarks/ is on sys.path when a script runs
KEYS = ["base_AP50", "novel_AP50", "base_AP", "rec_P@1"]
ARMS = {
    "baseline": ("plain grounding fine-tuning on base boxes", ["rkd.enabled=false"]),
    "head": ("+ CLIP-text classifier (base boxes)", ["rkd.distill=false", "rkd.pseudo=false", "rkd.weight_transfer=false"]),
    "rkd": ("+ RKD (L1 + IRM)", ["rkd.distill=true", "rkd.pseudo=false", "rkd.weight_transfer=false"]),
    "pl": ("+ pseudo-labels (no RKD)", ["rkd.distill=false", "rkd.pseudo=true", "rkd.weight_transfer=false"]),
    "rkd_pl": ("+ RKD + pseudo-labels", ["rkd.distill=true", "rkd.pseudo=true", "rkd.weight_transfer=false"]),
    "full": ("+ RKD + pseudo-labels + weight transfer", ["rkd.distill=true", "rkd.pseudo=true", "rkd.weight_transfer=true"]),
    # The reference's IRM sums over the N x N relations of the batch; at its weight 0.15 that term outweighs the
    # detection loss ~20x here (see benchmarks/results/rkd_synth.md). The same arm at 1/100 of the weight:
    "rkd_pl_irm0015": ("+ RKD + pseudo-labels, IRM weight 0.0015 (reference / 100)",
                       ["rkd.distill=true", "rkd.pseudo=true", "rkd.weight_transfer=false", "rkd.irm_weight=0.0015"]),
}


def subset(coco: Path, n: int) -> Path:
    """The first `n` images of a COCO file (and their annotations), beside it so image paths stay valid."""
    out = coco.with_name(f"{coco.stem}_{n}.json")
    if not out.exists():
        data = json.loads(coco.read_text())
        data["images"] = data["images"][:n]
        ids = {im["id"] for im in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        out.write_text(json.dumps(data))
    return out


def grounding_only_eval(model_dir: Path, test_dir: Path, out: Path) -> dict:
    """`groundscope eval synth` of a model trained with RKD, with its head's weight in the score set to 0."""
    from groundscope.evaluate.synth import evaluate_synth_world
    from groundscope.models.loading import load_detector

    det = load_detector(model_dir)
    if det.rkd is not None:
        det.rkd.head.config.score_weight = 0.0
    return evaluate_synth_world(det, test_dir, out, progress=False, model_name=str(model_dir))["summary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every arm")
    ap.add_argument("--train-images", type=int, default=1200, help="training images (the region cache covers these)")
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    ap.add_argument("--test-seed", type=int, default=3)
    ap.add_argument("--test-n", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("runs/rkd_bench"))
    ap.add_argument("--grounding-only", default=None, help="arms also scored by the grounding score alone "
                                                           "(default: every arm with a head)")
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "groundscope")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    results, save = results_journal(out)

    worlds = {"ovd": (Path("data/synth_ovd"), 2000, 5), "clip": (Path("data/synth_clip"), 1500, 6),
              "test": (Path(f"data/synth_seed{args.test_seed}"), args.test_n, args.test_seed)}
    for d, n, seed in worlds.values():
        if not (d / "meta.json").exists():
            run([exe, "synth", "--out", str(d), "--n", str(n), "--seed", str(seed), "--split", "test"], log)
    ovd, clip, test_dir = (w[0] for w in worlds.values())
    train_file = subset(ovd / "coco_base.json", args.train_images)

    teacher = out / "teacher"
    if not (teacher / "config.json").exists():
        run([exe, "distill", "train-teacher", "--data", str(clip / "coco_all.json"), "--out", str(teacher),
             "--steps", str(args.teacher_steps), "--val", str(test_dir / "coco_all.json")], log)
    results["teacher"] = json.loads((teacher / "teacher_train.json").read_text())
    save()

    common = [f"train.max_steps={args.steps}", f"data.train=[{{path: {train_file}}}]", f"rkd.teacher={teacher}",
              f"rkd.regions={out / 'regions'}", f"rkd.image_labels={ovd / 'coco_all.json'}"]
    for name in args.arms.split(","):
        if name in results.get("train", {}):
            print(f"{name}: trained before, skipped", flush=True)
            continue
        what, overrides = ARMS[name]
        if name == "full":  # the reference's second stage starts from the first's W (see the module docstring)
            if not (out / "rkd_pl" / "model").exists():
                raise SystemExit("the full arm starts from the rkd_pl arm's model: run --arms rkd_pl first")
            overrides = [*overrides, f"model.path={out / 'rkd_pl' / 'model'}"]
        seconds = run([exe, "train", "configs/rkd_synth.yaml",
                       *sets(*common, *overrides, f"train.out_dir={out / name}")], log)
        results.setdefault("train", {})[name] = {"overrides": [*common, *overrides], "minutes": round(seconds / 60, 1)}
        save()
        print(f"{name}: trained in {seconds / 60:.1f} min", flush=True)

    models = {"start": "nano", **{n: str(out / n / "model") for n in args.arms.split(",")}}
    for name, model in models.items():
        if name in results.get("eval", {}):
            continue
        ev = out / "eval" / name
        run([exe, "eval", "synth", str(test_dir), "--model", model, "--out", str(ev), "--no-progress"], log)
        results.setdefault("eval", {})[name] = json.loads((ev / "summary.json").read_text())
        save()

    # The arms with a head, scored by the grounding score alone (the head's weight set to 0): what the training
    # did to the detector itself, apart from the CLIP-text classifier's vote at inference.
    heads = [n for n in args.arms.split(",") if n != "baseline"]
    for name in heads if args.grounding_only is None else [n for n in args.grounding_only.split(",") if n]:
        key = f"{name}/grounding_only"
        if key in results["eval"]:
            continue
        results["eval"][key] = grounding_only_eval(out / name / "model", test_dir, out / "eval" / key.replace("/", "_"))
        save()

    ev = results["eval"]
    what = {"start": "the bundled nano (starting point)", **{k: v[0] for k, v in ARMS.items()}}
    rows = ["| arm | what | " + " | ".join(KEYS) + " | novel AP50 vs baseline | base AP50 vs baseline |",
            "|---|---|" + "---|" * (len(KEYS) + 2)]
    for name in [m for n in models for m in (n, f"{n}/grounding_only") if m in ev]:
        e = ev[name]
        vs = ""
        what.setdefault(name, "the same model, grounding score only (head weight 0)")
        if "baseline" in ev and name not in ("start", "baseline"):
            vs = (f" {e['novel_AP50'] - ev['baseline']['novel_AP50']:+.3f} |"
                  f" {e['base_AP50'] - ev['baseline']['base_AP50']:+.3f} |")
        else:
            vs = " | |"
        rows.append(f"| {name} | {what[name]} | " + " | ".join(f"{e.get(k, float('nan')):.3f}" for k in KEYS) + " |" + vs)
    t = results["teacher"]
    acc = t.get("val_accuracy", {})
    text = (
        "# RKD on the synthetic world\n\n"
        f"`python benchmarks/bench_rkd.py {' '.join(sys.argv[1:])}`: {args.steps} steps per arm (batch 4) on the "
        f"first {args.train_images} images of the seed-5 world (base boxes only, novel objects unannotated); test "
        f"world seed {args.test_seed} ({args.test_n} images, no training used it). Measured {measured_on()}.\n\n"
        + "\n".join(rows) + "\n\n"
        f"Teacher (small CLIP, {t.get('classes')} names, {t.get('train_seconds')} s): zero-shot top-1 on the test "
        f"world's exact crops {acc.get('all', float('nan')):.3f} (base {acc.get('base', float('nan')):.3f}, novel "
        f"{acc.get('novel', float('nan')):.3f}).\n\n"
        "Training minutes: " + ", ".join(f"{k} {v['minutes']}" for k, v in results.get("train", {}).items()) + ".\n"
    )
    print(text)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "rkd_synth.md").write_text(text)
    (REPO / "benchmarks" / "results" / "rkd_synth.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
