"""A small base VLM for Describe Anything, trained offline on the synthetic world (``groundscope pretrain-vlm``).

DAM starts from a VLM that already describes images (VILA-1.5-3B for DAM-3B) and adds the mask embedding
and the context adapters, zero-initialised. With no network there is no VILA to start from, so this module
builds and trains a stand-in, LLaVA-style:

* vision: a random `SiglipVisionModel` (``vision_use_head=False``: the features come from the encoder);
* projector: ``mlp_downsample`` (2x2 token merge, DAM-3B's) or ``mlp2x_gelu``;
* LM: the world LM (`groundscope pretrain-lm`), its word-level vocabulary extended with the words of DAM's
  conversation template and of the training descriptions (new embedding rows start at the mean embedding
  plus noise), and its tokenizer made to put ``<s>`` in front, as Llama's does;
* data (`vlm_samples`): from a synthetic world's ``groundingcap.jsonl``, every region's focal crop (the crop
  DAM's crop pass sees: 3x the box, at least 48 px, `groundscope.describe.focal_crop`) paired with its
  ``description`` under DAM's own prompt (``<image>\\nDescribe the masked region in detail.``), and every
  whole image paired with its detailed caption under ``<image>\\nDescribe the image in detail.``. The base
  VLM thus learns to describe what it sees; what a crop cannot show (where the object sits in the image, its
  neighbours) is left for DAM's full-image context to add;
* training: everything trains (the vision model starts from random weights), the LM at ``llm_lr_mult`` x the
  learning rate; AdamW, linear warm-up then cosine to 10 %, gradient clipping at 1; LM loss on the answer
  tokens only (`DamModel.encode`); a batch holds either region crops or whole images (no caption pads a
  batch of short descriptions).

The result is saved in the VILA layout that ``load_dam(path, from_base_vlm=True)`` reads (`DamModel.save`
with ``base_vlm=True``: ``llm/``, ``vision_tower/``, ``mm_projector/``, ``config.json``; no
``context_provider/``), plus ``train_log.json`` and ``loss.png``.

The training pairs are read in `groundscope.train.vlm_data`; the optional stage 0 that pretrains the vision tower
on the regions' categories is `groundscope.train.vision_pretrain`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from groundscope.describe.config import IMAGE_TOKEN, DamConfig
from groundscope.describe.model import DamModel

# Some names are imported only to keep their old path, `groundscope.train.base_vlm`, working (noqa: F401).
from groundscope.train.vision_pretrain import (  # noqa: F401
    _lr_factor,
    _mean_accuracy,
    attribute_slots,
    category_factors,
    flip_half,
    jitter_box,
    pretrain_vision,
)
from groundscope.train.vlm_data import IMAGE_PROMPT, VlmSample, sample_pixels, vlm_samples  # noqa: F401

POSITION_INITS = ("random", "sincos")  # build_base_vlm's position_init values


def build_base_vlm(lm_dir: str | Path, texts: Sequence[str], *, image_size: int = 128, patch_size: int = 16,
                   hidden: int = 192, layers: int = 4, heads: int = 4, intermediate: int | None = None,
                   projector: str = "mlp_downsample", feature_layer: int = -1, image_prompt: str = IMAGE_PROMPT,
                   position_init: str = "random", crop_mode: str = "clamp", seed: int = 0
                   ) -> tuple[DamModel, list[str]]:
    """A fresh base VLM on the world LM in `lm_dir`: random SigLIP vision model and projector, the LM's
    vocabulary extended with every word of `texts` and of the prompts. Returns (model, added tokens); the
    model's DAM parts (mask embedding, adapters) are there but zero and unused until DAM training.

    Args:
        position_init: "random" (SigLIP's own init: normal, std 1/sqrt(hidden)) or "sincos" (the grid's 2-D
            sine-cosine embedding, `sincos_2d`; still learnt). SigLIP's random position embedding is a seventh
            of the patch embedding's scale, so a from-scratch tower starts almost blind to where a patch is.
        crop_mode: the focal crop's geometry (`groundscope.describe.focal_crop`), kept in the model's config, so
            every later stage and the DAM trained from it crop the same way.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipVisionConfig, SiglipVisionModel

    from groundscope.train.world_lm import extend_world_tokenizer

    if image_size % patch_size:
        raise ValueError(f"image size {image_size} must be a multiple of the patch size {patch_size}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    torch.manual_seed(seed)
    lm_dir = Path(lm_dir)
    if not (lm_dir / "config.json").is_file():
        raise ValueError(f"{lm_dir} holds no language model; train one with `groundscope pretrain-lm`")
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    llm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    config = DamConfig(vision="groundscope pretrain-vlm", llm=str(lm_dir), image_size=image_size, projector=projector,
                       feature_layer=feature_layer, max_new_tokens=160, crop_mode=crop_mode)
    template = [f"{config.system} USER: {p.replace(IMAGE_TOKEN, ' ')} ASSISTANT:"
                for p in (config.prompt, image_prompt, config.video_prompt.replace("{images}", " "))]
    tokenizer, added = extend_world_tokenizer(tokenizer, list(template) + list(texts), add_bos=True)
    emb = llm.get_input_embeddings().weight
    old = emb.shape[0]
    if len(tokenizer) > old:
        with torch.no_grad():
            mean, std = emb.mean(0), emb.std(0)
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            new = llm.get_input_embeddings().weight
            new[old:] = mean + 0.5 * std * torch.randn(len(tokenizer) - old, new.shape[1])
        llm.config.vocab_size = len(tokenizer)
    vision = SiglipVisionModel(SiglipVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, vision_use_head=False))
    if position_init == "sincos":
        with torch.no_grad():
            vision.embeddings.position_embedding.weight.copy_(sincos_2d(image_size // patch_size, hidden))
    elif position_init not in POSITION_INITS:
        raise ValueError(f"position_init is {' or '.join(map(repr, POSITION_INITS))}, got {position_init!r}")
    return DamModel.from_parts(config, vision, llm, tokenizer), added


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(grid * grid, dim) fixed 2-D sine-cosine position embedding of a row-major token grid: the first half of
    the channels encodes the column, the second the row, each as sin / cos pairs at geometric frequencies (MAE's
    layout). Values lie in [-1, 1]."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    out = []
    for coord in (cols.flatten(), rows.flatten()):
        angle = coord[:, None] * omega[None]  # (T, dim/4)
        out += [angle.sin(), angle.cos()]
    return torch.cat(out, 1).float()


def resize_position_grid(weight: torch.Tensor, grid: int) -> torch.Tensor:
    """A square grid's position embedding (g * g, C) -> (grid * grid, C), resized bicubically as an image.

    How a ViT pretrained at one input size starts at another (FixRes; SigLIP's ``interpolate_pos_encoding`` does the
    same at run time): each token keeps the embedding of its place in the image, so what the tower learnt about
    where a patch lies carries over, and only the finer grid's in-between values are new.
    """
    g = math.isqrt(weight.shape[0])
    if g * g != weight.shape[0]:
        raise ValueError(f"a position embedding of {weight.shape[0]} rows is not a square grid")
    if g == grid:
        return weight.clone()
    image = weight.T.reshape(1, weight.shape[1], g, g).float()
    out = torch.nn.functional.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return out.reshape(weight.shape[1], grid * grid).T.to(weight.dtype).contiguous()


def _init_vision(model: DamModel, source: str | Path) -> None:
    """Copy the vision tower of the base VLM (or DAM model) in `source` into `model`. The towers must match in
    patch, width, layers and heads; a different input size is allowed, its position embedding resized
    (`resize_position_grid`)."""
    from groundscope.describe.model import load_dam

    src = load_dam(source, from_base_vlm=True).backbone.vision.state_dict()
    dst = model.backbone.vision.state_dict()
    key = "embeddings.position_embedding.weight"
    if key in src and key in dst and src[key].shape[1] == dst[key].shape[1]:
        src[key] = resize_position_grid(src[key], math.isqrt(dst[key].shape[0]))
    wrong = [k for k in dst if k not in src or src[k].shape != dst[k].shape]
    if wrong:
        raise ValueError(f"the vision tower of '{source}' does not fit this model ({len(wrong)} tensors differ, e.g. "
                         f"{wrong[0]}); pass the same --patch, --hidden, --layers and --heads it was built with")
    model.backbone.vision.load_state_dict({k: src[k].to(dst[k].dtype) for k in dst})


def pretrain_base_vlm(
    data: str | Path,
    lm_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    llm_lr_mult: float = 0.3,
    captions: bool = True,
    image_size: int = 128,
    patch_size: int = 16,
    hidden: int = 192,
    layers: int = 4,
    heads: int = 4,
    projector: str = "mlp_downsample",
    position_init: str = "random",
    crop_mode: str = "clamp",
    max_text_tokens: int = 320,
    warmup: int | None = None,
    weight_decay: float = 0.05,
    seed: int = 0,
    image_root: str | Path | None = None,
    progress: bool = True,
    console=None,
    vision_steps: int = 0,
    vision_batch_size: int = 64,
    vision_jitter: float = 0.0,
    vision_flip: bool = False,
    vision_val: str | Path | None = None,
    vision_lr_mult: float = 1.0,
    vision_attributes: Sequence[str] = (),
    vision_init: str | Path | None = None,
) -> dict[str, Any]:
    """Build a base VLM (`build_base_vlm`) and train it `steps` steps on `data` (a GroundingCap file of the
    synthetic world); save it to `out_dir` in the VILA layout.

    `vision_steps` > 0 first runs `pretrain_vision` (heads for the category's words and `vision_attributes`);
    `vision_init`, a base VLM folder, starts the tower from that model's tower instead of at random (to go on
    teaching a trained tower, e.g. one more attribute). Returns a summary
    ``{"steps", "first_loss", "last_loss_mean", "seconds", "seconds_per_step", "samples", "params",
    "megabytes_fp16", "vocab_added", "out_dir"}``."""
    from rich.console import Console

    from groundscope.train.plot import draw_loss_curve
    from groundscope.train.progress import step_progress

    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if lr <= 0 or llm_lr_mult < 0:
        raise ValueError(f"lr must be > 0 and llm_lr_mult >= 0, got {lr}, {llm_lr_mult}")
    console = console or Console(stderr=True)
    start = time.perf_counter()
    samples = vlm_samples(data, image_root, captions)
    if not samples:
        raise ValueError(f"'{data}' holds no region descriptions or captions to train on")
    model, added = build_base_vlm(lm_dir, [s.text for s in samples], image_size=image_size, patch_size=patch_size,
                                  hidden=hidden, layers=layers, heads=heads, projector=projector,
                                  position_init=position_init, crop_mode=crop_mode, seed=seed)
    if vision_init is not None:
        _init_vision(model, vision_init)
    vision_log: list[dict] = []
    if vision_steps:
        with step_progress("pretrain-vlm vision", vision_steps, console, progress, prefix="vision ") as update:
            val = vlm_samples(vision_val, captions=False) if vision_val else ()
            vision_log = pretrain_vision(model, samples, vision_steps, batch_size=vision_batch_size, lr=lr,
                                         weight_decay=weight_decay, seed=seed, bar=update, jitter=vision_jitter,
                                         val_samples=val, attributes=vision_attributes, flip=vision_flip)
    model.train()
    cfg = model.config
    prompts = {True: cfg.prompt, False: IMAGE_PROMPT}
    # The DAM parts are not used by the base VLM: leave them out of the optimizer.
    # A tower at --vision-lr-mult 0 is frozen outright: AdamW would leave it unchanged too, but not without a
    # backward pass through it on every step.
    frozen = ("backbone.vision.",) if vision_lr_mult == 0 else ()
    for n, p in model.named_parameters():
        if n.startswith(frozen):
            p.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters()
              if not n.startswith(("backbone.mask_embed.", "backbone.adapters.") + frozen)]
    groups: dict[tuple[str, bool], list] = {}
    for n, p in params:
        part = "llm" if n.startswith("llm.") else "vision" if n.startswith("backbone.vision.") else "other"
        groups.setdefault((part, p.ndim >= 2), []).append(p)
    mults = {"llm": llm_lr_mult, "vision": vision_lr_mult, "other": 1.0}
    optimizer = torch.optim.AdamW(
        [{"params": ps, "lr": lr * mults[part], "weight_decay": weight_decay if decay else 0.0}
         for (part, decay), ps in groups.items()], lr=lr, betas=(0.9, 0.98))
    warmup = min(100, max(1, steps // 10)) if warmup is None else max(1, warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))
    # Batches hold one kind of sample: a detailed caption is ~4x as long as a region description, and one
    # caption in a batch of regions would pad every row to its length. A step is a caption batch with the
    # captions' share of the samples as probability.
    generator = torch.Generator().manual_seed(seed)
    kinds = [[i for i, s in enumerate(samples) if s.box is not None], [i for i, s in enumerate(samples) if s.box is None]]
    orders: list[list[int]] = [[], []]
    caption_share = len(kinds[1]) / len(samples)
    log: list[dict] = []
    train_start = time.perf_counter()
    with step_progress("pretrain-vlm", steps, console, progress) as update:
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            kind = int(bool(kinds[1]) and (not kinds[0] or float(torch.rand((), generator=generator)) < caption_share))
            while len(orders[kind]) < batch_size:
                orders[kind] += [kinds[kind][i] for i in torch.randperm(len(kinds[kind]), generator=generator).tolist()]
            batch, orders[kind] = [samples[i] for i in orders[kind][:batch_size]], orders[kind][batch_size:]
            pixels = torch.stack([sample_pixels(s, cfg) for s in batch])
            enc = model.tokenize([1] * len(batch), [s.text for s in batch], [prompts[s.box is not None] for s in batch])
            enc = {k: v[:, :max_text_tokens] for k, v in enc.items()}
            visual = model.projector(model.backbone.features(pixels))
            loss = model(enc["input_ids"], enc["attention_mask"], visual_tokens=visual, labels=enc["labels"]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            current_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            log.append({"type": "train", "step": step, "loss": round(float(loss.detach()), 5), "lr": current_lr,
                        "seconds": round(time.perf_counter() - t0, 4)})
            update(step, f"loss {log[-1]['loss']:.4f}  lr {current_lr:.2e}")
    train_seconds = time.perf_counter() - train_start

    model.eval()
    out_dir = Path(out_dir)
    model.save(out_dir, base_vlm=True)
    used = [p for n, p in model.named_parameters() if not n.startswith(("backbone.mask_embed.", "backbone.adapters."))]
    n_params = sum(p.numel() for p in used)
    tail = [r["loss"] for r in log[-min(20, steps):]]
    summary = {
        "steps": steps, "first_loss": log[0]["loss"], "last_loss_mean": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start, "seconds_per_step": train_seconds / steps, "samples": len(samples),
        "params": n_params, "megabytes_fp16": round(n_params * 2 / 2**20, 2), "vocab_added": len(added),
        "out_dir": str(out_dir), "vision_steps": vision_steps,
        "vision_last_accuracy": _mean_accuracy([r for r in vision_log if r["type"] == "vision"][-20:]),
        "vision_val_accuracy": _mean_accuracy([r for r in vision_log if r["type"] == "vision_val"][-1:]),
    }
    settings = {"data": str(data), "lm": str(lm_dir), "steps": steps, "batch_size": batch_size, "lr": lr,
                "llm_lr_mult": llm_lr_mult, "captions": captions, "image_size": image_size, "patch_size": patch_size,
                "hidden": hidden, "layers": layers, "heads": heads, "projector": projector,
                "position_init": position_init, "crop_mode": crop_mode, "max_text_tokens": max_text_tokens,
                "warmup": warmup,
                "weight_decay": weight_decay, "seed": seed,
                "vision_steps": vision_steps, "vision_batch_size": vision_batch_size, "vision_jitter": vision_jitter,
                "vision_flip": vision_flip,
                "vision_val": str(vision_val) if vision_val else None, "vision_lr_mult": vision_lr_mult,
                "vision_attributes": list(vision_attributes), "vision_init": str(vision_init) if vision_init else None}
    (out_dir / "train_log.json").write_text(
        json.dumps({"summary": summary, "config": settings, "log": vision_log + log}, indent=1) + "\n", encoding="utf-8")
    try:
        draw_loss_curve(log, out_dir / "loss.png", loss_title="loss on the answer tokens", parts=())
    except Exception as e:  # a plot must never lose a trained model
        console.print(f"[yellow]warning:[/] could not draw loss.png: {e}", highlight=False)
    return summary
