"""`DamTrainer`: Describe Anything fine-tuning (``task: dam``) through the detector trainer's loop.

Everything but the task's parts is `groundscope.train.loop.Trainer`'s: config validation and ``--set``, AdamW
groups with freeze prefixes and lr multipliers, warm-up + cosine / step schedule, gradient clipping and
accumulation, atomic checkpoints with exact resume, ``log.jsonl``, ``loss.png``, the progress bar and Ctrl-C.
The DAM parts:

* model: ``load_dam(model.path, from_base_vlm=True)``: a DAM folder, or a base VLM folder (VILA layout, as
  `groundscope pretrain-vlm` writes) whose mask embedding and context adapters start at zero, so step 0 is the
  base VLM describing the focal crop. Parameter names (freeze prefixes, ``optim.lr_mults``) are DamModel's:
  ``backbone.vision`` (the ViT), ``backbone.mask_embed``, ``backbone.adapters``, ``projector``, ``llm``;
  ``optim.backbone_lr_mult`` applies to ``backbone.vision`` and ``optim.text_lr_mult`` to ``llm``. With
  ``dam.lora`` the LM gets peft LoRA adapters (its own weights frozen) that are merged into it on export.
* data: region-description files (`groundscope.data.regions`); each sample is the region's 8-channel focal
  pixels (`groundscope.describe.focal_pixels`) and its description. No image augmentation: a flip would make
  the descriptions' "left" and "right" lie. ``dam.box_prob`` gives that share of the regions as their filled
  box instead of the mask, ``dam.point_prob`` that share as one click (drawn from seed, epoch and index). Data
  order and prompts are functions of (seed, epoch), so a resumed run sees the same batches.
* loss: the LM's next-token cross-entropy on the description tokens (and EOS) only; the log also holds the
  greedy token accuracy on them (``token_acc``).
* evaluation (``data.val``): the same loss and accuracy on the validation regions (``val_loss``,
  ``val_token_acc``), and ``eval/step_N/samples.jsonl`` with greedy descriptions of the first
  ``dam.eval_samples`` regions next to their references.
* export: ``out/model`` in the released DAM layout (`DamModel.save`, ``train.save_dtype``), loaded by
  `groundscope.describe.load_dam`.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from groundscope.describe.focal import RegionError, filled_box, focal_pixels, focal_prompt, region_to_mask
from groundscope.describe.model import IGNORE_INDEX, DamConfig, DamModel, load_dam
from groundscope.train.config import ConfigError, TrainConfig
from groundscope.train.data import TrainDataError
from groundscope.train.loop import Trainer, TrainError
from groundscope.train.optim import apply_freeze, frozen_modules


@dataclass
class RegionSample:
    """One region: (8, S, S) focal pixels, its description and its position in the dataset."""

    pixel_values: torch.Tensor
    description: str
    index: int


@dataclass
class RegionBatch:
    """Samples stacked: pixel_values (B, 8, S, S), descriptions, dataset positions."""

    pixel_values: torch.Tensor
    descriptions: list[str]
    indices: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.descriptions)


def collate_regions(samples: Sequence[RegionSample]) -> RegionBatch:
    return RegionBatch(torch.stack([s.pixel_values for s in samples]), [s.description for s in samples],
                       [s.index for s in samples])


class RegionTrainDataset(torch.utils.data.Dataset):
    """Region records -> `RegionSample` with a DAM's input processing (`DamConfig`: size, normalisation,
    resampling, aspect, focal-crop minimum). No image augmentation.

    Args:
        box_prob: share of the regions given as their filled box (`filled_box`) instead of the exact mask, the
            prompt a ``--box`` user sends.
        point_prob: share of the regions given as one click at a random pixel of the mask (`click_mask`: the disc
            a ``--points`` user sends).
        Which regions get which prompt is drawn from (seed, epoch, index), so a resumed run sees the same inputs;
        with both at 0 (the default) every region is its mask.
    Raises:
        ValueError: a share outside [0, 1], or shares adding up to more than 1.
    """

    def __init__(self, records: list, config: DamConfig, box_prob: float = 0.0, seed: int = 0,
                 point_prob: float = 0.0):
        if not (0.0 <= box_prob <= 1.0 and 0.0 <= point_prob <= 1.0 and box_prob + point_prob <= 1.0):
            raise ValueError(f"box_prob and point_prob must be in [0, 1] and add up to at most 1, got {box_prob}, "
                             f"{point_prob}")
        self.records = list(records)
        self.config = config
        self.box_prob = float(box_prob)
        self.point_prob = float(point_prob)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _draw(self, index: int) -> tuple[str, np.random.Generator]:
        """The prompt kind of region `index` in the current epoch, and the generator it was drawn from (a click's
        pixel is its next draw). The kind is the generator's first number: below box_prob a box, then
        point_prob's share a click, so adding clicks leaves every box draw as it was."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        u = rng.random()
        return ("box" if u < self.box_prob else "point" if u < self.box_prob + self.point_prob else "mask"), rng

    def prompt_kind(self, index: int) -> str:
        """How region `index` is given in the current epoch: "mask", "box" or "point"."""
        return self._draw(index)[0]

    def as_box(self, index: int) -> bool:
        """Whether region `index` is given as its filled box in the current epoch."""
        return self.prompt_kind(index) == "box"

    def __getitem__(self, index: int) -> RegionSample:
        r, c = self.records[index], self.config
        name = f"{r.image} annotation {r.id if r.id is not None else index}"
        try:
            mask = r.mask()
            kind, rng = self._draw(index)
            if kind == "box":
                mask = filled_box(mask, name=name)
            elif kind == "point":
                mask = click_mask(mask, rng, name=name)
            prompt = focal_prompt(r.image, mask, c.min_crop, name=name, crop=c.focal_crop, mode=c.crop_mode)
        except RegionError as e:
            raise TrainDataError(f"{e} (the annotation says the image is {r.height}x{r.width}, HxW)") from e
        pixels = focal_pixels(prompt, c.image_size, c.image_mean, c.image_std, c.resample, c.image_aspect_ratio)
        return RegionSample(pixels, r.description, index)


