"""`in_fresh_thread`: call a function in a short-lived thread, so the calling thread keeps no OpenMP pool.

Why the server loads its model this way: the OpenMP runtime torch uses (GNU libgomp) keeps one pool of helper
threads per thread that ever ran a parallel region on several threads, until that thread exits. Once its threads
outnumber the CPUs, libgomp stops spin-waiting at barriers and sleeps instead, and a small model's forward pass
crosses thousands of barriers. The server runs every forward pass in its batcher's threads; if the main thread
had loaded the model (a load runs parallel kernels), the main thread's idle pool would tip the count over, and on
this 2-core machine the nano model's forward pass then took 1.6-1.7x as long (122-126 ms against 71-75 ms; forcing
sleeping barriers with OMP_WAIT_POLICY=passive costs the same). Loaded in a thread that exits, it takes what the
main thread takes (`python benchmarks/bench_omp_threads.py`). Nothing else in the server's main thread runs
torch: uploads are decoded with PIL and numpy. The batcher keeps the count down for the same reason: only its
primary stream runs on several threads (`serve/batcher.py`).
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

