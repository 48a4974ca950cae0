"""Stage 0 of the base VLM (`pretrain_vision`): the from-scratch vision tower pretrained by classifying each
region's focal crop with linear heads on the centre third of its (B, T, C) token grid, one head per label slot
(the category's words, `category_factors`, and named attributes, `attribute_slots`), with optional box jitter
(`jitter_box`) and mirroring (`flip_half`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from groundscope.describe.model import DamModel
from groundscope.train.vlm_data import VlmSample, sample_pixels


def category_factors(categories: Sequence[str]) -> list[list[str]]:
    """The label slots vision pretraining predicts: one per word of the category when every category has the
    same number of words (the synthetic world's "red circle" -> colour, shape), else one slot (the whole name).

    Returns one sorted vocabulary per slot. Separate slots let the tower name a colour-shape combination it never
    saw (a third of a test world's objects are such novel combinations), which one class per name cannot.
    """
    words = [c.split() for c in categories]
    n = len(words[0])
    if n > 1 and all(len(w) == n for w in words):
        return [sorted({w[k] for w in words}) for k in range(n)]
    return [sorted(set(categories))]


def attribute_slots(samples: Sequence[VlmSample], names: Sequence[str]) -> list[list[str]]:
    """One sorted vocabulary per attribute in `names`: the string values the samples carry.

    Raises:
        ValueError: no sample carries one of the attributes (naming it and the attributes that are there).
    """
    out = []
    for name in names:
        values = sorted({str(s.attributes[name]) for s in samples if s.attributes.get(name) is not None})
        if not values:
            present = sorted({k for s in samples for k in s.attributes})
            raise ValueError(f"no region carries the attribute {name!r} (attributes in the file: "
                             f"{', '.join(present) or 'none'}); regenerate the world with `groundscope synth` "
                             "or drop it from --vision-attributes")
        out.append(values)
    return out


def _attribute_labels(samples: Sequence[VlmSample], names: Sequence[str], slots: list[list[str]]) -> torch.Tensor:
    """(N, len(names)) long: each sample's attribute value index in its slot (-100 = absent or unknown: ignored)."""
    rows = []
    for s in samples:
        values = [s.attributes.get(n) for n in names]
        rows.append([slots[k].index(str(v)) if v is not None and str(v) in slots[k] else -100
                     for k, v in enumerate(values)])
    return torch.tensor(rows, dtype=torch.long).reshape(len(samples), len(names))


def _slot_labels(categories: Sequence[str], slots: list[list[str]]) -> torch.Tensor:
    """(N, n_slots) long: each category's index in every slot's vocabulary (-100 = not in it: ignored)."""
    rows = []
    for c in categories:
        parts = c.split() if len(slots) > 1 else [c]
        if len(parts) != len(slots):
            parts = [""] * len(slots)
        rows.append([slots[k].index(p) if p in slots[k] else -100 for k, p in enumerate(parts)])
    return torch.tensor(rows, dtype=torch.long)


def jitter_box(box: Sequence[float], hw: tuple[int, int], amount: float, rng: np.random.Generator
               ) -> tuple[float, float, float, float]:
    """The box moved by up to ``amount / 2`` of its size and each side scaled by up to ``exp(+-amount)``, clipped to
    the image (at least 2 px wide and high). The focal crop of a jittered box shows the object off-centre and at
    another scale, so the tower cannot memorise one framing of each of the world's crops."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2 + rng.uniform(-amount, amount) * w / 2
    cy = (y1 + y2) / 2 + rng.uniform(-amount, amount) * h / 2
    w, h = w * math.exp(rng.uniform(-amount, amount)), h * math.exp(rng.uniform(-amount, amount))
    H, W = hw
    nx1, ny1 = min(max(cx - w / 2, 0.0), W - 2.0), min(max(cy - h / 2, 0.0), H - 2.0)
    nx2, ny2 = max(min(cx + w / 2, float(W)), nx1 + 2.0), max(min(cy + h / 2, float(H)), ny1 + 2.0)
    return nx1, ny1, nx2, ny2


def flip_half(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) -> the same batch with a random half (each crop with probability 1/2, drawn from `generator`)
    mirrored left-right."""
    mirror = torch.rand(pixels.shape[0], generator=generator) < 0.5
    return torch.where(mirror[:, None, None, None], pixels.flip(-1), pixels)


def _centre_pool(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, C) tokens of a square grid (T = g * g) -> (B, C): the mean of the grid's centre third, where the
    focal crop puts the region (the rest of the crop shows its neighbours)."""
    g = math.isqrt(tokens.shape[1])
    grid = tokens[:, -g * g:].reshape(tokens.shape[0], g, g, -1)
    return grid[:, g // 3: g - g // 3, g // 3: g - g // 3].mean((1, 2))


def pretrain_vision(model: DamModel, samples: Sequence[VlmSample], steps: int, *, batch_size: int = 64,
                    lr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0, bar=None, jitter: float = 0.0,
                    val_samples: Sequence[VlmSample] = (), eval_every: int = 250,
                    attributes: Sequence[str] = (), flip: bool = False) -> list[dict]:
    """Stage 0: supervised pretraining of the from-scratch vision tower on the world's region categories.

    DAM-3B's tower is SigLIP, pretrained on billions of image-text pairs before VILA ever trains it; a random
    tower trained only through the LM's loss learns colours (one patch shows them) but, in this budget, not
    shapes (benchmarks/results/dam_synth.md). This stage stands in for that pretraining: each region's focal crop
    is classified by linear heads on the centre third of the token grid (`_centre_pool`), one head per slot of
    `category_factors` (colour and shape on the synthetic world) and one per name in `attributes` (e.g. the
    synthetic world's ``texture``: a description states it, and neither colour nor shape teaches it). The heads
    are dropped afterwards; the tower keeps what it learnt.

    Args:
        jitter: > 0 draws every crop from a jittered box (`jitter_box`) instead of the region's own; the decoded
            images are then kept in memory (about 0.7 MB each), else the crops are (fp16).
        val_samples: regions of another world, scored (unjittered) every `eval_every` steps and at the end.
        bar: called ``bar(step, info)`` after each step (`groundscope.train.progress.step_progress`).
        attributes: region attributes (`VlmSample.attributes`) to classify as well, one head each; regions
            without the attribute do not count for its head.
        flip: mirror each crop left-right with probability 1/2 (`flip_half`). Every category and attribute of the
            synthetic world survives a mirror (a crescent points any way, the other shapes are drawn nearly upright
            and symmetric, a pattern stays a pattern), so the tower sees twice the distinct crops.
    Returns:
        log rows ``{"type": "vision", "step", "loss", "accuracy"}`` (per slot, on the batch; the category's
        slots first, then the attributes in order) and ``{"type": "vision_val", "step", "accuracy"}`` (per slot,
        on `val_samples`).
    """
    from groundscope.images import load_image

    regions = [s for s in samples if s.box is not None and s.category]
    if not regions:
        raise ValueError("vision pretraining needs region samples with a category (a synthetic world's file)")
    attributes = list(attributes)
    category_slots = category_factors([s.category for s in regions])
    attribute_vocab = attribute_slots(regions, attributes)
    slots = category_slots + attribute_vocab

    def slot_labels(rows: Sequence[VlmSample]) -> torch.Tensor:
        return torch.cat([_slot_labels([s.category for s in rows], category_slots),
                          _attribute_labels(rows, attributes, attribute_vocab)], 1)

    labels = slot_labels(regions)
    val = [s for s in val_samples if s.box is not None and s.category]
    vision = model.backbone.vision
    heads = torch.nn.ModuleList(torch.nn.Linear(vision.config.hidden_size, len(v)) for v in slots)
    params = list(vision.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = min(100, max(1, steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))
    crops: dict[int, torch.Tensor] = {}  # without jitter: crops in float16 (decoding and cropping cost more than the step)
    images: dict[Path, np.ndarray] = {}  # with jitter: decoded images
    rng = np.random.default_rng(seed + 2)

    def crop(i: int) -> torch.Tensor:
        s = regions[i]
        if not jitter:
            if i not in crops:
                crops[i] = sample_pixels(s, model.config).half()
            return crops[i].float()
        if s.image not in images:
            images[s.image] = np.asarray(load_image(s.image))
        rgb = images[s.image]
        box = jitter_box(s.box, rgb.shape[:2], jitter, rng)
        return sample_pixels(VlmSample(s.image, box, s.text, s.category), model.config, rgb=rgb)

    if val:
        val_pixels = torch.stack([sample_pixels(s, model.config).half() for s in val])
        val_labels = slot_labels(val)

    def evaluate(step: int) -> dict:
        hits = torch.zeros(len(slots))
        with torch.inference_mode():
            for k in range(0, len(val_pixels), 128):
                pooled = _centre_pool(vision(pixel_values=val_pixels[k:k + 128].float()).last_hidden_state)
                hits += torch.stack([(h(pooled).argmax(1) == val_labels[k:k + 128, j]).sum()
                                     for j, h in enumerate(heads)])
        counted = (val_labels >= 0).sum(0).clamp(min=1)
        return {"type": "vision_val", "step": step, "accuracy": [round(float(x), 4) for x in hits / counted]}

    generator = torch.Generator().manual_seed(seed + 1)
    flip_generator = torch.Generator().manual_seed(seed + 3)
    order: list[int] = []
    log = []
    vision.train()
    for step in range(1, steps + 1):
        while len(order) < batch_size:
            order += torch.randperm(len(regions), generator=generator).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        pixels = torch.stack([crop(i) for i in idx])
        if flip:  # its own generator: the crops' order stays that of a run without the mirror
            pixels = flip_half(pixels, flip_generator)
        pooled = _centre_pool(vision(pixel_values=pixels).last_hidden_state)  # (B, C)
        logits = [h(pooled) for h in heads]
        y = labels[idx]
        # A slot no region of the batch has a label for adds nothing (cross-entropy over no rows is NaN).
        loss = sum(torch.nn.functional.cross_entropy(lg, y[:, j]) for j, lg in enumerate(logits)
                   if (y[:, j] >= 0).any())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        acc = [round(_accuracy(lg, y[:, j]), 4) for j, lg in enumerate(logits)]
        log.append({"type": "vision", "step": step, "loss": round(float(loss.detach()), 5), "accuracy": acc})
        info = f"vision loss {log[-1]['loss']:.3f}  acc {acc}"
        if val and (step % eval_every == 0 or step == steps):
            log.append(evaluate(step))
            info += f"  val {log[-1]['accuracy']}"
        if bar is not None:
            bar(step, info)
    return log


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the labelled rows (label >= 0) whose arg-max is the label; 0 when none is labelled."""
    keep = labels >= 0
    return float((logits[keep].argmax(1) == labels[keep]).float().mean()) if keep.any() else 0.0


def _mean_accuracy(rows: list[dict]) -> list[float] | None:
    """Per-slot mean of the rows' ``accuracy`` lists (None for no rows)."""
    if not rows:
        return None
    return [round(sum(r["accuracy"][k] for r in rows) / len(rows), 4) for k in range(len(rows[0]["accuracy"]))]


def _lr_factor(step: int, steps: int, warmup: int, floor: float = 0.1) -> float:
    from groundscope.train.world_lm import _lr_factor as factor

    return factor(step, steps, warmup, floor)