def click_mask(mask: np.ndarray, rng: np.random.Generator, name: str = "region") -> np.ndarray:
    """(H, W) bool: the disc a one-click points prompt becomes (`region_to_mask`'s default radius), at a pixel of
    `mask` drawn uniformly from `rng`.

    Raises:
        RegionError: the mask is empty.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise RegionError(f"{name}: the mask is empty (no pixel set), so there is nowhere to click")
    k = int(rng.integers(len(ys)))
    return region_to_mask(mask.shape, points=[(float(xs[k]), float(ys[k]))], name=name)


def read_region_sources(sources, max_images: int | None = None) -> list:
    """The records of every `DataSource` (region files), in order; with `max_images`, only the regions of
    the first that many images (of the first file that has them, then the next ...)."""
    from groundscope.data.regions import read_regions

    records = []
    for src in sources:
        rs = read_regions(src.path, src.image_root)
        if not rs.records:
            raise TrainError(f"'{src.path}' holds no regions to train on")
        records += rs.records
    if max_images is not None:
        keep, seen = [], []
        for r in records:
            key = (str(r.image), r.image_id)
            if key not in seen:
                if len(seen) == max_images:
                    continue
                seen.append(key)
            keep.append(r)
        records = keep
    return records


def _peft_wrapped(module: torch.nn.Module) -> bool:
    return hasattr(module, "merge_and_unload") and hasattr(module, "peft_config")


class DamTrainer(Trainer):
    """Fine-tune Describe Anything as a ``task: dam`` config says (see the module docstring).

    Args:
        config: a validated `TrainConfig` with ``task: dam``.
        out_dir: overrides ``config.train.out_dir``.
        model: an already built `DamModel` (default: ``load_dam(config.model.path, from_base_vlm=True)``).
        console: where the progress display and messages go.
    """

    task = "dam"
    collate_fn = staticmethod(collate_regions)
    item_name = "regions"
    plot_options = {"loss_title": "loss on the description tokens", "parts": ("token_acc",), "parts_title": "description-token accuracy (EMA)", "parts_log": False,
                    "parts_range": (0.0, 1.0), "eval_keys": ("val_loss",), "eval_title": "validation loss",
                    "eval_log": True, "eval_range": None}

    def __init__(self, config: TrainConfig, out_dir: str | Path | None = None, *, model: DamModel | None = None,
                 console=None):
        self._val_dataset: RegionTrainDataset | None = None
        super().__init__(config, out_dir, detector=model, console=console)

    # ------------------------------------------------------------------ task parts
    def _setup_model(self, model: DamModel | None) -> None:
        c = self.cfg
        if model is None:
            path = Path(c.model.path)
            model = load_dam(path, device=self.device, from_base_vlm=True)
            kind = "DAM" if (path / "context_provider").exists() else "base VLM (DAM parts start at zero)"
            self.console.print(f"loaded {kind} from {path}", highlight=False)
        if c.dam.prompt is not None:
            model.config.prompt = c.dam.prompt
        model.config.focal_crop = c.dam.focal_crop
        if c.dam.lora is not None:
            from groundscope.models.captioner import CaptionerError, attach_lora

            if _peft_wrapped(model.llm):
                raise ConfigError("dam.lora: the model's LM already has LoRA adapters")
            try:
                model.llm = attach_lora(model.llm, asdict(c.dam.lora))
            except CaptionerError as e:
                raise ConfigError(f"dam.lora: {e}") from e
        prompt_len = len(model.encode(model.user_message(1, c.dam.prompt))[0])
        if c.dam.max_text_tokens <= prompt_len + 1:
            raise ConfigError(f"dam.max_text_tokens ({c.dam.max_text_tokens}) leaves no room for a description after "
                              f"the {prompt_len}-token prompt; raise it")
        self.detector, self.head = None, None
        self.model = model.to(self.device)
        self.trainable = self.model
        self.frozen = apply_freeze(self.trainable, c.model.freeze)
        self._frozen_modules = frozen_modules(self.trainable, c.model.freeze)

    def _setup_data(self) -> RegionTrainDataset:
        c = self.cfg
        return RegionTrainDataset(read_region_sources(c.data.train), self.model.config, box_prob=c.dam.box_prob,
                                  seed=c.train.seed, point_prob=c.dam.point_prob)

    def _setup_loss(self) -> None:
        pass  # the LM computes it

    def _lr_mults(self) -> dict[str, float]:
        o = self.cfg.optim
        return {"backbone.vision": o.backbone_lr_mult, "llm": o.text_lr_mult, **o.lr_mults}

    def _inputs(self, descriptions: list[str]) -> dict[str, torch.Tensor]:
        """Token ids, attention mask and labels of one batch, cut to ``dam.max_text_tokens``."""
        enc = self.model.tokenize([1] * len(descriptions), descriptions, self.cfg.dam.prompt)
        n = self.cfg.dam.max_text_tokens
        return {k: v[:, :n] for k, v in enc.items()}

    def _forward(self, batch: RegionBatch):
        enc = self._inputs(batch.descriptions)
        return self.model(enc["input_ids"], enc["attention_mask"],
                          pixel_values=batch.pixel_values.to(self.device, non_blocking=True), labels=enc["labels"])

    @staticmethod
    def _token_hits(out) -> tuple[int, int]:
        """(correct greedy predictions, supervised tokens) of a forward output."""
        with torch.no_grad():
            target = out.labels[:, 1:]
            keep = target != IGNORE_INDEX
            hits = (out.logits[:, :-1].argmax(-1) == target) & keep
        return int(hits.sum()), int(keep.sum())

    def _batch_loss(self, batch: RegionBatch, autocast) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast:
            out = self._forward(batch)
        hits, n = self._token_hits(out)
        return out.loss, {"loss": float(out.loss.detach()), "token_acc": hits / max(n, 1)}

    def export(self, dtype: torch.dtype) -> Path:
        """``out/model`` in the released DAM layout (LoRA merged into the LM), weights in `dtype`; the training
        model itself is left as it is (a copy is cast and saved)."""
        m = self.model
        llm = copy.deepcopy(m.llm)
        if _peft_wrapped(llm):
            llm = llm.merge_and_unload()
        out = DamModel(copy.deepcopy(m.config), copy.deepcopy(m.backbone), copy.deepcopy(m.projector), llm,
                       m.tokenizer)
        out.to(dtype=dtype)
        path = self.out / "model"
        if path.exists():
            shutil.rmtree(path)
        return out.save(path)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, final: bool = False) -> dict | None:
        """Description loss and token accuracy on ``data.val``, plus generated samples."""
        val = self.cfg.data.val
        if val is None:
            return None
        e = self.cfg.eval
        if self._val_dataset is None:
            self._val_dataset = RegionTrainDataset(read_region_sources([val], e.max_images), self.model.config)
        ds = self._val_dataset
        out_dir = self.out / "eval" / f"step_{self.pos.step:06d}"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        self.model.eval()
        loss_sum, hits, tokens = 0.0, 0, 0
        try:
            with torch.no_grad():
                for start in range(0, len(ds), e.batch_size):
                    batch = collate_regions([ds[i] for i in range(start, min(start + e.batch_size, len(ds)))])
                    out = self._forward(batch)
                    h, n = self._token_hits(out)
                    loss_sum, hits, tokens = loss_sum + float(out.loss) * n, hits + h, tokens + n
                rows = []
                for i in range(min(self.cfg.dam.eval_samples, len(ds))):
                    r = ds.records[i]
                    text = self.model.generate([str(r.image)], [r.mask()], prompt=self.cfg.dam.prompt, temperature=0,
                                               max_new_tokens=self.cfg.dam.max_new_tokens)[0]
                    rows.append({"image": str(r.image), "id": r.id, "reference": r.description, "generated": text})
            (out_dir / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
        finally:
            self._set_train_mode()
        record = {"type": "eval", "step": self.pos.step, "final": final, "val_loss": loss_sum / max(tokens, 1),
                  "val_token_acc": hits / max(tokens, 1), "regions": len(ds)}
        self._log(record)
        return record

    def _print_eval(self, rec: dict | None) -> None:
        if rec:
            self.console.print(f"eval step {rec['step']}: loss {rec['val_loss']:.4f}  token accuracy "
                               f"{rec['val_token_acc']:.3f} ({rec['regions']} regions)", highlight=False)
