"""Labelling as a Ray Data pipeline: ``from_items`` (one row per chunk of image paths) -> ``map_batches`` on a pool
of actors that each load the model once -> chunk records streamed back to the driver as they finish.

A row is a whole chunk rather than one image because Ray Data forms batches from its blocks, which would put
images in different forward passes than the single-process run and change the floats in their last bits
(`groundscope.label.work` explains); with one chunk per row, every actor call is exactly one chunk and the
file equals the single-process one. On CPU each actor gets ``CPUs // actors`` threads; the file is
byte-identical to a single-process run given the same thread count (the test's setting), and otherwise may
differ in the last rounded digit of a value.

Images are opened by the workers, by absolute path: on a multi-machine cluster they must see the same
filesystem (a shared mount) at the same path, and have groundscope (and the model, or hub access) installed.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Iterator

from groundscope.label.work import Chunk, LabelError, LabelSettings, label_chunk, resolve_device

INSTALL_HINT = "pip install 'groundscope[scale]'"


def import_ray():
    """``ray`` with Ray Data, or a `LabelError` that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray core without the data extra has no ray.data)
    except ImportError as e:
        raise LabelError(f"--ray needs Ray Data, which is not installed ({e}); install it with {INSTALL_HINT}") from e
    return ray


class ChunkLabeller:
    """The per-actor callable: loads the detector once, then turns each batch of chunk rows into records."""

    def __init__(self, settings: dict[str, Any], device: str, threads: int | None):
        import torch

        from groundscope.models.loading import load_detector

        if threads:
            # Ray sets OMP_NUM_THREADS to the actor's CPU reservation; pin torch to the planned count instead.
            torch.set_num_threads(threads)
        self.settings = LabelSettings.from_dict(settings)
        self.detector = load_detector(self.settings.model, device=resolve_device(device),
                                      precision=self.settings.precision)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        records = [json.dumps(label_chunk(self.detector, Chunk.from_dict(json.loads(w)), self.settings))
                   for w in batch["work"]]
        return {"record": np.array(records, dtype=object)}


def _root_cause(error: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (RayTaskError.cause, ActorDiedError's cause chain)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if inner is None:
            break
        error = inner
    return error


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a cluster address nothing listens at (Ray itself retries for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local" or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise LabelError(f"nothing answers at --ray-address {address!r} ({e.strerror or e}); check the address "
                         "(`ray status` on the head node) or drop --ray-address for a local Ray") from None


def _plan_actors(ray, device: str, actors: int | None) -> tuple[int, float, float, int | None]:
    """-> (actors, CPUs per actor, GPUs per actor, torch threads per actor) for this cluster."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if use_gpu:
        if gpus < 1:
            raise LabelError(f"--device {device} but the Ray cluster has no GPUs; use --device cpu")
        n = actors or gpus
        if n > gpus:
            raise LabelError(f"--ray-actors {n} needs {n} GPUs with --device {device}; the Ray cluster has {gpus}")
        return n, 1.0, 1.0, None
    if cpus < 1:
        raise LabelError("the Ray cluster reports no CPUs; start its nodes with --num-cpus")
    n = actors or max(1, cpus // 4)
    if n > cpus:
        raise LabelError(f"--ray-actors {n} needs at least {n} CPUs; the Ray cluster has {cpus}")
    node_cpus = [int(nd["Resources"].get("CPU", 0)) for nd in ray.nodes() if nd.get("Alive")]
    per_actor = max(1, min(cpus // n, max(node_cpus, default=cpus)))
    return n, float(per_actor), 0.0, per_actor


def ray_executor(
    settings: LabelSettings,
    device: str = "cpu",
    address: str | None = None,
    actors: int | None = None,
    num_cpus: int | None = None,
):
    """An executor (see `groundscope.label.run`) that runs the chunks on Ray.

    Args:
        settings: the labelling settings (shipped to every actor).
        device: cpu, cuda or auto (resolved on each worker); GPU actors reserve one GPU each.
        address: a running cluster's address (``ray://host:10001``, ``host:6379`` or ``auto``); None starts a
            local one with ``num_cpus`` CPUs (default: all of this machine's) and no dashboard.
        actors: actors in the pool (default: one per GPU, or one per 4 CPUs).
        num_cpus: CPUs of the local cluster (ignored with ``address``).
    Ray is connected when the first chunk is due (nothing to do, no Ray start-up) and shut down after the last,
    if this call started it.
    """
    from groundscope.models.loading import ModelLoadError, resolve

    ray = import_ray()  # fail before any work when Ray is missing
    try:
        resolve(settings.model, "detector")  # a bad --model fails here, not inside every actor
    except ModelLoadError as e:
        raise LabelError(str(e)) from e

    def execute(chunks: list[Chunk]) -> Iterator[dict[str, Any]]:
        if not chunks:
            return
        started = not ray.is_initialized()
        if started and address is not None:
            _probe(address)
            try:
                ray.init(address=address)  # a cluster's settings are its own: pass nothing else
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise LabelError(f"cannot connect to the Ray cluster at --ray-address {address!r} ({e}); check the "
                                 "address (`ray status` on the head node) or drop --ray-address for a local Ray") from e
        elif started:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        try:
            yield from _run(ray, chunks, settings, device, actors)
        finally:
            if started:
                ray.shutdown()

    return execute


def _run(ray, chunks: list[Chunk], settings: LabelSettings, device: str, actors: int | None):
    """Plan the actor pool for this cluster and stream the records back."""
    n, cpus, gpus, threads = _plan_actors(ray, device, actors)
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.execution_options.preserve_order
    context.enable_progress_bars = False  # the CLI draws its own bar over the records as they arrive
    context.execution_options.preserve_order = False  # stream in completion order; the writer sorts
    try:
        yield from _stream(ray, chunks, settings, device, n, cpus, gpus, threads)
    finally:
        context.enable_progress_bars, context.execution_options.preserve_order = saved


def _stream(ray, chunks, settings, device, n, cpus, gpus, threads) -> Iterator[dict[str, Any]]:
    """Build the Dataset and yield each chunk record as an actor finishes it."""
    items = [{"work": json.dumps(c.to_dict())} for c in chunks]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ChunkLabeller,
        fn_constructor_kwargs={"settings": settings.to_dict(), "device": device, "threads": threads},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    try:
        for row in ds.iter_rows():
            yield json.loads(row["record"])
    except LabelError:
        raise
    except Exception as e:  # Ray wraps worker errors (a model that fails to load, a bad prompt) in its own
        cause = _root_cause(e)
        raise LabelError(f"a Ray worker failed: {type(cause).__name__}: {cause}") from e
