"""`SamTrainer`: a promptable segmenter (transformers' `SamModel`) trained on region files (``task: sam``).

The loop, optimizer, schedule, exact resume, ``log.jsonl`` and ``loss.png`` are `groundscope.train.loop.Trainer`'s.
The SAM parts follow the SAM paper's training recipe (Kirillov et al. 2023, section 3 and appendix A "Training
algorithm"), in one pass per step instead of its 11 interactive rounds:

* data: one sample is one image of a region file (every region needs a mask; the synthetic world's
  ``regions.json`` has each object's exact visible mask), resized and padded by the model's own `SamProcessor`,
  with up to ``sam.max_objects`` of its objects. Each object gets one prompt, drawn from (seed, epoch, image,
  object) so a resumed run sees the same prompts: its tight box (``sam.box_prob``; half of those with each corner
  moved by up to ``sam.jitter`` of the box's side, as the paper's "noise with standard deviation equal to 10% of
  the box side length"), one click at a uniformly drawn mask pixel (``sam.click_prob``), or 2-4 such clicks.
* ambiguity: a lone click asks for SAM's three outputs and only the output with the lowest loss is trained (the
  paper: "we backprop only the minimum loss over masks"); boxes and several clicks ask for the single output
  ("when more than one prompt is given ... only a single mask").
* loss: 20 x focal + 1 x dice on the mask logits upsampled to the padded input square, plus the MSE between the
  predicted IoU and the IoU of the thresholded prediction with the truth (the paper's weights; ``sam.*_weight``).
* export: ``out/model``, the model and its processor saved with ``save_pretrained``: `load_segmenter` loads it.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from groundscope.train.config import ConfigError
from groundscope.train.dam import read_region_sources
from groundscope.train.data import TrainDataError
from groundscope.train.loop import Trainer
from groundscope.train.optim import apply_freeze, frozen_modules

PROMPT_KINDS = ("box", "jitter", "click", "clicks")


def jitter_box(box: Sequence[float], rng: np.random.Generator, share: float, width: int, height: int) -> list[float]:
    """`box` (x1, y1, x2, y2) with each corner moved by up to `share` of the box's side, kept inside the image and
    at least 1 px wide and high."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    d = rng.uniform(-share, share, size=4) * np.array([w, h, w, h])
    nx1, ny1 = np.clip(x1 + d[0], 0, width - 1), np.clip(y1 + d[1], 0, height - 1)
    nx2, ny2 = np.clip(x2 + d[2], nx1 + 1, width), np.clip(y2 + d[3], ny1 + 1, height)
    return [float(nx1), float(ny1), float(nx2), float(ny2)]


def clicks_in(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) (x, y) pixel centres drawn uniformly from the mask's pixels (with replacement)."""
    ys, xs = np.nonzero(mask)
    pick = rng.integers(0, len(xs), size=n)
    return np.stack([xs[pick] + 0.5, ys[pick] + 0.5], axis=1)


