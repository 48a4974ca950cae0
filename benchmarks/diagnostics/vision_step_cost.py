"""Where a vision-stage step of `groundscope pretrain-vlm` goes, and how loud the tower's position embedding is.

    python benchmarks/diagnostics/vision_step_cost.py [--train data/synth_train/groundingcap.jsonl]

Prints, on this machine (run it alone: another job on the cores doubles both figures):
  * the median time of one training step of the tower (64 crops, 128 px, forward + backward + AdamW) in float32
    and under bfloat16 autocast;
  * the time to cut 64 jittered focal crops from decoded images (`sample_pixels`), as the stage does each step;
  * the standard deviation of the patch embedding's output on real crops against the position embedding's, for
    SigLIP's random init and for the 2-D sine-cosine init (`--position-init sincos`).
The tower is the one `build_base_vlm` makes; the LM is the bundled dam-nano's (the tower never reads it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    from groundscope.images import load_image
    from groundscope.train.base_vlm import (VlmSample, _centre_pool, build_base_vlm, jitter_box, sample_pixels,
                                            vlm_samples)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=REPO / "data/synth_train/groundingcap.jsonl")
    ap.add_argument("--lm", type=Path, default=REPO / "groundscope/models/bundled/dam-nano/llm")
    args = ap.parse_args()
    torch.set_num_threads(2)
    regions = [s for s in vlm_samples(args.train, captions=False) if s.box is not None][:256]
    images = {s.image: np.asarray(load_image(s.image)) for s in regions}
    rng = np.random.default_rng(0)

    model, _ = build_base_vlm(args.lm, [s.text for s in regions])
    config, vision = model.config, model.backbone.vision

    def cut(batch):
        return torch.stack([sample_pixels(VlmSample(s.image, jitter_box(s.box, images[s.image].shape[:2], 0.25, rng),
                                                    s.text, s.category), config, rgb=images[s.image]) for s in batch])

    times = []
    for k in range(4):
        t = time.perf_counter()
        pixels = cut(regions[64 * k:64 * (k + 1)])
        times.append(time.perf_counter() - t)
    print(f"cutting 64 jittered focal crops: {statistics.median(times):.3f} s")

    head = torch.nn.Linear(vision.config.hidden_size, 8)
    optimizer = torch.optim.AdamW(list(vision.parameters()) + list(head.parameters()), lr=1e-3)
    labels = torch.randint(0, 8, (len(pixels),))
    for name, bf16 in (("float32", False), ("bfloat16 autocast", True)):
        times = []
        for _ in range(8):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = head(_centre_pool(vision(pixel_values=pixels).last_hidden_state))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t)
        print(f"tower step, 64 crops, {name}: {statistics.median(times[2:]):.3f} s")

    for init in ("random", "sincos"):
        fresh, _ = build_base_vlm(args.lm, [s.text for s in regions], position_init=init)
        emb = fresh.backbone.vision.embeddings
        with torch.no_grad():
            patches = emb.patch_embedding(pixels)  # (B, C, g, g)
        print(f"{init:>6} init: patch embedding output std {float(patches.std()):.3f}, "
              f"position embedding std {float(emb.position_embedding.weight.detach().std()):.3f}")


if __name__ == "__main__":
    main()
