"""The encoder FFN at Grounding-DINO-T size: unchunked, chunked, and chunked with the activation fused into fc1.

22,223 tokens (an 800x1333 image's four levels), d 256 -> 2048 -> 256, bf16 weights and activations, ReLU, random
weights; the fast path's malloc setting on (groundscope.models.fast.allocator), as in `load_detector`.

    python benchmarks/bench_ffn.py [--threads 2] [--calls 10]

Prints ms per FFN call for each variant and its ratio to the unchunked call; the chunked rows use
`attention.chunked_ffn`'s loop with the chunk size given.
"""

import argparse
import time

import torch
from torch import nn

from groundscope.models.fast import attention
from groundscope.models.fast.allocator import keep_freed_memory


def timed(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 22223, 256).bfloat16()
    fc1, fc2, act = nn.Linear(256, 2048).bfloat16(), nn.Linear(2048, 256).bfloat16(), nn.ReLU()
    rows = []
    with torch.inference_mode():
        reference = fc2(act(fc1(x)))
        rows.append(("unchunked: fc2(relu(fc1(x)))", timed(lambda: fc2(act(fc1(x))), args.calls), reference))
        for chunk in (1024, 2048, 4096):
            for fused in (False, True):
                attention.FFN_CHUNK = chunk
                attention._fused_fc1_works["ok"] = None if fused else False  # False: the unfused path
                out = attention.chunked_ffn(x, fc1, act, fc2)
                ms = timed(lambda: attention.chunked_ffn(x, fc1, act, fc2), args.calls)
                rows.append((f"chunks of {chunk}, {'ReLU fused into fc1' if fused else 'in-place ReLU'}", ms, out))
    print(f"{args.threads} thread(s); ms per FFN call (22,223 x 256 -> 2048 -> 256, bf16)")
    print("| variant | ms | vs unchunked | max abs difference |")
    print("|---|---:|---:|---:|")
    for name, ms, out in rows:
        print(f"| {name} | {ms:.1f} | {rows[0][1] / ms:.2f}x | {(out.float() - reference.float()).abs().max().item():.3g} |")


if __name__ == "__main__":
    main()
