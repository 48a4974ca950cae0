"""Keep freed memory for reuse: glibc's malloc tuned so large tensors stop page-faulting (CPU fast path).

glibc serves every allocation over its mmap threshold (at most 32 MB) with a fresh mmap and unmaps it again on
free. A Grounding-DINO-T forward pass allocates dozens of such tensors per image (the fusion layer's
(22,223 x 1024) projections are 45 MB in bf16), and the kernel hands each one out a 4 KB page at a time on first
touch. `python benchmarks/bench_allocator.py`, 2 threads: a bf16 detect at Grounding-DINO-T size took 575,000
page faults and 2.59 s per image, and takes 2 faults and 2.16 s with this setting; a (22,223 x 256) -> 1024 bf16
linear layer takes 17.8 ms with faults and 5.2 ms without.

`keep_freed_memory` turns mmap off (every block comes from the heap), never trims the heap back to the system,
and puts all threads on one arena so a block freed by one thread is reused by the next. The same remedy as the
jemalloc / tcmalloc settings Intel's PyTorch CPU tuning guides recommend, without preloading a library.

The cost: the process keeps its peak heap. Freed memory is reused, not returned, so a long-running process sits
at its high-water mark (GDINO-T bf16 in that benchmark: 1.43 GB peak RSS against 1.36 GB). `load_detector` calls it for
models on the CPU with the fast path; GROUNDSCOPE_MALLOC=system leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt(3) parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for tensor reuse (see the module docstring), once per process.

    Returns True when the settings are in effect, False where they do not apply: not glibc (macOS, musl), or
    GROUNDSCOPE_MALLOC=system in the environment.
    """
    if "applied" in _state:
        return _state["applied"]
    applied = False
    if os.environ.get("GROUNDSCOPE_MALLOC", "").strip().lower() != "system":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            gnu = bool(libc.gnu_get_libc_version)  # only glibc has it; AttributeError elsewhere
        except (OSError, AttributeError):
            mallopt, gnu = None, False
        if mallopt is not None and gnu:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # mallopt returns 1 on success. The trim threshold is an int: 2 GB - 1 is "never" at these sizes.
            applied = all(mallopt(param, value) == 1 for param, value in
                          ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1)))
    _state["applied"] = applied
    return applied
