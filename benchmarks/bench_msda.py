"""The bf16 path's deformable-attention kernel (groundscope/models/fast/msda_cpp.py) at Grounding-DINO-T size.

One encoder layer's sampling: 22,223 queries (an 800x1333 image's four levels), 8 heads x 32 channels, 4 levels x
4 points, bf16 values, offsets and logits, random inputs. Times the kernel as the fast path builds it and, for
comparison, the same source compiled without -fopenmp (at::parallel_for is a header template: without OpenMP it
runs on one thread whatever torch.get_num_threads() says), at 1 and 2 threads. Both builds are compiled on first
use (about a minute each).

    python benchmarks/bench_msda.py [--calls 10]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.cpp_extension import load_inline

from groundscope.models.fast import msda_cpp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    shapes = [(100, 167), (50, 84), (25, 42), (13, 21)]
    s, heads, dim, levels, points = sum(h * w for h, w in shapes), 8, 32, 4, 4
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, s, heads, dim, generator=g).bfloat16()
    ref = torch.rand(1, s, levels, 2, generator=g)
    offsets = (2 * torch.randn(1, s, heads, levels, points, 2, generator=g)).bfloat16()
    logits = torch.randn(1, s, heads, levels * points, generator=g).bfloat16()
    hs, ws = [h for h, _ in shapes], [w for _, w in shapes]
    builds = {"as built (-fopenmp)": msda_cpp.kernel(),
              "without -fopenmp": load_inline(name="groundscope_msda_bench_noomp", cpp_sources=[msda_cpp.SOURCE],
                                              functions=["msda_fused_forward"], extra_cflags=["-O3", "-march=native"])}
    print("| build | threads | ms per call |")
    print("|---|---:|---:|")
    for name, ext in builds.items():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            call = lambda: ext.msda_fused_forward(value, hs, ws, ref, offsets, logits)  # noqa: E731
            for _ in range(2):
                call()
            t = time.perf_counter()
            for _ in range(args.calls):
                call()
            print(f"| {name} | {threads} | {(time.perf_counter() - t) / args.calls * 1000:.1f} |", flush=True)


if __name__ == "__main__":
    main()
