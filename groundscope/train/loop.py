"""`Trainer`: fine-tune (or train) a Grounding DINO / MM-GDINO / LLMDet detector from a `TrainConfig`.

One optimizer step = `accumulate` forward/backward passes of `batch_size` images, gradient clipping, AdamW,
then the learning-rate schedule. Around it:

* parameter groups: lr x `backbone_lr_mult` for ``model.backbone``, x `text_lr_mult` for
  ``model.text_backbone`` (MM-GDINO: 0.1 for both), any ``lr_mults`` prefix on top (longest prefix wins); no
  weight decay on biases, normalisation weights, embeddings and other 1-D parameters.
* freezing by parameter-name prefix (``model.text_backbone``); a frozen submodule also stays in eval mode so
  its dropout does not add noise to features nothing can adapt to.
* schedule: linear warm-up from `warmup_factor`, then cosine to `min_lr_ratio` or step decay at milestones.
* outputs in ``out_dir``: ``log.jsonl`` (one line per step, one per evaluation), ``checkpoints/last.pt`` (+
  ``step_NNNNNN.pt``), ``loss.png``, ``config.yaml``, ``eval/step_NNNNNN/`` (COCO results and metrics) and,
  at the end, ``model/`` (safetensors + tokenizer + preprocessor_config.json, loadable by `load_detector`).
* exact resume: checkpoints hold model, optimizer, scheduler, RNG states and the data position; data order and
  augmentation are functions of (seed, epoch, index), so a resumed run computes the same losses as an
  uninterrupted one.
* Ctrl-C (SIGINT) finishes the current optimizer step, writes a checkpoint and returns; a second Ctrl-C aborts.
* several processes (`groundscope.train.distributed`, ``--nproc`` or torchrun): ``batch_size`` is per process;
  each takes its slice of every global batch, gradients are averaged, logged values are averaged, and rank 0
  alone writes files while the others wait.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from groundscope.data.atomic import remove_torn_writes
from groundscope.data.paraphrase import ParaphraseError, load_paraphrases
from groundscope.train import checkpoint as ckpt_io
from groundscope.train import distributed as dist_
from groundscope.train.config import ConfigError, TrainConfig, setting_default
from groundscope.train.data import (
    GroundingTrainDataset,
    PooledDataset,
    ResumableBatchSampler,
    batches_per_epoch,
    check_images_exist,
    collate,
    item_generator,
    load_records,
)
from groundscope.train.caption_loss import caption_losses
from groundscope.train.denoising import build_denoising
from groundscope.train.forward import enable_activation_checkpointing, forward_train
from groundscope.train.losses import GroundingLoss, LossWeights
from groundscope.train.matcher import HungarianMatcher
from groundscope.train.memory import release_free_memory, resident_mb
from groundscope.train.optim import apply_freeze, frozen_modules, lr_lambda, param_groups
from groundscope.train.plot import draw_loss_curve

CAPTION_HEAD_DIR = "caption_head"  # inside the exported model folder: load_detector ignores it


TRIM_EVERY = 25  # optimizer steps between returns of freed heap memory to the OS
DENOISING_STREAM = 1  # `item_generator` stream of the denoising noise (distinct from any other per-item draws)


class TrainError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------- trainer
@dataclass
class Position:
    """Where training is: optimizer steps done, and the next batch (epoch, batch index within it)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


