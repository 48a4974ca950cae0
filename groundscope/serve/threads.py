"""`in_fresh_thread`: call a function in a short-lived thread, so the calling thread keeps no OpenMP pool.

Why the server loads its model this way: the OpenMP runtime torch uses (GNU libgomp) keeps one pool of worker
threads per thread that ever started a parallel region, until that thread exits. The server runs every forward
pass in its batcher's worker thread; if the main thread has loaded the model (a load runs parallel kernels), the
main thread's idle pool lives on beside the worker's, and on this 2-core machine the nano model's forward pass
then took 1.6x as long in the worker thread as in the main thread (129 ms against 79 ms). Loaded in a thread
that exits, it takes 74 ms in the worker (`python benchmarks/bench_omp_threads.py`). Nothing else in the server's
main thread runs torch: uploads are decoded with PIL and numpy.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


def in_fresh_thread(fn: Callable[..., Any], *args: Any, name: str = "groundscope-load", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` run in a new thread that exits afterwards; returns its result or re-raises its
    exception (any ``BaseException``, so a CLI's exit signal passes through unchanged)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller as is
            box["error"] = e

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def share_malloc_arena() -> bool:
    """Make every thread of this process allocate from glibc's main malloc arena (``mallopt(M_ARENA_MAX, 1)``).

    Why: glibc gives each new thread its own arena, and a thread arena hands large freed blocks back to the
    kernel at once, so the batcher's thread page-faults its activations in again on every forward pass. For a
    batch of 4 with the nano model that measured 26,000 page faults and 64.5 ms per image in a worker thread,
    against 6,500 and 48.4 ms in the main thread; with one arena, 49.3 ms in the worker (the same as
    ``MALLOC_ARENA_MAX=1`` in the environment). Affects only threads that have not allocated yet, so call it
    before starting them. Returns False where it does not apply (not glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1))
