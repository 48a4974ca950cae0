"""The fusion layer's image-text attention at Grounding-DINO-T size, bf16: SDPA (what the fast path runs) against
explicit matmul-softmax-matmul variants, in one run.

Sizes: 1 image, 4 heads, 22,223 image tokens (800x1333), 195 text tokens (the 80 COCO names), head dim 256.
Both directions: image->text (softmax over the text) and text->image (softmax over the image).

    python benchmarks/bench_fusion_attention.py [--threads 2] [--repeats 5] [--system-malloc]

Prints ms per call of both directions and the largest difference from SDPA's output.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc as it is (the fast path "
                    "tunes it: groundscope.models.fast.allocator)")
    args = ap.parse_args()
    if not args.system_malloc:
        from groundscope.models.fast.allocator import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(args.threads)
    b, h, s, t, d = 1, 4, 22223, 195, 256
    g = torch.Generator().manual_seed(0)
    vq, vv = (torch.randn(b, h, s, d, generator=g).bfloat16() for _ in range(2))
    tk, tv = (torch.randn(b, h, t, d, generator=g).bfloat16() for _ in range(2))
    scale = d ** -0.5
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa_both():
        return sdpa(vq, tk, tv, scale=scale), sdpa(tk, vq, vv, scale=scale)

    def shared_scores(fp32_softmax: bool = False):
        scores = torch.matmul(vq, tk.transpose(-1, -2))  # (B, H, S, T), as transformers' module does
        scores = (scores.float() if fp32_softmax else scores) * scale
        v2t = torch.matmul(scores.softmax(-1).to(tv.dtype), tv)
        t2v = torch.matmul(scores.transpose(-1, -2).softmax(-1).to(vv.dtype), vv)
        return v2t, t2v

    def sdpa_then_explicit():
        scores = torch.matmul(tk, vq.transpose(-1, -2)) * scale  # (B, H, T, S)
        return sdpa(vq, tk, tv, scale=scale), torch.matmul(scores.softmax(-1), vv)

    arms = [("SDPA, both directions (the fast path)", sdpa_both),
            ("explicit, one shared score matrix", shared_scores),
            ("explicit, shared scores, fp32 softmax", lambda: shared_scores(True)),
            ("SDPA image->text, explicit text->image", sdpa_then_explicit)]
    reference = sdpa_both()
    print(f"{args.threads} thread(s), bf16, B={b} H={h} S={s} T={t} D={d}")
    print("| arm | ms per call | max difference from SDPA |")
    print("|---|---:|---:|")
    for name, fn in arms:
        fn()
        fn()
        start = time.perf_counter()
        for _ in range(args.repeats):
            out = fn()
        ms = (time.perf_counter() - start) / args.repeats * 1000
        diff = max((o.float() - r.float()).abs().max().item() for o, r in zip(out, reference))
        print(f"| {name} | {ms:.1f} | {diff:.4f} |")


if __name__ == "__main__":
    main()