class Trainer:
    """Train a detector as `config` says.

    The loop, optimizer, schedule, checkpoints, logs and Ctrl-C handling are shared with other tasks: a
    subclass (`groundscope.train.dam.DamTrainer` for ``task: dam``) replaces the task's parts, which are
    `_setup_model`, `_setup_data`, `_setup_loss`, `_lr_mults`, `_batch_loss`, `export` and `evaluate`
    (and sets ``collate_fn``). `groundscope.train.trainers.build_trainer` picks the class from ``config.task``.

    Args:
        config: a validated `TrainConfig`.
        out_dir: overrides ``config.train.out_dir``.
        detector: an already loaded `GroundingDetector` (default: ``load_detector(config.model.path)``).
        console: where the progress display and messages go (default: stderr).
    """

    task = "detect"
    collate_fn = staticmethod(collate)
    item_name = "images"  # what a batch's indices count, in messages
    plot_options: dict = {}  # draw_loss_curve's panels (the detector's by default)

    def __init__(self, config: TrainConfig, out_dir: str | Path | None = None, *, detector=None,
                 console: Console | None = None):
        if config.task != self.task:
            raise ConfigError(f"task: {config.task!r} configs train with build_trainer (this is the {self.task!r} "
                              "trainer)")
        self.cfg = config
        self.out = Path(out_dir if out_dir is not None else config.train.out_dir)
        self.console = console or Console(stderr=True)
        # Several processes (`groundscope.train.distributed`): rank 0 alone prints and writes files.
        self.dist = dist_.info()
        if not self.dist.is_main:
            self.console = Console(stderr=True, quiet=True)
        self.device = dist_.process_device(resolve_device(config.model.device), self.dist)
        t = config.train
        seed_everything(t.seed)
        self._setup_model(detector)
        if not any(p.requires_grad for p in self.trainable.parameters()):
            raise ConfigError("model.freeze: every parameter is frozen; nothing would train")
        self.dataset = self._setup_data()
        d = config.data
        cores = os.cpu_count() or 1
        if self.device.type == "cpu" and d.num_workers and torch.get_num_threads() + d.num_workers > cores:
            # OpenMP threads spin while they wait; with workers on the same cores a step can take 50x longer.
            self.console.print(
                f"[yellow]warning:[/] {d.num_workers} data worker(s) + {torch.get_num_threads()} torch threads on "
                f"{cores} cores: training on the CPU can slow down many times over; use data.num_workers: 0, "
                "fewer threads (torch.set_num_threads) or OMP_WAIT_POLICY=PASSIVE",
                highlight=False,
            )
        # batch_size is per process: an optimizer step's global batch is batch_size x processes.
        world = self.dist.world_size
        self.batches_per_epoch = batches_per_epoch(len(self.dataset), t.batch_size * world, min_batch=world)
        if self.batches_per_epoch == 0:
            raise ConfigError(f"data.train: {len(self.dataset)} {self.item_name} cannot give each of {world} "
                              "processes one; start fewer processes or add data")
        if t.max_steps is not None:
            self.max_steps = t.max_steps
        else:
            self.max_steps = math.ceil(t.epochs * self.batches_per_epoch / t.accumulate)
        s = config.schedule
        if s.warmup_steps >= self.max_steps or (s.milestones and s.milestones[-1] >= self.max_steps):
            raise ConfigError(
                f"schedule: warmup_steps ({s.warmup_steps}) and milestones ({s.milestones}) must be below the "
                f"{self.max_steps} optimizer steps of this run"
            )
        self._setup_loss()

        o = config.optim
        self.groups = param_groups(self.trainable, o.lr, o.weight_decay, self._lr_mults())
        self.params = [p for g in self.groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "names"} for g in self.groups],
            lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(s, self.max_steps))
        self.pos = Position()
        self._stop_requested = False
        self._iter = None
        self.history: list[dict] = []
        if self.dist.enabled:
            self._setup_processes()

    def _setup_processes(self) -> None:
        """Data-parallel start (`groundscope.train.distributed`): every process takes rank 0's weights, is
        told about BatchNorm layers that will not be synchronised, and gets its own dropout generators."""
        dist_.broadcast_module(self.trainable)
        unsynced = dist_.unsynced_batchnorm(self.trainable, self._frozen_modules)
        if unsynced:
            self.console.print(
                f"[yellow]warning:[/] {len(unsynced)} BatchNorm layer(s) ({', '.join(unsynced[:3])}) normalise with "
                f"the statistics of each process's {self.cfg.train.batch_size} {self.item_name}, not of the global "
                "batch; freeze them (model.freeze) to use their running statistics",
                highlight=False,
            )
        seed_everything(dist_.rank_seed(self.cfg.train.seed, self.dist.rank))

    # ------------------------------------------------------------------ task parts (detector)
    def _setup_model(self, detector) -> None:
        """Set ``self.model`` (what checkpoints hold), ``self.trainable`` (the namespace of freeze prefixes and
        parameter groups), ``self.head``, ``self.frozen`` and ``self._frozen_modules``."""
        config, t = self.cfg, self.cfg.train
        if detector is None:
            from groundscope.models.loading import load_detector

            detector = load_detector(config.model.path, device=self.device)
        self.detector = detector
        self.model = detector.model.to(self.device)
        # LLMDet's caption head trains beside the detector; `self.trainable` names both ("model.*" as before,
        # "captioner.*" for the head) for freezing, parameter groups and train/eval modes.
        self.head = build_head_for_training(config.caption, int(self.model.config.d_model), self.device,
                                            int(getattr(self.model.config, "num_feature_levels", 4)))
        self.trainable = self.model if self.head is None else _Joint(self.model, self.head)
        self.frozen = apply_freeze(self.trainable, config.model.freeze)
        if t.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        self._frozen_modules = frozen_modules(self.trainable, config.model.freeze)
        if self.head is not None:
            self._frozen_modules.append(self.head.lm)  # the LM's dropout stays off; LoRA adapters still train
        self.detector_trains = any(p.requires_grad for p in self.model.parameters())

    def _setup_data(self):
        """The training dataset (items in a fixed order; `set_epoch` reseeds any randomness)."""
        config, t, d, detector = self.cfg, self.cfg.train, self.cfg.data, self.detector
        shortest, longest = detector.image_size
        try:
            table = load_paraphrases(d.paraphrases) if d.paraphrases else None
        except ParaphraseError as e:
            raise ConfigError(f"data.paraphrases: {e}") from e
        parts = []
        for source in d.train:
            records, fmt = load_records(source.path, source.format, source.label_map)
            if not records.images:
                raise TrainError(f"'{source.path}' holds no images to train on")
            check_images_exist(records, source.image_root or Path(source.path).parent, source.path)
            parts.append(GroundingTrainDataset(
                records,
                detector.tokenizer,
                int(self.model.config.max_text_len),
                source.image_root or Path(source.path).parent,
                d.scales or [shortest],
                d.max_size or longest,
                flip_prob=d.flip_prob,
                num_negatives=d.num_negatives,
                full_negative_prob=d.full_negative_prob,
                grounding_negatives=d.grounding_negatives,
                mode=source.mode,
                source_format=fmt,
                seed=t.seed,
                index_offset=sum(len(p) for p in parts),
                paraphrases=table,
                paraphrase_prob=d.paraphrase_prob,
                flip_expressions=d.flip_expressions,
            ))
        dataset = parts[0] if len(parts) == 1 else PooledDataset(parts)
        if self.head is not None and config.caption.default_prompt == "auto":
            self.head.config.default_prompt = _vocabulary_prompt(parts, detector.tokenizer,
                                                                 int(self.model.config.max_text_len))
        return dataset

    def _setup_loss(self) -> None:
        lc = self.cfg.loss
        matcher = HungarianMatcher(lc.match_cls, lc.match_bbox, lc.match_giou, lc.focal_alpha, lc.focal_gamma)
        self.criterion = GroundingLoss(matcher, LossWeights(lc.cls, lc.bbox, lc.giou), lc.focal_alpha, lc.focal_gamma,
                                       normalizer=dist_.loss_normalizer)

    def _lr_mults(self) -> dict[str, float]:
        """{parameter name prefix: lr factor} of the optimizer groups (longest prefix wins)."""
        o = self.cfg.optim
        return {"model.backbone": o.backbone_lr_mult, "model.text_backbone": o.text_lr_mult, **o.lr_mults}

    def _detector_forward(self, batch, autocast):
        """The detector's training forward on a batch -> (TrainOutputs, denoising queries or None)."""
        t = self.cfg.train
        pixels = batch.pixel_values.to(self.device, non_blocking=True)
        mask = batch.pixel_mask.to(self.device, non_blocking=True)
        dn = None
        if t.denoising.enabled:
            # Noise per item from (seed, epoch, index) and the group layout of the whole global batch, so that
            # processes sharing a batch build what one process with all of it would.
            dn = build_denoising(batch.targets, batch.prompts, int(self.model.config.num_queries),
                                 num_queries=t.denoising.queries, label_noise=t.denoising.label_noise,
                                 box_noise=t.denoising.box_noise,
                                 generator=[item_generator(t.seed, self.pos.epoch, i, DENOISING_STREAM)
                                            for i in batch.indices],
                                 max_gt=dist_.max_over_processes(max((len(x) for x in batch.targets), default=0)))
        # Stage 1 of LLMDet trains the caption head alone: the detector runs without a graph.
        with autocast, (nullcontext() if self.detector_trains else torch.no_grad()):
            out = forward_train(self.model, pixels, mask, batch.prompts, dn[0] if dn else None)
        return out, dn

    def _grounding_loss(self, out, batch, dn, text_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Box + token loss of the decoder layers (and encoder proposals, denoising queries), over the prompt
        tokens in `text_mask` (B, T)."""
        t = self.cfg.train
        loss, parts = self.criterion(
            out.decoder if self.cfg.loss.aux else out.decoder[-1:],
            text_mask,
            batch.targets,
            out.encoder if self.cfg.loss.encoder else None,
        )
        if dn is not None and out.denoising is not None:
            layers = out.denoising if self.cfg.loss.aux else out.denoising[-1:]
            dn_loss, dn_parts = self.criterion.denoising(layers, text_mask, batch.targets, dn[1])
            loss = loss + t.denoising.weight * dn_loss
            parts = {**parts, **dn_parts, "loss": float(loss.detach())}
        return loss, parts

    def _batch_loss(self, batch, autocast) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss with a graph, {log key: value}) of one batch; the forward pass runs under `autocast`."""
        out, dn = self._detector_forward(batch, autocast)
        loss, parts = self._grounding_loss(out, batch, dn, out.text_mask)
        if self.head is not None:
            c = self.cfg.caption
            matches = self.criterion.match(out.decoder[-1], batch.targets)
            cap = caption_losses(self.head, out, matches, batch.phrases, batch.long_captions)
            weights = {"image": c.image_weight, "region": c.region_weight}
            for k, v in cap.items():
                loss = loss + weights[k] * v
            parts = {**parts, **{f"cap.{k}": float(v.detach()) for k, v in cap.items()},
                     "loss": float(loss.detach())}
        return loss, parts

    def export(self, dtype: torch.dtype) -> Path:
        """Write the trained model for inference into ``out/model``; returns the folder."""
        model_dir = ckpt_io.export_model(self.detector, self.out / "model", dtype)
        if self.head is not None:
            self.head.save(model_dir / CAPTION_HEAD_DIR)
        return model_dir

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    # ------------------------------------------------------------------ data
    def _loader(self):
        self.dataset.set_epoch(self.pos.epoch)
        t = self.cfg.train
        sampler = ResumableBatchSampler(len(self.dataset), t.batch_size, t.seed, self.pos.epoch, self.pos.batch,
                                        shuffle=self.cfg.data.shuffle, rank=self.dist.rank,
                                        world_size=self.dist.world_size)
        workers = self.cfg.data.num_workers
        # Creating a DataLoader iterator draws a worker seed from torch's global generator unless it has its
        # own; the global one also drives dropout, so a resumed run (which creates iterators at other moments)
        # would see different dropout masks.
        generator = torch.Generator().manual_seed(t.seed * 100003 + self.pos.epoch)
        return iter(torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate_fn,
                                                num_workers=workers, persistent_workers=False, generator=generator,
                                                worker_init_fn=_ignore_sigint if workers else None))

    def _next_batch(self):
        while True:
            if self._iter is None:
                self._iter = self._loader()
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self.pos.epoch += 1
                self.pos.batch = 0
                continue
            self.pos.batch += 1
            return batch

    # ------------------------------------------------------------------ one step
    def _set_train_mode(self) -> None:
        self.trainable.train()
        for m in self._frozen_modules:
            m.eval()

    def train_step(self) -> dict:
        """One optimizer step; returns the step's log record."""
        t = self.cfg.train
        self._set_train_mode()
        start = time.perf_counter()
        sums: dict[str, float] = {}
        images = 0
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if t.bf16 else nullcontext())
        for _ in range(t.accumulate):
            batch = dist_.pad_to_global_size(self._next_batch())
            loss, parts = self._batch_loss(batch, autocast)
            if not torch.isfinite(loss):
                raise TrainError(
                    f"the loss is {float(loss)} at step {self.pos.step + 1} ({self.item_name} {batch.indices}); "
                    "lower optim.lr, raise schedule.warmup_steps or check those annotations"
                )
            (loss / t.accumulate).backward()
            images += len(batch)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / t.accumulate
        dist_.average_gradients(self.params)
        sums = dist_.mean_over_processes(sums)
        images = int(dist_.sum_over_processes(images))
        clip = self.cfg.optim.clip_grad if self.cfg.optim.clip_grad > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        lr = self.cfg.optim.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)  # base lr of this step
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1
        seconds = time.perf_counter() - start
        if self.pos.step % TRIM_EVERY == 0:
            release_free_memory()
        record = {"type": "train", "step": self.pos.step, "epoch": self.pos.epoch, "lr": lr,
                  **{k: sums[k] for k in sorted(sums, key=_part_order)}, "grad_norm": grad_norm,
                  "images": images, "seconds": round(seconds, 4), "images_per_s": round(images / seconds, 3)}
        rss = resident_mb()
        if rss is not None:
            record["rss_mb"] = rss
        return record

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "format": ckpt_io.FORMAT,
            "version": ckpt_io.VERSION,
            "step": self.pos.step,
            "epoch": self.pos.epoch,
            "batch": self.pos.batch,
            "model": self.model.state_dict(),
            **({"captioner": self.head.trainable_state_dict()} if self.head is not None else {}),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt_io.rng_state(),
            "world_size": self.dist.world_size,
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Write ``step_NNNNNN.pt`` (when kept) and ``last.pt`` atomically; prune old step files.

        With several processes every one calls this: rank 0 writes (with every process's RNG state), the others
        wait until the file is there."""
        rng_ranks = dist_.gather_rng_states()
        if self.dist.is_main:
            self._write_checkpoint({**self.state_dict(), **({"rng_ranks": rng_ranks} if rng_ranks else {})})
        dist_.barrier()
        return self.last_checkpoint

    def _write_checkpoint(self, state: dict) -> None:
        keep = self.cfg.train.keep_checkpoints
        if keep > 0:
            step_file = ckpt_io.atomic_save(state, self.checkpoint_dir / f"step_{self.pos.step:06d}.pt")
            ckpt_io.atomic_link(step_file, self.last_checkpoint)
            olds = sorted(self.checkpoint_dir.glob("step_*.pt"))
            for old in olds[:-keep]:
                old.unlink(missing_ok=True)
        else:
            ckpt_io.atomic_save(state, self.last_checkpoint)
        self._rewrite_plot()

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything from a checkpoint (the model as loaded is overwritten)."""
        ck = ckpt_io.load_checkpoint(path, map_location=self.device)
        diffs = _config_differences(ck.get("config", {}), self.cfg.to_dict())
        if diffs:
            self.console.print(
                "[yellow]warning:[/] resuming with a different config (the run will not equal an uninterrupted "
                f"one): {', '.join(diffs[:8])}{' ...' if len(diffs) > 8 else ''}",
                highlight=False,
            )
        self.model.load_state_dict(ck["model"])
        if self.head is not None:
            if "captioner" not in ck:
                raise TrainError(f"'{path}' was written without a caption head; resume it with caption.enabled: false")
            _, unexpected = self.head.load_state_dict(ck["captioner"], strict=False)
            if unexpected:
                raise TrainError(f"the caption head in '{path}' does not fit this one (unexpected {unexpected[:4]}); "
                                 "resume with the same caption settings")
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except ValueError as e:
            raise TrainError(
                f"the optimizer state in '{path}' does not fit this model's trainable parameters ({e}); "
                "resume with the same model.freeze and optim settings"
            ) from e
        self.scheduler.load_state_dict(ck["scheduler"])
        self.pos = Position(int(ck["step"]), int(ck["epoch"]), int(ck["batch"]))
        self._iter = None
        rng = dist_.own_rng_state(ck)
        if rng is None:
            self._resume_with_other_process_count(ck)
        else:
            # Last, so nothing done while restoring (e.g. model construction) advances the generators.
            ckpt_io.set_rng_state(rng)

    def _resume_with_other_process_count(self, ck: dict) -> None:
        """A checkpoint of another number of processes: its batch position counts other global batches, so it
        becomes the same number of items seen in this run's global batches, and each process gets fresh
        generators; the run goes on, but cannot equal an uninterrupted one."""
        saved = int(ck.get("world_size", 1))
        old = int(ck.get("config", {}).get("train", {}).get("batch_size", self.cfg.train.batch_size)) * saved
        self.pos.batch = self.pos.batch * old // (self.cfg.train.batch_size * self.dist.world_size)
        seed_everything(dist_.rank_seed(self.cfg.train.seed + self.pos.step, self.dist.rank))
        self.console.print(
            f"[yellow]warning:[/] the checkpoint was written by {saved} training process(es), this run has "
            f"{self.dist.world_size}: the data position is converted and the random generators start afresh, "
            f"so the run will not equal an uninterrupted one (resume with --nproc {saved} for that)",
            highlight=False,
        )

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict) -> None:
        self.history.append(record)
        if not self.dist.is_main:
            return  # rank 0 writes the log (the records are the same on every process)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Keep log lines up to `step` (a resumed run rewrites what came after its checkpoint)."""
        kept = []
        if self.log_path.exists():
            for line in self.log_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if rec.get("step", 0) <= step:
                    kept.append(rec)
        ckpt_io.atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.log_path)
        self.history = kept

    def _rewrite_plot(self) -> None:
        if not self.dist.is_main:
            return
        try:
            draw_loss_curve(self.history, self.out / "loss.png", **self.plot_options)
        except Exception as e:  # a plot must never stop training
            self.console.print(f"[yellow]warning:[/] could not draw loss.png: {e}", highlight=False)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, final: bool = False) -> dict | None:
        """COCO box AP of the current model on ``data.val`` (via `groundscope.evaluate.run_evaluation`)."""
        from groundscope.evaluate.protocols import PLAIN
        from groundscope.evaluate.run import run_evaluation

        val = self.cfg.data.val
        if val is None:
            return None
        e = self.cfg.eval
        path = Path(val.path)
        fmt = val.format if val.format != "auto" else ("coco" if path.suffix == ".json" else "odvg")
        if fmt not in ("coco", "odvg"):
            raise ConfigError(f"data.val: evaluation reads COCO or ODVG detection files, not {fmt}")
        out_dir = self.out / "eval" / f"step_{self.pos.step:06d}"
        if out_dir.exists():
            shutil.rmtree(out_dir)  # results of other weights (an earlier run) must not be reused
        out_dir.mkdir(parents=True)
        if e.max_images is not None:
            path = _subset_annotations(path, fmt, e.max_images, out_dir)
        self.model.eval()
        # The detector caches text features across calls; they are stale once the weights change.
        self.detector.clear_cache()
        try:
            metrics = run_evaluation(
                self.detector, fmt, path, val.image_root or Path(val.path).parent, out_dir,
                label_map=val.label_map, batch_size=e.batch_size, box_threshold=e.box_threshold,
                max_detections=e.max_detections, progress=False, console=self.console, settings=PLAIN,
            )
        finally:
            self.detector.clear_cache()
            self._set_train_mode()
        record = {"type": "eval", "step": self.pos.step, "final": final,
                  **{k: v for k, v in metrics.items() if isinstance(v, float)}}
        self._log(record)
        return record

    # ------------------------------------------------------------------ signals
    def request_stop(self) -> None:
        """Finish the current optimizer step, save a checkpoint and return from `fit` (what Ctrl-C does)."""
        self._stop_requested = True

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, the last checkpoint stays as it is
        self.request_stop()
        self.console.print("\n[yellow]interrupt:[/] saving a checkpoint after this step (Ctrl-C again to abort)",
                           highlight=False)

    # ------------------------------------------------------------------ main loop
    def fit(self, resume: bool | str | Path = False, on_step: Callable[["Trainer", dict], None] | None = None) -> dict:
        """Train to ``max_steps``.

        Args:
            resume: True to continue from ``out_dir/checkpoints/last.pt`` (a fresh start while there is none yet),
                or a checkpoint path.
            on_step: called after every optimizer step with the trainer and the step's log record.
        Returns:
            summary: {"step", "max_steps", "interrupted", "last_loss", "eval", "checkpoint", "model_dir", "seconds"}.
        """
        start = time.perf_counter()
        main = self.dist.is_main  # with several processes, rank 0 alone writes files
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            # a process killed mid checkpoint write leaves its temporary file; the checkpoint beside it is whole
            remove_torn_writes(self.last_checkpoint.parent)
            remove_torn_writes(self.out)
        if resume is True and not self.last_checkpoint.exists():
            # Nothing saved yet (a run killed before its first checkpoint, or a first run): `train --resume` is
            # then a fresh start, so the same command can be rerun after a crash at any moment.
            self.console.print(f"--resume: no checkpoint in '{self.out}' yet; starting at step 0", highlight=False)
            resume = False
        if resume:
            path = self.last_checkpoint if resume is True else Path(resume)
            if not path.exists():
                raise TrainError(f"--resume: no checkpoint at '{path}'; start without --resume")
            self.load_checkpoint(path)
            if main:
                self._truncate_log(self.pos.step)
            self.console.print(f"resumed from {path} at step {self.pos.step}", highlight=False)
        else:
            if self.last_checkpoint.exists():
                raise TrainError(
                    f"'{self.out}' already holds a run ({self.last_checkpoint}); pass --resume to continue it "
                    "or choose another --out"
                )
            if main:
                self.log_path.unlink(missing_ok=True)
            self.history = []
        if main:
            ckpt_io.atomic_write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), self.out / "config.yaml")

        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main else None
        t = self.cfg.train
        last_eval = None
        record: dict = {}
        show = t.progress and self.console.is_terminal and main
        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        try:
            with Progress(*columns, console=self.console, disable=not show) as bar:
                task = bar.add_task("train", total=self.max_steps, completed=self.pos.step, info="")
                # With several processes, Ctrl-C reaches them at slightly different moments: all stop together.
                while self.pos.step < self.max_steps and not dist_.any_process(self._stop_requested):
                    record = self.train_step()
                    self._log(record)
                    info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['images_per_s']:.2f} img/s"
                    bar.update(task, completed=self.pos.step, info=info)
                    if not show and (self.pos.step % t.log_every == 0 or self.pos.step == self.max_steps):
                        self.console.print(f"step {self.pos.step}/{self.max_steps}  {info}", highlight=False)
                    if on_step is not None:
                        on_step(self, record)
                    done = self.pos.step >= self.max_steps
                    if t.checkpoint_every and self.pos.step % t.checkpoint_every == 0 and not done:
                        self.save_checkpoint()
                    if self.cfg.eval.every and self.pos.step % self.cfg.eval.every == 0 and not done:
                        last_eval = self._on_main(self.evaluate)
                        self._print_eval(last_eval)
            interrupted = self.pos.step < self.max_steps
            checkpoint = self.save_checkpoint()
            model_dir = None
            if not interrupted:
                dtype = getattr(torch, t.save_dtype)
                model_dir = self._on_main(lambda: self.export(dtype))
                periodic = self.cfg.eval.every and self.max_steps % self.cfg.eval.every == 0
                if (self.cfg.eval.at_end or periodic) and self.cfg.data.val is not None:
                    last_eval = self._on_main(lambda: self.evaluate(final=True))
                    self._print_eval(last_eval)
                self._rewrite_plot()
        finally:
            if in_main and previous is not None:
                signal.signal(signal.SIGINT, previous)
        return {
            "step": self.pos.step,
            "max_steps": self.max_steps,
            "interrupted": interrupted,
            "last_loss": record.get("loss"),
            "eval": last_eval,
            "checkpoint": str(checkpoint),
            "model_dir": str(model_dir) if model_dir else None,
            "seconds": round(time.perf_counter() - start, 2),
        }

    def _on_main(self, fn: Callable[[], object]):
        """``fn()`` on rank 0 only (evaluation, export) while the other processes wait; its result there, None
        elsewhere. In one process: just ``fn()``."""
        result = fn() if self.dist.is_main else None
        dist_.barrier()
        return result

    def _print_eval(self, rec: dict | None) -> None:
        if rec:
            self.console.print(f"eval step {rec['step']}: AP {rec.get('AP', float('nan')):.4f}  "
                               f"AP50 {rec.get('AP50', float('nan')):.4f}", highlight=False)