def mask_box(mask: np.ndarray) -> list[float]:
    """Tight (x1, y1, x2, y2) of a mask, ends exclusive."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: (N, H, W) logits and {0, 1} targets -> (N,)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * ce * (1 - p_t) ** gamma).flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of (N, H, W) logits with {0, 1} targets -> (N,) (0 for a perfect prediction)."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


@dataclass
class SamImage:
    """One image's training input: pixels (3, S, S), the objects' masks (K, S, S) in the padded input frame,
    and one prompt per object in the input frame (`kinds[k]` in PROMPT_KINDS; boxes (4,) or clicks (P, 2))."""

    pixel_values: torch.Tensor
    masks: torch.Tensor
    kinds: list[str]
    prompts: list[np.ndarray]
    index: int


@dataclass
class SamBatch:
    pixel_values: torch.Tensor  # (B, 3, S, S)
    images: list[SamImage]
    indices: list[int]

    def __len__(self) -> int:
        return len(self.images)


def collate_images(items: Sequence[SamImage]) -> SamBatch:
    return SamBatch(torch.stack([it.pixel_values for it in items]), list(items), [it.index for it in items])


class SamImageDataset(torch.utils.data.Dataset):
    """Region records grouped by image -> `SamImage` through `processor` (a `SamProcessor`)."""

    def __init__(self, records: list, processor, settings, seed: int = 0):
        groups: dict[tuple[str, int], list] = {}
        for r in records:
            groups.setdefault((str(r.image), r.image_id), []).append(r)
        self.images = list(groups.values())
        self.processor = processor
        self.s = settings
        self.seed = int(seed)
        self.epoch = 0
        self.size = int(processor.image_processor.pad_size["height"])

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def prompt_kind(self, u: float) -> str:
        b, c = self.s.box_prob, self.s.click_prob
        return "box" if u < b / 2 else "jitter" if u < b else "click" if u < b + c else "clicks"

    def __getitem__(self, index: int) -> SamImage:
        regions = self.images[index]
        first = regions[0]
        try:
            image = Image.open(first.image).convert("RGB")
        except OSError as e:
            raise TrainDataError(f"cannot read image '{first.image}': {e}") from e
        rng = np.random.default_rng([self.seed, self.epoch, index])
        order = rng.permutation(len(regions))[: self.s.max_objects]
        enc = self.processor.image_processor(image, return_tensors="pt")
        new_h, new_w = (int(v) for v in enc["reshaped_input_sizes"][0])
        sx, sy = new_w / image.width, new_h / image.height
        masks, kinds, prompts = [], [], []
        for k in order:
            r = regions[int(k)]
            m = r.mask()
            if m.shape != (image.height, image.width):
                raise TrainDataError(f"{r.image} annotation {r.id}: mask is {m.shape[0]}x{m.shape[1]} but the image "
                                     f"is {image.height}x{image.width}")
            if not m.any():
                continue
            kind = self.prompt_kind(rng.random())
            if kind in ("box", "jitter"):
                box = mask_box(m)
                if kind == "jitter":
                    box = jitter_box(box, rng, self.s.jitter, image.width, image.height)
                prompt = np.array(box) * np.array([sx, sy, sx, sy])
            else:
                prompt = clicks_in(m, 1 if kind == "click" else int(rng.integers(2, 5)), rng) * np.array([sx, sy])
            small = Image.fromarray(m.astype(np.uint8) * 255).resize((new_w, new_h), Image.Resampling.BILINEAR)
            full = np.zeros((self.size, self.size), np.float32)
            full[:new_h, :new_w] = np.asarray(small, np.float32) / 255.0 >= 0.5
            masks.append(full)
            kinds.append(kind)
            prompts.append(prompt.astype(np.float32))
        if not masks:
            raise TrainDataError(f"image '{first.image}' has no region with a non-empty mask")
        return SamImage(enc["pixel_values"][0], torch.from_numpy(np.stack(masks)), kinds, prompts, index)


def build_sam(architecture: dict, image_size: int):
    """A randomly initialised `SamModel` from SamConfig fields, with `image_size` set on the vision tower and the
    prompt encoder, and its `SamProcessor` (resize the longest edge to `image_size`, pad to a square)."""
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    arch = copy.deepcopy(architecture)
    arch.setdefault("vision_config", {})["image_size"] = image_size
    arch.setdefault("prompt_encoder_config", {})["image_size"] = image_size
    try:
        config = SamConfig(**arch)
        model = SamModel(config)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"sam.architecture: not a SamConfig that builds ({type(e).__name__}: {e})") from e
    processor = SamProcessor(SamImageProcessorPil(size={"longest_edge": image_size},
                                                  pad_size={"height": image_size, "width": image_size}))
    return model, processor


class SamTrainer(Trainer):
    """Train a SAM-architecture segmenter as a ``task: sam`` config says (see the module docstring)."""

    task = "sam"
    collate_fn = staticmethod(collate_images)
    item_name = "images"
    plot_options = {"loss_title": "20 focal + dice + IoU MSE", "parts": ("mask_iou",),
                    "parts_title": "training mask IoU (EMA)", "parts_log": False, "parts_range": (0.0, 1.0),
                    "eval_keys": ("val_iou_box", "val_iou_click"), "eval_title": "validation mask IoU",
                    "eval_log": False, "eval_range": (0.0, 1.0)}

    def _setup_model(self, model) -> None:
        c = self.cfg
        if model is not None:
            self.model, self.processor = model
        elif c.model.path == "scratch":
            self.model, self.processor = build_sam(c.sam.architecture, c.sam.image_size)
        else:
            from transformers import SamModel, SamProcessor

            try:
                self.model = SamModel.from_pretrained(c.model.path)
                self.processor = SamProcessor.from_pretrained(c.model.path)
            except (OSError, ValueError) as e:
                raise ConfigError(f"model.path: '{c.model.path}' is not a SAM folder ({e}); give one saved with "
                                  "save_pretrained, or scratch with sam.architecture") from e
        self.detector, self.head = None, None
        self.model = self.model.to(self.device)
        self.trainable = self.model
        self.frozen = apply_freeze(self.trainable, c.model.freeze)
        self._frozen_modules = frozen_modules(self.trainable, c.model.freeze)
        self._val = None

    def _setup_data(self) -> SamImageDataset:
        return SamImageDataset(read_region_sources(self.cfg.data.train), self.processor, self.cfg.sam,
                               seed=self.cfg.train.seed)

    def _setup_loss(self) -> None:
        pass

    def _lr_mults(self) -> dict[str, float]:
        return dict(self.cfg.optim.lr_mults)

    def _decode(self, embedding: torch.Tensor, kind: str, prompts: list[np.ndarray]):
        """Mask logits (K, M, h, w) and predicted IoU (K, M) for K prompts of one kind on one image embedding."""
        dev = self.device
        if kind in ("box", "jitter"):
            boxes = torch.from_numpy(np.stack(prompts))[None].to(dev)
            out = self.model(image_embeddings=embedding, input_boxes=boxes, multimask_output=False)
        else:
            most = max(len(p) for p in prompts)
            pts = torch.full((len(prompts), most, 2), -10.0)
            labels = torch.full((len(prompts), most), -10, dtype=torch.int64)  # -10: padding, ignored by SAM
            for i, p in enumerate(prompts):
                pts[i, : len(p)] = torch.from_numpy(p)
                labels[i, : len(p)] = 1
            out = self.model(image_embeddings=embedding, input_points=pts[None].to(dev),
                             input_labels=labels[None].to(dev), multimask_output=kind == "click")
        return out.pred_masks[0], out.iou_scores[0]

    def _image_loss(self, embedding: torch.Tensor, item: SamImage) -> tuple[torch.Tensor, float, int]:
        """Summed loss over the image's objects, summed IoU of the trained outputs, and the object count."""
        s = self.cfg.sam
        total, iou_sum = embedding.new_zeros(()), 0.0
        size = item.masks.shape[-1]
        for kind in PROMPT_KINDS:
            ks = [k for k, kk in enumerate(item.kinds) if kk == kind]
            if not ks:
                continue
            logits, pred_iou = self._decode(embedding, kind, [item.prompts[k] for k in ks])
            k_n, m_n = logits.shape[:2]
            up = F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)
            target = item.masks[ks].to(up.device)[:, None].expand(-1, m_n, -1, -1)
            flat_up, flat_t = up.reshape(k_n * m_n, size, size), target.reshape(k_n * m_n, size, size)
            mask_l = (s.focal_weight * focal_loss(flat_up, flat_t) + s.dice_weight * dice_loss(flat_up, flat_t))
            mask_l = mask_l.view(k_n, m_n)
            with torch.no_grad():
                hard = flat_up > 0
                inter = (hard & (flat_t > 0.5)).flatten(1).sum(1).float()
                union = (hard | (flat_t > 0.5)).flatten(1).sum(1).float()
                actual = (inter / union.clamp(min=1)).view(k_n, m_n)
            iou_l = (pred_iou.float() - actual) ** 2
            best = mask_l.argmin(dim=1)  # one output (M = 1), or the lowest-loss of three for a lone click
            rows = torch.arange(k_n, device=best.device)
            total = total + (mask_l[rows, best] + s.iou_weight * iou_l[rows, best]).sum()
            iou_sum += float(actual[rows, best].sum())
        return total, iou_sum, len(item.kinds)

    def _batch_loss(self, batch: SamBatch, autocast) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast:
            # the vision encoder itself: SamModel.get_image_embeddings runs under torch.no_grad (inference only)
            embeddings = self.model.vision_encoder(batch.pixel_values.to(self.device))[0]
            loss, iou, n = embeddings.new_zeros(()), 0.0, 0
            for i, item in enumerate(batch.images):
                li, ii, ni = self._image_loss(embeddings[i : i + 1], item)
                loss, iou, n = loss + li, iou + ii, n + ni
        loss = loss / max(n, 1)
        return loss, {"loss": float(loss.detach()), "mask_iou": iou / max(n, 1)}

    def export(self, dtype: torch.dtype) -> Path:
        """``out/model``: the model (a copy in `dtype`) and its processor, as `load_segmenter` reads them."""
        path = self.out / "model"
        if path.exists():
            shutil.rmtree(path)
        copy.deepcopy(self.model).to(dtype=dtype).save_pretrained(path)
        self.processor.save_pretrained(path)
        return path

    def evaluate(self, final: bool = False) -> dict | None:
        """Mean mask IoU on ``data.val`` from each object's tight box and from one click at its most interior
        pixel (what a user would click), through `groundscope.models.segmenter.Segmenter`."""
        val = self.cfg.data.val
        if val is None:
            return None
        from groundscope.models.segmenter import Segmenter

        if self._val is None:
            self._val = read_region_sources([val], self.cfg.eval.max_images)
        seg = Segmenter(self.model, self.processor, "training", "sam", device=self.device)
        try:
            box_iou, click_iou = segmenter_ious(seg, self._val)
        finally:
            self._set_train_mode()
        record = {"type": "eval", "step": self.pos.step, "final": final, "val_iou_box": float(np.mean(box_iou)),
                  "val_iou_click": float(np.mean(click_iou)), "regions": len(box_iou)}
        self._log(record)
        return record

    def _print_eval(self, rec: dict | None) -> None:
        if rec:
            self.console.print(f"eval step {rec['step']}: mask IoU from the box {rec['val_iou_box']:.3f}, from one "
                               f"click {rec['val_iou_click']:.3f} ({rec['regions']} regions)", highlight=False)


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) centre of the mask's pixel farthest from its outline: where a user clicks."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(x) + 0.5, float(y) + 0.5


def segmenter_ious(seg, records: list, click: str = "interior", seed: int = 0) -> tuple[list[float], list[float]]:
    """Per region, the IoU with its exact mask of the segmenter's mask from the region's box and from one click
    (`click`: "interior", the most interior pixel, or "random", a uniformly drawn mask pixel)."""
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(str(r.image), []).append(r)
    rng = np.random.default_rng(seed)
    box_iou, click_iou = [], []
    with torch.no_grad():
        for path, regions in groups.items():
            masks = [r.mask() for r in regions]
            keep = [m for m in masks if m.any()]
            if not keep:
                continue
            prepared = seg.embed([path])[0]
            boxes = [mask_box(m) for m in keep]
            clicks = [[interior_point(m)] if click == "interior" else [tuple(clicks_in(m, 1, rng)[0])] for m in keep]
            by_box = seg.segment(prepared, boxes=boxes).masks
            by_click = seg.segment(prepared, points=clicks).masks
            for m, b, c in zip(keep, by_box, by_click):
                box_iou.append(float((m & b).sum() / max(1, (m | b).sum())))
                click_iou.append(float((m & c).sum() / max(1, (m | c).sum())))
    return box_iou, click_iou
