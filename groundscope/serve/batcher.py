"""`DynamicBatcher`: a bounded request queue drained in batches by one or more model streams.

Requests are submitted with a compatibility key (for the server: the task and its scalar options). A worker takes
the oldest pending job, gathers the pending jobs *with the same key* up to `max_batch`, and hands them to
`run_batch` in a single call, so several HTTP requests share one forward pass. Jobs with another key keep their
place in the queue and head the next batch, so no job waits behind more than the batches in flight.

A batch that is not full waits for more, but only while some request is on its way: the server `announce`s a
request as soon as its headers arrive (`serve/announce.py`) and the submit consumes the announcement. A lone
request therefore never pays the wait, and a burst of requests still meets in one batch. The wait is
`max_wait_s` *since the last job joined* the batch, so a burst whose images decode one after another on a busy
CPU keeps joining (four 10 ms decodes on two cores arrive over ~20-30 ms, which a fixed 20 ms from the first job
cut into 2 + 2 or 3 + 1 batches), while the whole wait stays below `max_batch * max_wait_s`.

Streams. With `streams=2` (`serve --streams 2`) two worker threads may run batches at the same time, sharing
`threads` CPU threads:
- the primary stream (stream 0) takes work first and runs it on every free thread, so a lone request is as fast
  as with one stream;
- while the primary is busy, helper streams take the queued work, on one thread each, and the primary leaves a
  thread for each helper that has work waiting. The work in sight is split between the idle streams (4 requests,
  2 idle streams: two batches of 2).
Whether two one-thread passes do more per second than one two-thread pass depends on the model's kernels
(`python benchmarks/bench_omp_threads.py --streams`, nano, 2 cores). With the sparse deformable sampler they did:
19.9 against 16.1 images/s in batches of 4. With the C++ sampler the fast path now uses, they win in batches of 1
or 2 (1.08-1.11x) and lose in batches of 4 (0.94x). In the server one stream then serves 4 clients faster, so
`serve` defaults to one (benchmarks/results/serve.md).
Why helpers never get more than one thread: GNU OpenMP keeps a pool of helper threads for each thread that ran a
parallel region on several threads, and once its threads outnumber the CPUs it stops spin-waiting at barriers,
which made every forward pass 1.6x slower (see `serve/threads.py`). The primary's pool is the only one: a
one-thread region starts no helpers. A stream never starts with more threads than are free, so the CPU is never
oversubscribed either. The event loop never runs the model; it awaits the job's future.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
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
    """Queue jobs and run compatible ones together in worker threads ("streams").

    Args:
        run_batch: ``run_batch(key, items) -> results``, one result per item, in order. It runs in a worker
            thread. If it raises for a batch of several jobs, each job is rerun alone so that one bad request
            (say, a prompt over the model's token limit) fails only itself. With several streams it is called
            from several threads at once.
        max_batch: most jobs per `run_batch` call.
        max_wait_s: how long a worker holding a batch that is not full waits for the next announced request to
            join it (the wait restarts when one joins). A few milliseconds lets concurrent requests meet.
        queue_size: most pending (not yet running) jobs; `submit` raises `QueueFull` beyond it.
        streams: worker threads that may run batches at the same time (see the module docstring).
        threads: CPU threads shared by the streams (the primary stream runs on every free one, helpers on one).
        set_threads: called in a worker thread with its share before a batch whose share differs from that
            thread's previous one (the server passes `torch.set_num_threads`, which holds per thread). None: the
            thread counts are only bookkeeping.
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Any]], Sequence[Any]],
        *,
        max_batch: int = 4,
        max_wait_s: float = 0.005,
        queue_size: int = 64,
        streams: int = 1,
        threads: int = 1,
        set_threads: Callable[[int], None] | None = None,
        name: str = "groundscope-batcher",
    ):
        for arg, value in (("max_batch", max_batch), ("queue_size", queue_size), ("streams", streams),
                           ("threads", threads)):
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.queue_size = int(queue_size)
        self.streams = int(streams)
        self.threads = int(threads)
        self.set_threads = set_threads
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._incoming = 0  # announced requests not yet submitted (their images are being decoded)
        self._free_threads = self.threads
        self._running = 0  # streams inside run_batch
        self._running_jobs = 0  # jobs in their batches
        self._gathering = False  # one stream forms a batch at a time, so the split sees every idle stream
        self._busy_since = 0.0
        self._primary_busy = False  # stream 0 is running a batch
        self._threads = [threading.Thread(target=self._loop, args=(i,), name=f"{name}-{i}" if streams > 1 else name,
                                          daemon=True) for i in range(self.streams)]
        self._started = False
        self.batches_run = 0  # run_batch calls made, for /healthz and the tests
        self.jobs_done = 0
        self._busy_s = 0.0  # closed periods of `busy_s`
        self.batch_sizes: Counter[int] = Counter()  # batches run, by jobs per batch (for /healthz)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "DynamicBatcher":
        with self._cond:
            if not self._started:
                self._started = True
                for t in self._threads:
                    t.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish every pending one (drain), and stop the workers."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._started:
            for t in self._threads:
                t.join(timeout)
        else:  # never started: nothing will run the pending jobs, so fail them instead of leaving them hanging
            with self._cond:
                while self._pending:
                    self._pending.popleft().future.set_exception(ShuttingDown("the server is shutting down"))

    @property
    def pending(self) -> int:
        """Jobs waiting for a worker (not counting the batches running)."""
        with self._cond:
            return len(self._pending)

    @property
    def incoming(self) -> int:
        """Announced requests not yet submitted or withdrawn (0 when the server is idle)."""
        with self._cond:
            return self._incoming

    @property
    def busy_s(self) -> float:
        """Seconds during which some stream was inside run_batch (the model's share of wall time, for /healthz),
        the period in progress included."""
        with self._cond:
            return self._busy_s + (time.perf_counter() - self._busy_since if self._running else 0.0)

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

    # ------------------------------------------------------------------ workers
    def _target_size(self, batch: list[Job]) -> int:
        """How many jobs this batch should take, at most max_batch (called holding the lock): an even share,
        over all streams, of the work in sight (held, queued, announced) and the jobs running. The running jobs
        count because their clients come back: a stream that took everything queued while the other ran one job
        would keep the pair at 3 + 1 jobs, where 2 + 2 does more per second. (Taking only a share of what is in
        sight, so that work stays queued, left both streams running single jobs: 13.3-13.9 requests/s at 4
        clients against 14.6-16.9 with this rule; benchmarks/results/serve.md.)"""
        key = batch[0].key
        in_sight = len(batch) + sum(1 for j in self._pending if j.key == key) + self._incoming
        return min(self.max_batch, max(1, -(-(in_sight + self._running_jobs) // self.streams)))

    def _may_gather(self, stream: int) -> bool:
        """Whether `stream` may form a batch now (holding the lock): a job is queued, no other stream is forming
        one, a thread is free, and, for a helper stream, the primary stream is busy (work goes to the primary
        first, so a lone request gets every thread)."""
        if not self._pending or self._gathering or self._free_threads < 1:
            return False
        return stream == 0 or self._primary_busy

    def _next_batch(self, stream: int) -> tuple[list[Job], int] | None:
        """Block until `stream` may form a batch, then take the oldest job and gather same-key jobs until the
        batch reaches its target size, max_wait_s passed since the last job joined, or no request is on its way.
        Returns the batch and the threads it runs with (claimed), or None when closing and nothing is left to
        drain."""
        with self._cond:
            while not self._may_gather(stream):
                if self._closing and not self._pending:
                    return None
                self._cond.wait()
            self._gathering = True
            try:
                first = self._pending.popleft()
                batch = [first]
                deadline = time.monotonic() + self.max_wait_s
                while True:
                    room = self._target_size(batch) - len(batch)
                    joining = [j for j in self._pending if j.key == first.key][: max(0, room)]
                    for job in joining:
                        self._pending.remove(job)
                        batch.append(job)
                    if joining:  # progress: the rest of the burst gets another max_wait_s to arrive
                        deadline = time.monotonic() + self.max_wait_s
                    remaining = deadline - time.monotonic()
                    # Nothing announced: nobody to wait for. Draining for shutdown: nothing new can arrive.
                    if (len(batch) >= self._target_size(batch) or remaining <= 0 or self._incoming == 0
                            or self._closing):
                        break
                    self._cond.wait(remaining)
                if stream == 0:
                    # Every free thread, less one for each idle helper stream that has work waiting for it.
                    waiting = len(self._pending) + self._incoming
                    idle_helpers = self.streams - 1 - self._running
                    threads = max(1, self._free_threads - min(idle_helpers, waiting))
                    self._primary_busy = True
                else:
                    threads = 1
                self._free_threads -= threads
                if self._running == 0:
                    self._busy_since = time.perf_counter()
                self._running += 1
                self._running_jobs += len(batch)
                return batch, threads
            finally:
                self._gathering = False
                self._cond.notify_all()

    def _loop(self, stream: int) -> None:
        current = None  # threads this worker last ran with
        while True:
            taken = self._next_batch(stream)
            if taken is None:
                if current is not None and current != self.threads:
                    # torch.set_num_threads in a thread also sets the count every thread started later begins
                    # with: hand the process its full count back, or a later server's workers (or any new
                    # thread) would run on this stream's share.
                    self.set_threads(self.threads)
                return
            batch, threads = taken
            size = len(batch)
            outcomes: list[tuple[Future, bool, Any]] = []
            try:
                if self.set_threads is not None and threads != current:
                    self.set_threads(threads)
                    current = threads
                # A client that gave up (future cancelled) needs no forward pass.
                batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
                if batch:
                    with self._cond:
                        self.batches_run += 1
                        self.batch_sizes[len(batch)] += 1
                    outcomes = self._execute(batch)
            finally:
                # Counters move and threads return before the futures resolve, so a caller that got its answer
                # sees the counters updated, and the next batch can start while the answers go out.
                with self._cond:
                    self._free_threads += threads
                    self._running -= 1
                    self._running_jobs -= size
                    if stream == 0:
                        self._primary_busy = False
                    if self._running == 0:
                        self._busy_s += time.perf_counter() - self._busy_since
                    self.jobs_done += len(outcomes)
                    self._cond.notify_all()
            for future, ok, value in outcomes:
                future.set_result(value) if ok else future.set_exception(value)

    def _execute(self, batch: list[Job]) -> list[tuple[Future, bool, Any]]:
        """Run one batch: (future, succeeded, result or exception) per job. A failing batch of several jobs is
        rerun one job at a time."""
        key = batch[0].key
        try:
            results = list(self.run_batch(key, [j.item for j in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
        except Exception as e:  # noqa: BLE001 - every failure must reach the waiting requests, not kill the worker
            if len(batch) == 1:
                return [(batch[0].future, False, e)]
            outcomes = []
            for job in batch:
                with self._cond:
                    self.batches_run += 1
                    self.batch_sizes[1] += 1
                outcomes += self._execute([job])
            return outcomes
        return [(job.future, True, result) for job, result in zip(batch, results)]
