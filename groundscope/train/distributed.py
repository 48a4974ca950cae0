"""Data-parallel training over several processes: ``groundscope train CONFIG --nproc N`` and torchrun.

Two ways in, one group:

* ``groundscope train CONFIG --nproc N`` starts N worker processes itself (`launch`), with
  ``torch.multiprocessing.start_processes(start_method="spawn")`` on a free local port. Chosen over the
  torch.distributed.run / elastic launcher because the command stays one process tree that the CLI controls:
  the validated config goes to the workers as an object (no re-parsing, no re-validation per rank), a worker's
  exception comes back as the same exception type (a bad config still exits with code 2 and one line), rank
  0's summary comes back through a queue, and no agent process sits between the terminal and the workers
  (Ctrl-C reaches the workers once, so they save a checkpoint and stop together). "spawn" rather than "fork":
  a forked child of a process that has started OpenMP / CUDA threads can deadlock.
* Started by torchrun (``torchrun --nproc-per-node N -m groundscope.cli train CONFIG``): the environment holds
  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and each process joins that group (`run_in_group`)
  instead of spawning. Under torchrun Ctrl-C belongs to torchrun: it signals the workers a second time, so they
  stop without a final checkpoint (the last periodic one stays).

Backend: NCCL when the model runs on CUDA (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``), gloo on the CPU.

Semantics (the rule the tests check): ``train.batch_size`` is per process, so one optimizer step sees a global
batch of N x batch_size images, and N processes with batch b compute what one process with batch N x b
computes, up to float rounding:

* data: the epoch's seeded order is cut into global batches of N x b (`groundscope.train.data.EpochBatches`)
  and process r takes its contiguous slice of each (`shard`); augmentation, negatives and denoising noise are
  functions of (seed, epoch, index), not of the process. A last global batch with fewer items than processes
  is dropped (every process needs one item); a shorter one is split as evenly as `shard` says.
* every process pads its images to the size of the whole global batch (`pad_to_global_size`), as one process
  padding the whole batch would: a Swin window sees the padding, so a smaller pad would change the features.
* gradients: averaged over the processes after the backward passes of a step (`average_gradients`; the
  staged training forward calls the detector's submodules directly, so DistributedDataParallel's forward hooks
  would not run, and one all-reduce per optimizer step needs no ``no_sync`` for gradient accumulation). The
  detector loss divides by the number of target boxes in the *global* batch over N (`loss_normalizer`, DETR's
  all-reduce of num_boxes), so the average of the processes' gradients is the whole batch's gradient. Losses
  that are a mean over the process's own items (Describe Anything's token cross-entropy, LLMDet's caption
  terms) average shard means, as DistributedDataParallel does: equal to the global mean when shards weigh
  the same.
* logged loss parts are averaged over the processes (`mean_over_processes`), which gives the single-process
  value; image counts are summed.
* rank 0 alone writes checkpoints, log.jsonl, loss.png, config.yaml, evaluations and the exported model; the
  others wait at a barrier. Checkpoints hold every process's RNG state (`gather_rng_states`) and the data
  position in global batches, so a resumed run with the same N equals an uninterrupted one.
* not synchronised: BatchNorm statistics (each process normalises its own b images; detectors usually freeze
  BatchNorm, and the nano / Swin / ConvNeXt models have none; `unsynced_batchnorm` names any) and dropout
  masks (each process draws its own: a model with dropout cannot match one process bit for bit).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import socket
import threading
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from groundscope.train.config import ConfigError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Rank 0 evaluates and exports while the others wait at a barrier: the collective timeout must outlast that.
TIMEOUT = timedelta(minutes=60)
BUCKET_ELEMENTS = 16 * 2**20  # gradient elements per all-reduce (64 MB of float32): bounds the extra memory


class DistributedError(RuntimeError):
    """Multi-process training cannot start as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the training group (rank 0 of 1 when training in one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world_size > 1


def info() -> ProcessInfo:
    """This process's rank, world size and local rank (from the initialised process group, else one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ProcessInfo()
    return ProcessInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def enabled() -> bool:
    return info().enabled


def torchrun_env() -> ProcessInfo | None:
    """The group torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
    started this process in, or None when those variables are not all set."""
    if not all(k in os.environ for k in ENV_KEYS):
        return None
    try:
        return ProcessInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except ValueError as e:
        raise DistributedError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({e}); start with torchrun") from e


# ---------------------------------------------------------------------------------------------- devices, setup
def process_device(device: torch.device, proc: ProcessInfo | None = None) -> torch.device:
    """The device this process trains on: with several processes, CUDA means ``cuda:LOCAL_RANK``.

    Raises ConfigError for a device several processes cannot share (one named GPU, MPS).
    """
    proc = proc or info()
    if not proc.enabled:
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(f"model.device '{device}' names one GPU; with several processes each takes its "
                              "own (cuda:LOCAL_RANK): set model.device to cuda or auto")
        return torch.device("cuda", proc.local_rank)
    if device.type != "cpu":
        raise ConfigError(f"multi-process training runs on CPUs (gloo) or CUDA GPUs (NCCL), not {device.type}; "
                          "set model.device to cpu or cuda")
    return device


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_group(device: torch.device, proc: ProcessInfo) -> None:
    """Join the process group of `proc` through the MASTER_ADDR / MASTER_PORT rendezvous (env://)."""
    if device.type == "cuda":
        if torch.cuda.device_count() <= proc.local_rank:
            raise DistributedError(f"process {proc.rank} wants cuda:{proc.local_rank} but this machine has "
                                   f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node")
        torch.cuda.set_device(proc.local_rank)
    dist.init_process_group(backend_for(device), init_method="env://", rank=proc.rank, world_size=proc.world_size,
                            timeout=TIMEOUT)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it) for the group's rendezvous on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s global generators (dropout): distinct per process, a function of both."""
    return int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- launching
def run_in_group(fn: Callable[..., Any], *args, device: torch.device, proc: ProcessInfo) -> Any:
    """Join the group `proc` describes (torchrun's environment), run ``fn(*args)``, leave the group."""
    init_group(device, proc)
    try:
        return fn(*args)
    finally:
        teardown()


def _worker(index: int, fn: Callable[..., Any], args: tuple, nproc: int, port: int, device: torch.device,
            threads: int | None, queue) -> None:
    """One spawned process: set the rendezvous environment, join, run, report rank 0's result or any error."""
    os.environ.update({"RANK": str(index), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(index),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    if threads:
        torch.set_num_threads(threads)
    try:
        result = run_in_group(fn, *args, device=device, proc=ProcessInfo(index, nproc, index))
    except BaseException as e:
        queue.put(_message("error", index, e))
        raise
    if index == 0:
        queue.put(_message("result", 0, result))


def _message(kind: str, rank: int, value: Any) -> bytes:
    """A queue message pickled here, by value: torch's multiprocessing pickler would pass tensors as shared
    memory owned by this process, which is gone by the time the launcher reads them."""
    try:
        data = pickle.dumps((kind, rank, value))
        pickle.loads(data)  # some exception classes pickle but cannot be rebuilt from their arguments
        return data
    except Exception:
        if kind != "error":
            raise
        return pickle.dumps((kind, rank, RuntimeError(f"{type(value).__name__}: {value}")))


def launch(fn: Callable[..., Any], nproc: int, *args, device: torch.device, threads: int | None = None) -> Any:
    """Run ``fn(*args)`` in `nproc` new processes that form one group on this machine; returns rank 0's result.

    A worker's exception is raised here as itself (chained to the worker's traceback); the other workers are
    stopped. Ctrl-C: the first two reach the workers (save and stop; abort), a third kills them.

    Args:
        fn, args: a module-level function and picklable arguments (they cross to "spawn"ed processes).
        device: the training device (its type picks NCCL or gloo and, for CUDA, needs `nproc` GPUs).
        threads: torch threads per worker (default: the cores shared out, unless OMP_NUM_THREADS is set).
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    process_device(device, ProcessInfo(0, max(nproc, 2)))  # fail early on a device processes cannot share
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise ConfigError(f"--nproc {nproc} on CUDA needs {nproc} GPUs; this machine has "
                          f"{torch.cuda.device_count()}: lower --nproc")
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        # N processes with all cores' worth of threads each would oversubscribe the CPU many times over.
        threads = max(1, (os.cpu_count() or 1) // nproc)
    queue = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_worker, args=(fn, args, nproc, free_port(), device, threads, queue),
                                 nprocs=nproc, join=False, start_method="spawn")
    interrupts = [0]

    def on_sigint(signum, frame):
        # The terminal sends SIGINT to the workers as well: they save a checkpoint and stop (first), or abort
        # (second). This process keeps waiting for them; a third one gives up on them.
        interrupts[0] += 1

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    failure: Exception | None = None
    messages = []
    try:
        while True:
            # Read while waiting: a message larger than the pipe's buffer blocks its writer until it is read.
            while not queue.empty():
                messages.append(pickle.loads(queue.get()))
            try:
                if context.join(timeout=0.5):
                    break
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
                failure = e
                break
            if interrupts[0] >= 3:
                for p in context.processes:
                    if p.is_alive():
                        p.kill()
                raise KeyboardInterrupt
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    while not queue.empty():
        messages.append(pickle.loads(queue.get()))
    errors = [m for m in messages if m[0] == "error"]
    if errors:
        # The first failing rank's exception: the others may only have failed because it left the group.
        raise errors[0][2] from failure
    if failure is not None:
        raise DistributedError(f"a training process died without reporting an error: {failure}") from failure
    results = [m[2] for m in messages if m[0] == "result"]
    if not results:
        raise DistributedError("training process 0 ended without a result")
    return results[0]


# ---------------------------------------------------------------------------------------------- data
def shard(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Process `rank`'s part of one global batch: contiguous slices in rank order, the first ``len % world_size``
    slices one item longer. A full global batch of world_size x b items gives rank r items [r*b, (r+1)*b).

    Raises ValueError when the batch has fewer items than processes (`groundscope.train.data.EpochBatches`
    drops such a last batch, so the loop never asks).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a group of {world_size} processes")
    n = len(batch)
    if n < world_size:
        raise ValueError(f"a batch of {n} items cannot give each of {world_size} processes one")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return list(batch[start : start + base + (1 if rank < extra else 0)])


def pad_to_global_size(batch):
    """Pad a batch's images (right and bottom, with zeros, mask 0) to the largest height and width of the whole
    global batch, the size one process collating the whole batch would pad to. Batches without a pixel mask
    (fixed-size inputs) and single-process runs come back as they are."""
    if not enabled() or getattr(batch, "pixel_mask", None) is None:
        return batch
    h, w = batch.pixel_values.shape[-2:]
    size = _tensor([h, w], torch.int64)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    height, width = (int(v) for v in size.tolist())
    if (height, width) == (h, w):
        return batch
    pad = (0, width - w, 0, height - h)
    return dataclasses.replace(batch, pixel_values=torch.nn.functional.pad(batch.pixel_values, pad),
                               pixel_mask=torch.nn.functional.pad(batch.pixel_mask, pad))


# ---------------------------------------------------------------------------------------------- reductions
def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _tensor(values, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=_comm_device())


def loss_normalizer(count: float) -> float:
    """The divisor of a loss summed over this process's `count` target boxes (or denoising positives).

    One process: max(count, 1), DETR's. Several: max(global count, 1) / processes, so that averaging the
    processes' gradients gives exactly the gradient of the whole batch divided by its count (DETR's all-reduce
    of num_boxes). Every process must call it at the same point of its step.
    """
    if not enabled():
        return max(float(count), 1.0)
    total = _tensor([float(count)], torch.float64)
    dist.all_reduce(total)
    return max(float(total.item()), 1.0) / dist.get_world_size()


def max_over_processes(value: int) -> int:
    """The largest `value` of all processes (itself in one process)."""
    if not enabled():
        return int(value)
    t = _tensor([int(value)], torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sum_over_processes(value: float) -> float:
    if not enabled():
        return value
    t = _tensor([float(value)], torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def any_process(flag: bool) -> bool:
    """Whether any process says yes (all stop at the same step when one of them got Ctrl-C first)."""
    if not enabled():
        return bool(flag)
    t = _tensor([1 if flag else 0], torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each logged value averaged over the processes (the same keys everywhere, else DistributedError)."""
    if not enabled():
        return dict(values)
    keys = sorted(values)
    crc = zlib.crc32("\0".join(keys).encode())
    check = _tensor([crc, -crc], torch.int64)
    dist.all_reduce(check, op=dist.ReduceOp.MAX)
    if int(check[0]) != -int(check[1]):
        raise DistributedError(f"the processes logged different values this step (this one: {', '.join(keys)})")
    t = _tensor([float(values[k]) for k in keys], torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over the processes, in place.

    A parameter without a gradient in one process (a branch its batch did not use) counts as zeros there; one
    without a gradient in every process keeps none, so AdamW skips it exactly as in one process.
    """
    if not enabled():
        return
    world = dist.get_world_size()
    has = _tensor([p.grad is not None for p in params], torch.int64)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    grads = []
    for p, any_has in zip(params, has.tolist()):
        if not any_has:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    # Bucket by (device, dtype) and size: one all-reduce per bucket, not per tensor.
    buckets: dict[tuple, list[list[torch.Tensor]]] = {}
    for g in grads:
        lists = buckets.setdefault((g.device, g.dtype), [[]])
        if lists[-1] and sum(x.numel() for x in lists[-1]) + g.numel() > BUCKET_ELEMENTS:
            lists.append([])
        lists[-1].append(g)
    for lists in buckets.values():
        for bucket in lists:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            if flat.device != _comm_device():
                flat = flat.to(_comm_device())
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's trainable parameters and buffers to every process (what DistributedDataParallel does at the
    start), so the processes start from one set of weights even where a part was initialised at random. Frozen
    parameters are left out: every process loads them from the same files (a frozen LM can be gigabytes)."""
    if not enabled():
        return
    for t in [p for p in module.parameters() if p.requires_grad] + list(module.buffers()):
        data = t.data if t.device == _comm_device() else t.data.to(_comm_device())
        dist.broadcast(data, src=0)
        if data is not t.data:
            t.data.copy_(data)


def barrier() -> None:
    if not enabled():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def gather_rng_states() -> list[dict] | None:
    """Every process's generator states (`checkpoint.rng_state`), in rank order; None in one process."""
    if not enabled():
        return None
    from groundscope.train.checkpoint import rng_state

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, rng_state())
    return out


def own_rng_state(ck: dict) -> dict | None:
    """The generator state this process resumes with from checkpoint `ck`: its own rank's when the checkpoint
    was written by as many processes, rank 0's (``rng``) in one process; None when the number of processes
    changed (then the caller seeds each process afresh: the run cannot equal an uninterrupted one anyway)."""
    proc = info()
    saved = int(ck.get("world_size", 1))
    if saved != proc.world_size:
        return None
    if not proc.enabled:
        return ck["rng"]
    states = ck.get("rng_ranks")
    if not states or len(states) != proc.world_size:
        return None
    return states[proc.rank]


def unsynced_batchnorm(module: torch.nn.Module, frozen: Sequence[torch.nn.Module] = ()) -> list[str]:
    """Names of BatchNorm layers that will normalise with per-process batch statistics (not inside a frozen
    module, which stays in eval mode and uses its running statistics)."""
    skip = {id(m) for f in frozen for m in f.modules()}
    return [name for name, m in module.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in skip]
