"""How much a batch saves per image: the nano `detect` at batch 1, 2 and 4, by precision, split into stages.

This is what dynamic batching in `groundscope serve` can buy at most: the server's 4-client throughput over its
1-client throughput (`bench_serve.py`) cannot beat the model's own batch-4 / batch-1 ratio by much, because both
pay the same decoding and HTTP costs per image on top.

One image (examples/synth_shapes.png, 601x429, resized by the detector) repeated `batch` times with the demo's 6
class names, after warm-up calls; forward hooks time the backbone, the encoder and the decoder ("other" is
preprocessing, the text lookup, proposal selection and post-processing).

    python benchmarks/bench_batch_scaling.py [--model nano] [--threads 2] [--calls 10] [--batches 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "synth_shapes.png"
CLASSES = "pink cross,cyan star,blue diamond,yellow diamond,red circle,green heart".split(",")


def stage_timer(model) -> dict[str, float]:
    """Hooks that add each stage's wall seconds into the returned dict (reset it between measurements)."""
    times: dict[str, float] = {}
    inner = model.model.model
    for name, mod in (("backbone", inner.backbone), ("encoder", inner.encoder), ("decoder", inner.decoder)):
        def pre(m, a, name=name):
            times[name] = times.get(name, 0.0) - time.perf_counter()

        def post(m, a, o, name=name):
            times[name] += time.perf_counter()

        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=10, help="Timed calls per batch size (after 3 warm-up calls).")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from PIL import Image

    import groundscope as gs

    torch.set_num_threads(args.threads)
    image = Image.open(IMAGE).convert("RGB")
    print(f"model {args.model}, {IMAGE.name}, {len(CLASSES)} classes, {args.threads} threads, "
          f"torch {torch.__version__}, {args.calls} calls per row")
    print()
    print("| precision | batch | ms per call | ms per image | backbone | encoder | decoder | other "
          "| per image vs batch 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for precision in args.precisions:
        det = gs.load_detector(args.model, precision=precision)
        times = stage_timer(det)
        first = None
        for batch in args.batches:
            images, prompts = [image] * batch, [CLASSES] * batch
            for _ in range(3):
                det.detect(images, prompts, batch_size=batch)
            times.clear()
            t = time.perf_counter()
            for _ in range(args.calls):
                det.detect(images, prompts, batch_size=batch)
            per_call = (time.perf_counter() - t) / args.calls
            per_image = per_call / batch
            first = first or per_image
            stages = {k: v / args.calls / batch * 1000 for k, v in times.items()}
            other = per_image * 1000 - sum(stages.values())
            print(f"| {precision} | {batch} | {per_call * 1000:.1f} | {per_image * 1000:.1f} "
                  f"| {stages['backbone']:.1f} | {stages['encoder']:.1f} | {stages['decoder']:.1f} | {other:.1f} "
                  f"| {first / per_image:.2f}x |")
        del det


if __name__ == "__main__":
    main()
