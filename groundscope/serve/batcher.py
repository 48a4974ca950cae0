"""`DynamicBatcher`: a bounded request queue drained by one worker thread in batches.

Requests are submitted with a compatibility key (for the server: the task and its scalar options). The worker
takes the oldest pending job, gathers the pending jobs *with the same key* up to `max_batch`, and hands them to
`run_batch` in a single call, so several HTTP requests share one forward pass. Jobs with another key keep their
place in the queue and head the next batch, so no job waits behind more than the batch in flight.

A batch that is not full waits up to `max_wait_s` for more, but only while some request is on its way: the
server `announce`s a request as soon as its headers arrive (`serve/announce.py`) and the submit consumes the
announcement. A lone
request therefore never pays the wait, and a burst of requests still meets in one batch.

One thread owns the model: torch already spreads one forward pass over the CPU cores, and a second concurrent
forward would only compete with it. The event loop never runs the model; it awaits the job's future.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence


class QueueFull(RuntimeError):
    """The queue holds `queue_size` pending jobs already; the caller should retry later (HTTP 503)."""


class ShuttingDown(RuntimeError):
    """The batcher is draining for shutdown and takes no new jobs (HTTP 503)."""


@dataclass
class Job:
    """One request: its compatibility key, its per-request payload and the future its result goes to."""

    key: Hashable
    item: Any
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """Queue jobs and run compatible ones together in a worker thread.

    Args:
        run_batch: ``run_batch(key, items) -> results``, one result per item, in order. It runs in the worker
            thread. If it raises for a batch of several jobs, each job is rerun alone so that one bad request
            (say, a prompt over the model's token limit) fails only itself.
        max_batch: most jobs per `run_batch` call.
        max_wait_s: how long the worker waits for a batch to fill once it holds a job, while requests are
            announced. A few milliseconds lets concurrent requests meet.
        queue_size: most pending (not yet running) jobs; `submit` raises `QueueFull` beyond it.
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Any]], Sequence[Any]],
        *,
        max_batch: int = 4,
        max_wait_s: float = 0.005,
        queue_size: int = 64,
        name: str = "groundscope-batcher",
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.queue_size = int(queue_size)
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._incoming = 0  # announced requests not yet submitted (their images are being decoded)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self.batches_run = 0  # run_batch calls made, for /healthz and the tests
        self.jobs_done = 0
        self.busy_s = 0.0  # seconds spent inside run_batch: the model's share of wall time, for /healthz

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "DynamicBatcher":
        with self._cond:
            if not self._started:
                self._started = True
                self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish every pending one (drain), and stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._started:
            self._thread.join(timeout)
        else:  # never started: nothing will run the pending jobs, so fail them instead of leaving them hanging
            with self._cond:
                while self._pending:
                    self._pending.popleft().future.set_exception(ShuttingDown("the server is shutting down"))

    @property
    def pending(self) -> int:
        """Jobs waiting for the worker (not counting the batch it is running)."""
        with self._cond:
            return len(self._pending)

    @property
    def incoming(self) -> int:
        """Announced requests not yet submitted or withdrawn (0 when the server is idle)."""
        with self._cond:
            return self._incoming

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ submitting
    def announce(self) -> None:
        """A request will be submitted soon; a forming batch may wait (up to max_wait_s) for it. Follow with
        `submit(..., announced=True)` or, if the request fails before that, `withdraw()`."""
        with self._cond:
            self._incoming += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted after all."""
        with self._cond:
            self._incoming = max(0, self._incoming - 1)
            self._cond.notify_all()  # a batch waiting for it can leave now

    def submit(self, key: Hashable, item: Any, announced: bool = False) -> Future:
        """Queue one job; returns the future of its result. Raises `QueueFull` or `ShuttingDown`."""
        job = Job(key, item)
        with self._cond:
            if announced:
                self._incoming = max(0, self._incoming - 1)
                self._cond.notify_all()
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            if len(self._pending) >= self.queue_size:
                raise QueueFull(f"{len(self._pending)} requests are already queued (the queue holds {self.queue_size})")
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    async def run(self, key: Hashable, item: Any, announced: bool = False) -> Any:
        """`submit` and await the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(key, item, announced))

    # ------------------------------------------------------------------ worker
    def _next_batch(self) -> list[Job] | None:
        """Block for the oldest job, then gather same-key jobs until the batch is full, max_wait_s passed or no
        request is on its way. None when closing and nothing is left to drain."""
        with self._cond:
            while not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._pending.popleft()
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                for job in [j for j in self._pending if j.key == first.key][: self.max_batch - len(batch)]:
                    self._pending.remove(job)
                    batch.append(job)
                remaining = deadline - time.monotonic()
                # Nothing announced: nobody to wait for. Draining for shutdown: nothing new can arrive.
                if len(batch) >= self.max_batch or remaining <= 0 or self._incoming == 0 or self._closing:
                    break
                self._cond.wait(remaining)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # A client that gave up (future cancelled) needs no forward pass.
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if batch:
                self._execute(batch)

    def _execute(self, batch: list[Job]) -> None:
        # Counters move before the futures resolve, so a caller that got its answer sees them updated.
        key = batch[0].key
        self.batches_run += 1
        start = time.perf_counter()
        try:
            results = list(self.run_batch(key, [j.item for j in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
        except Exception as e:  # noqa: BLE001 - every failure must reach the waiting requests, not kill the worker
            self.busy_s += time.perf_counter() - start
            if len(batch) > 1:
                for job in batch:
                    self._execute([job])
                return
            self.jobs_done += 1
            batch[0].future.set_exception(e)
            return
        self.busy_s += time.perf_counter() - start
        self.jobs_done += len(batch)
        for job, result in zip(batch, results):
            job.future.set_result(result)