class _Joint(torch.nn.Module):
    """The detector's submodules under their own names plus the caption head as ``captioner``: one namespace
    for freeze prefixes ("model.backbone", "captioner.projector"), lr multipliers and parameter groups."""

    def __init__(self, detector_model: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        if any(True for _ in detector_model.named_parameters(recurse=False)):
            raise TrainError("the detector has parameters outside its submodules; the caption head cannot join it")
        for name, child in detector_model.named_children():
            self.add_module(name, child)
        self.captioner = head


def build_head_for_training(c, d_model: int, device: torch.device, num_levels: int = 4):
    """The caption head a config asks for (None when caption.enabled is false): a trained one from
    ``caption.head`` (LoRA added if the config asks for it and the head has none), else a new one on
    ``caption.llm``."""
    if not c.enabled:
        return None
    from dataclasses import asdict

    from groundscope.models.captioner import CaptionHeadConfig, attach_lora, build_caption_head, load_caption_head

    lora = asdict(c.lora) if c.lora is not None else None
    if c.head:
        head = load_caption_head(c.head, device, trainable=True)
        if head.config.d_model != d_model:
            raise ConfigError(f"caption.head '{c.head}' was made for d_model {head.config.d_model}, this detector "
                              f"has {d_model}")
        if lora and not head.config.lora:
            head.lm = attach_lora(head.lm, lora)
            head.config.lora = lora
        head.config.region_index = c.region_index  # a training choice: this run's config decides
        return head.train()
    cfg = CaptionHeadConfig(llm=c.llm, gguf_file=c.gguf_file, d_model=d_model, levels=list(c.levels),
                            grids=list(c.grids), image_max_tokens=c.image_max_tokens,
                            region_max_tokens=c.region_max_tokens, max_regions=c.max_regions, lora=lora,
                            default_prompt=c.default_prompt, template=c.template,
                            cross_attn_layers=c.cross_attn_layers, num_levels=num_levels,
                            region_index=c.region_index)
    return build_caption_head(cfg, device)


def _vocabulary_prompt(parts: list[GroundingTrainDataset], tokenizer, max_text_len: int) -> str:
    """The class names of the training data as one detector prompt (the first chunk that fits): the caption
    head looks at memory fused with such prompts in training, so it captions best with one ("object." else)."""
    from groundscope.prompts import chunk_classes

    names = []
    for p in parts:
        names += [n for n in p.records.categories if n not in names]
    if not names:
        return "object."
    return chunk_classes(tokenizer, names, max_text_len)[0].text


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process: a terminal sends SIGINT to the whole process group,
    and a worker that quit on it would break the step the main process is finishing before it saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _part_order(key: str) -> tuple:
    """Log order: total, last layer, encoder, then earlier decoder layers."""
    if key == "loss":
        return (0, key)
    if "." not in key:
        return (1, key)
    if key.startswith("enc."):
        return (2, key)
    if key.startswith("cap."):
        return (1, key)
    if key.startswith("dn."):
        return (3, key)
    return (4, key)


def _config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (out_dir and display settings do not affect the run). A setting the old
    config lacks that the new one has at its default (one added to groundscope after the checkpoint was written)
    changes nothing."""
    ignore = {"train.out_dir", "train.progress", "train.log_every", "dam.eval_samples", "dam.max_new_tokens"}
    out = []
    if not prefix:
        old = {"task": "detect", **old}  # checkpoints from before `task` existed are detector runs
    for k in sorted(set(old) | set(new)):
        if not prefix and k == "dam" and k not in old:
            continue  # only a task dam config has this section
        path = f"{prefix}{k}"
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, path + ".")
        elif a != b and path not in ignore and not path.startswith("eval."):
            if k not in old and b == setting_default(path):
                continue
            out.append(path)
    return out


def _subset_annotations(path: Path, fmt: str, n: int, out_dir: Path) -> Path:
    """The first `n` images of a COCO / ODVG file, written into `out_dir` (file names stay relative)."""
    if fmt == "odvg":
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()][:n]
        return ckpt_io.atomic_write_text("\n".join(lines) + "\n", out_dir / "val_subset.jsonl")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["images"] = data["images"][:n]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    return ckpt_io.atomic_write_text(json.dumps(data), out_dir / "val_subset.json")
