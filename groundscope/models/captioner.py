"""LLMDet's caption head: a causal LM writes an image's detailed caption from the detector's encoder memory and a
short phrase for a region from its decoder query.

LLMDet (Fu et al., 2025) fine-tunes a grounding detector while a frozen (then LoRA-tuned) LM must describe what the
detector sees; the released checkpoints keep the detector alone. This module is that head, kept apart from the
detector so the trained detector stays a plain MM-GDINO checkpoint:

    image tokens   p5 (stride 32) and p4 (stride 16) of the encoder memory, each cropped to the image's valid
                   area and resized bilinearly to g5 x g5 and g4 x g4 (LLMDet: 20 and 27), a learned separator
                   (N(0, 1), LLMDet's nn.Embedding) between them: g5^2 + 1 + g4^2 tokens.
                   Token = projector(feature) + pos_proj(sine(cell box, xyxy)).
    region token   one per region: region_projector(query feature) + region_pos_proj(sine(predicted box, xyxy)),
                   the region projector starting as a copy of the image projector; with ``cross_attn_layers``
                   the region token also attends to the memory at LM layers 0, 4, ..., 20
                   (`groundscope.models.region_cross_attn`).
    sequence       LLMDet's ChatML conversation with the visual tokens where ``<image>`` goes, cut to
                   ``image_max_tokens`` / ``region_max_tokens`` in all, supervised as LLMDet's labels
                   (`groundscope.models.caption_prompt`; "Describe the image in detail." / "Describe the region
                   in a phrase.").

`CaptionHead` holds the projectors and the LM (optionally LoRA-wrapped with peft); `save` / `load_caption_head`
write and read a folder with the head's weights, its config and the LoRA adapter, the LM itself being named by
path or hub id (``llm``) and, for a GGUF file, ``gguf_file``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from groundscope.box_ops import cxcywh_to_xyxy, pairwise_iou
from groundscope.models.caption_prompt import (IGNORE_INDEX, SYSTEM_PROMPT, Layout, PromptError,
                                               answer_ids, build_layout)
from groundscope.models.region_cross_attn import RegionCrossAttention, sine_embedding

HEAD_WEIGHTS = "caption_head.safetensors"
HEAD_CONFIG = "caption_head.json"
LORA_DIR = "lora"
LM_DIR = "lm"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class CaptionerError(RuntimeError):
    """The caption head cannot be built, loaded or used; the message says why and what to do."""


@dataclass
class CaptionHeadConfig:
    """Everything that fixes the head's shapes and prompts (saved as ``caption_head.json``).

    Attributes:
        llm: path or hub id of the causal LM (`AutoModelForCausalLM`).
        gguf_file: a GGUF file inside `llm` to load the LM from (transformers' GGUF support), or None.
        d_model: the detector's hidden size (memory and query features).
        levels: memory levels of the image tokens, coarse first (LLMDet: p5 = level 2, p4 = level 1 of the
            stride-8/16/32/64 pyramid).
        grids: resized side of each level (LLMDet: 20 and 27).
        image_prompt / region_prompt: the user turns.
        image_max_tokens / region_max_tokens: tokens of the whole sequence kept, prompt + visual tokens + answer
            (LLMDet: 1600 / 40).
        max_regions: regions captioned per image in training (LLMDet: 16).
        lora: {"r", "alpha", "dropout", "targets"} or None (no adapter).
        default_prompt: detector prompt used when captioning without one (the encoder memory is text-fused).
        template: "auto" | "chatml" | "tokenizer" | "plain" (`groundscope.models.caption_prompt`); LLMDet: chatml.
        system_prompt: the ChatML system turn (LLMDet: "You are a helpful assistant.").
        box_encoding: "xyxy" (LLMDet) or "cxcywh" (heads saved before groundscope followed it) for the sine box
            embeddings of cells and regions.
        cross_attn_layers: region cross-attention blocks in the LM (LLMDet: 6; 0: none).
        cross_attn_heads / cross_attn_points: their deformable attention (LLMDet: 8 / 4).
        num_levels: memory levels the cross-attention samples (the detector's; LLMDet: 4).
        region_index: "matched" (the matched query's own feature) or "official" (LLMDet's released training:
            the row of the [denoising; matching] decoder output, `groundscope.train.caption_loss`).
    """

    llm: str
    d_model: int
    gguf_file: str | None = None
    levels: list[int] = field(default_factory=lambda: [2, 1])
    grids: list[int] = field(default_factory=lambda: [20, 27])
    image_prompt: str = "Describe the image in detail."
    region_prompt: str = "Describe the region in a phrase."
    image_max_tokens: int = 1600
    region_max_tokens: int = 40
    max_regions: int = 16
    lora: dict | None = None
    default_prompt: str = "object."
    template: str = "auto"
    system_prompt: str = SYSTEM_PROMPT
    box_encoding: str = "xyxy"
    cross_attn_layers: int = 0
    cross_attn_heads: int = 8
    cross_attn_points: int = 4
    num_levels: int = 4
    region_index: str = "matched"

    def __post_init__(self):
        if len(self.levels) != len(self.grids) or not self.levels:
            raise CaptionerError(f"caption head: levels {self.levels} and grids {self.grids} must pair up")
        if self.box_encoding not in ("xyxy", "cxcywh"):
            raise CaptionerError(f"caption head: box_encoding '{self.box_encoding}': use xyxy or cxcywh")
        if self.region_index not in ("matched", "official"):
            raise CaptionerError(f"caption.region_index '{self.region_index}': use matched or official")
        if self.cross_attn_layers < 0:
            raise CaptionerError(f"caption.cross_attn_layers {self.cross_attn_layers}: must be >= 0")

    @property
    def num_image_tokens(self) -> int:
        return sum(g * g for g in self.grids) + len(self.grids) - 1


def sine_box_embedding(boxes: torch.Tensor, dim_per_coord: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """LLMDet's ``gen_sineembed_for_position`` (grounding_dino.py ~L29-56) of (..., 4) normalised boxes ->
    (..., 4 * dim_per_coord), coordinates 1, 0, 2, 3 in that order; LLMDet passes xyxy boxes."""
    return sine_embedding(boxes, dim_per_coord, temperature)


def grid_boxes(side: int, device=None, encoding: str = "xyxy") -> torch.Tensor:
    """(side*side, 4) normalised boxes of a side x side grid's cells, row-major (y outer, x inner).

    xyxy: LLMDet's ``grid_box`` (grounding_dino.py ~L477-479, ~L483-485): cell (i, j) is
    (j/side, i/side, (j+1)/side, (i+1)/side). cxcywh: the cell centres and sizes (heads saved before).
    """
    edges = torch.arange(side + 1, dtype=torch.float32, device=device) / side
    y0, x0 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
    y1, x1 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
    if encoding == "xyxy":
        return torch.stack([x0, y0, x1, y1], -1).reshape(-1, 4)
    wh = torch.full_like(x0, 1.0 / side)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, wh, wh], -1).reshape(-1, 4)


def memory_levels(memory: torch.Tensor, valid: torch.Tensor, shapes: list[tuple[int, int]]) -> list[list[torch.Tensor]]:
    """Split flattened encoder memory into per-image, per-level maps cropped to the valid (unpadded) area.

    Args:
        memory: (B, S, d) encoder memory, S = sum of H_l * W_l.
        valid: (B, S) bool, True on real pixels.
        shapes: [(H_l, W_l)] per level.
    Returns:
        out[b][l]: (d, h, w) with h, w the valid rows and columns of image b at level l.
    """
    out = []
    for b in range(memory.shape[0]):
        maps, start = [], 0
        for h, w in shapes:
            m = memory[b, start:start + h * w].reshape(h, w, -1).permute(2, 0, 1)
            v = valid[b, start:start + h * w].reshape(h, w)
            rows, cols = max(int(v[:, 0].sum()), 1), max(int(v[0, :].sum()), 1)
            maps.append(m[:, :rows, :cols])
            start += h * w
        out.append(maps)
    return out


class _Projector(nn.Module):
    """Linear(d, H) -> GELU -> Linear(H, H) on features, plus Linear(512, H) on a sine box embedding."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.pos_proj = nn.Linear(4 * 128, hidden)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """features (..., d), boxes (..., 4) normalised, in the head's box encoding -> (..., H)."""
        return self.mlp(features) + self.pos_proj(sine_box_embedding(boxes).to(features.dtype))


@dataclass
class CaptionBatch:
    """Visual tokens and answers of one LM call.

    Attributes:
        visual: (N, V, H) visual token embeddings, one row per sequence.
        answers: N answer texts, or None for generation.
    """

    visual: torch.Tensor
    answers: list[str] | None = None


class CaptionHead(nn.Module):
    """Projectors + separator + causal LM. Parameters: ``projector.*``, ``region_projector.*``, ``separator``
    and ``lm.*`` (frozen unless LoRA adapters are attached)."""

    def __init__(self, config: CaptionHeadConfig, lm: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.lm = lm
        self.tokenizer = tokenizer
        hidden = int(lm.get_input_embeddings().weight.shape[1])
        self.hidden = hidden
        self.projector = _Projector(config.d_model, hidden)
        self.region_projector = copy.deepcopy(self.projector)
        # LLMDet's `image_seperate` is an nn.Embedding(1, H): N(0, 1) (grounding_dino.py ~L482)
        self.separator = nn.Parameter(torch.randn(max(len(config.grids) - 1, 1), hidden))
        self.cross_attn = None
        if config.cross_attn_layers:
            try:
                self.cross_attn = RegionCrossAttention(lm, hidden, config.d_model, config.num_levels,
                                                       config.cross_attn_layers, config.cross_attn_heads,
                                                       config.cross_attn_points)
            except ValueError as e:
                raise CaptionerError(str(e)) from e
        if tokenizer.pad_token_id is None:
            # Padding positions are masked out of attention and loss; any id works, EOS is always there.
            tokenizer.pad_token = tokenizer.eos_token
        self._layouts: dict[str, Layout] = {}

    # ------------------------------------------------------------------ visual tokens
    def image_tokens(self, memory: torch.Tensor, valid: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """(B, S, d) encoder memory -> (B, V, H) image tokens, V = sum(g^2) + separators."""
        cfg = self.config
        if max(cfg.levels) >= len(shapes):
            raise CaptionerError(
                f"caption head uses memory levels {cfg.levels} but the detector has {len(shapes)} levels; "
                "set caption.levels to levels it has"
            )
        per_image = memory_levels(memory, valid, shapes)
        rows = []
        for maps in per_image:
            parts = []
            for k, (level, side) in enumerate(zip(cfg.levels, cfg.grids)):
                m = nn.functional.interpolate(maps[level][None], size=(side, side), mode="bilinear",
                                              align_corners=False)[0]
                feats = m.flatten(1).T  # (side*side, d)
                parts.append(self.projector(feats, grid_boxes(side, memory.device, cfg.box_encoding)))
                if k < len(cfg.grids) - 1:
                    parts.append(self.separator[k:k + 1].to(parts[-1].dtype))
            rows.append(torch.cat(parts, 0))
        return torch.stack(rows, 0)

    def region_tokens(self, query_features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(N, d) query features and (N, 4) normalised cxcywh boxes -> (N, 1, H) region tokens.
        The boxes are detached: the caption must not move the box head (LLMDet detaches them too); they are
        embedded as xyxy (LLMDet: grounding_dino.py ~L952, ~L1007) unless the head says cxcywh."""
        boxes = boxes.detach()
        if self.config.box_encoding == "xyxy":
            boxes = cxcywh_to_xyxy(boxes)
        return self.region_projector(query_features, boxes)[:, None]

    def cross_attention_input(self, memory: torch.Tensor, memory_valid: torch.Tensor,
                              spatial_shapes: list[tuple[int, int]], boxes: torch.Tensor):
        """The region cross-attention's input for N regions ((N, S, d) memory of each region's image, (N, S)
        validity, (N, 4) cxcywh boxes), or None when the head has no cross-attention."""
        if self.cross_attn is None:
            return None
        if len(spatial_shapes) != self.config.num_levels:
            raise CaptionerError(f"caption head cross-attends {self.config.num_levels} memory levels but the "
                                 f"detector has {len(spatial_shapes)}; set caption.num_levels to it")
        return self.cross_attn.inputs(memory, memory_valid, spatial_shapes, boxes)

    # ------------------------------------------------------------------ prompts
    def layout(self, prompt: str) -> Layout:
        """The template's fixed ids around the visual tokens for `prompt` (cached)."""
        if prompt not in self._layouts:
            try:
                self._layouts[prompt] = build_layout(self.tokenizer, prompt, self.config.template,
                                                     self.config.system_prompt)
            except PromptError as e:
                raise CaptionerError(str(e)) from e
        return self._layouts[prompt]

    def build_inputs(self, visual: torch.Tensor, prompt: str, answers: list[str] | None, max_tokens: int):
        """Embed prompt + visual tokens (+ answers) as one right-padded batch.

        Args:
            visual: (N, V, H) visual tokens.
            answers: N texts (training) or None (generation: the sequences end where the answer starts).
            max_tokens: length of the whole sequence kept in training (LLMDet cuts the tail).
        Returns:
            inputs_embeds (N, T, H), attention_mask (N, T) long, labels (N, T) long (-100 where unsupervised) or
            None; the visual tokens sit at positions ``len(layout.before) : len(layout.before) + V``.
        """
        lay = self.layout(prompt)
        emb = self.lm.get_input_embeddings()
        device = visual.device
        n, v, _ = visual.shape
        prefix = lay.before + [self.tokenizer.pad_token_id] * v + lay.after
        prefix_labels = lay.before_labels + [IGNORE_INDEX] * v + lay.after_labels
        if answers is None:
            rows = [(prefix + lay.generation, [IGNORE_INDEX] * (len(prefix) + len(lay.generation)))] * n
        else:
            if len(prefix) >= max_tokens:
                raise CaptionerError(
                    f"the caption prompt and its {v} visual tokens are {len(prefix)} tokens, no room for an answer "
                    f"within {max_tokens}; raise caption.image_max_tokens / region_max_tokens (they bound the "
                    "whole sequence, as LLMDet's 1600 / 40)")
            rows = []
            for a in answers:
                ids, labels = answer_ids(self.tokenizer, lay, a)
                rows.append(((prefix + ids)[:max_tokens], (prefix_labels + labels)[:max_tokens]))
        length = max(len(r[0]) for r in rows)
        ids = torch.full((n, length), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long, device=device)
        mask = torch.zeros((n, length), dtype=torch.long, device=device)
        for i, (r_ids, r_labels) in enumerate(rows):
            ids[i, : len(r_ids)] = torch.tensor(r_ids, dtype=torch.long, device=device)
            labels[i, : len(r_labels)] = torch.tensor(r_labels, dtype=torch.long, device=device)
            mask[i, : len(r_ids)] = 1
        embeds = emb(ids)
        b = len(lay.before)
        embeds = torch.cat([embeds[:, :b], visual.to(embeds.dtype), embeds[:, b + v:]], 1)
        return embeds, mask, (labels if answers is not None else None)

    # ------------------------------------------------------------------ loss and generation
    def _cross(self, cross, prompt: str, seq_len: int, count: int, row: slice | None = None):
        """The cross-attention context for an LM call (a no-op context without cross-attention input)."""
        from contextlib import nullcontext

        if cross is None or self.cross_attn is None:
            return nullcontext()
        from dataclasses import replace

        if row is not None:
            cross = replace(cross, memory=cross.memory[row], memory_valid=cross.memory_valid[row],
                            reference_points=cross.reference_points[row], query_pos=cross.query_pos[row])
        ctx = replace(cross, start=len(self.layout(prompt).before), count=count, seq_len=seq_len)
        return self.cross_attn.active(ctx)

    def lm_loss(self, visual: torch.Tensor, prompt: str, answers: list[str], max_tokens: int,
                cross=None) -> torch.Tensor:
        """Mean next-token cross-entropy over the supervised tokens of N sequences (scalar), as the LM's own
        loss with labels (LLMDet calls Qwen2ForCausalLM with labels). `cross`: region cross-attention input."""
        embeds, mask, labels = self.build_inputs(visual, prompt, answers, max_tokens)
        with self._cross(cross, prompt, embeds.shape[1], visual.shape[1]):
            logits = self.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                           ignore_index=IGNORE_INDEX)

    def image_loss(self, image_tokens: torch.Tensor, captions: list[str]) -> torch.Tensor:
        return self.lm_loss(image_tokens, self.config.image_prompt, captions, self.config.image_max_tokens)

    def region_loss(self, region_tokens: torch.Tensor, phrases: list[str], cross=None) -> torch.Tensor:
        """Region phrases from (N, 1, H) tokens; `cross` from `cross_attention_input` (LLMDet's region
        cross-attention; image captions have none, ``use_image_level_cross_attn=False``)."""
        return self.lm_loss(region_tokens, self.config.region_prompt, phrases, self.config.region_max_tokens,
                            cross)

    @torch.no_grad()
    def generate(self, visual: torch.Tensor, prompt: str, max_new_tokens: int, cross=None, **kwargs) -> list[str]:
        """Greedy (by default) answers for (N, V, H) visual tokens; each sequence is generated on its own so no
        padding sits between the prompt and the answer. The cross-attention acts on the prompt pass (the
        region token's position), as LLMDet skips it on calls of another length."""
        out = []
        lay = self.layout(prompt)
        for i in range(visual.shape[0]):
            embeds, mask, _ = self.build_inputs(visual[i:i + 1], prompt, None, 1)
            kwargs.setdefault("do_sample", False)
            with self._cross(cross, prompt, embeds.shape[1], visual.shape[1], slice(i, i + 1)):
                ids = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       eos_token_id=lay.stop, pad_token_id=self.tokenizer.pad_token_id, **kwargs)
            out.append(self.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
        return out

    # ------------------------------------------------------------------ parameters and files
    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Projector, region projector, separator and region cross-attention weights (what stage 1 trains)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lm.")}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter that trains (head + LoRA), for checkpoints: the frozen LM is reloaded from `llm`."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        state = self.state_dict()
        return {**self.head_state_dict(), **{k: state[k] for k in names if k in state}}

    def save(self, out_dir: str | Path, copy_lm_mb: float = 200.0) -> Path:
        """Write ``caption_head.json``, ``caption_head.safetensors`` and, with LoRA, ``lora/``.

        A local LM folder smaller than `copy_lm_mb` is copied into ``lm/`` so the head travels as one folder
        (the synthetic world's LM is a few MB); a larger or hub LM is referenced by its path or id.
        """
        import shutil

        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        src = resolve_llm(self.config.llm, None)
        if src.is_dir() and src.resolve() != (out / LM_DIR).resolve():
            size_mb = sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) / 2**20
            if size_mb <= copy_lm_mb:
                shutil.rmtree(out / LM_DIR, ignore_errors=True)
                shutil.copytree(src, out / LM_DIR)
                config["llm"] = LM_DIR
            else:
                config["llm"] = str(src.resolve())
        (out / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head_state_dict().items()}, out / HEAD_WEIGHTS)
        if self.config.lora:
            self.lm.save_pretrained(out / LORA_DIR)
        return out


def resolve_llm(llm: str, head_dir: Path | None) -> Path:
    """`llm` as a local path: relative to the head's folder when it lies there (``lm``), else as given (a hub
    id comes back unchanged as a Path that does not exist)."""
    if head_dir is not None and (head_dir / llm).exists():
        return head_dir / llm
    return Path(llm)


def load_lm(config: CaptionHeadConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
            head_dir: Path | None = None):
    """The causal LM and its tokenizer named by ``config.llm`` (+ ``gguf_file``); errors name the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": config.gguf_file} if config.gguf_file else {}
    local = resolve_llm(config.llm, head_dir)
    source = str(local) if local.exists() else config.llm
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if _is_vision_language(source, kwargs):
            lm = causal_lm_of_vlm(source, dtype)
        else:
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise CaptionerError(
            f"cannot load the caption LM '{config.llm}'{' (' + config.gguf_file + ')' if config.gguf_file else ''}: "
            f"{e}; pass a local directory (groundscope pretrain-lm writes one) or a hub id reachable from here"
        ) from e
    lm.config.use_cache = False
    return lm.to(device), tokenizer


def _is_vision_language(source: str, kwargs: dict) -> bool:
    if kwargs:
        return False  # a GGUF file holds a plain LM
    from transformers import AutoConfig

    return hasattr(AutoConfig.from_pretrained(source), "text_config")


def causal_lm_of_vlm(source: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The language model of a vision-language checkpoint (LLaVA-OneVision: Qwen2 + SigLIP) as a plain
    `AutoModelForCausalLM`: LLMDet's LM is LLaVA-OV's Qwen2, whose weights differ from the Qwen2 release after
    LLaVA's training. The vision tower is dropped (the detector is the eye here)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    full = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
    lm = AutoModelForCausalLM.from_config(full.config.text_config, dtype=dtype)
    decoder = getattr(full.model, "language_model", None) or full.get_decoder()
    lm.get_decoder().load_state_dict(decoder.state_dict())
    lm.get_output_embeddings().load_state_dict(full.get_output_embeddings().state_dict())
    return lm


def attach_lora(lm: nn.Module, lora: dict) -> nn.Module:
    """Wrap `lm` with peft LoRA adapters (only they train)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise CaptionerError("LoRA needs peft: pip install 'groundscope[llmdet]'") from e
    names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    targets = [t for t in lora.get("targets", LORA_TARGETS) if t in names]
    if not targets:
        raise CaptionerError(f"caption.lora.targets {lora.get('targets', LORA_TARGETS)} name no module of this LM")
    cfg = LoraConfig(r=int(lora.get("r", 128)), lora_alpha=int(lora.get("alpha", 256)),
                     lora_dropout=float(lora.get("dropout", 0.0)), target_modules=targets, bias="none")
    return get_peft_model(lm, cfg)


def build_caption_head(config: CaptionHeadConfig, device: torch.device | str = "cpu") -> CaptionHead:
    """A fresh head on the LM of ``config.llm``; the LM is frozen, LoRA adapters added when ``config.lora``."""
    lm, tokenizer = load_lm(config, device)
    lm.requires_grad_(False)
    if config.lora:
        lm = attach_lora(lm, config.lora)
    return CaptionHead(config, lm, tokenizer).to(device)


def load_caption_head(path: str | Path, device: torch.device | str = "cpu", trainable: bool = False) -> CaptionHead:
    """Read a folder written by `CaptionHead.save` (the LM comes from its ``llm``; LoRA from ``lora/``).
    With `trainable` the projectors and LoRA adapters keep their gradients (to train on), else all is frozen."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file = path / HEAD_CONFIG
    if not cfg_file.exists():
        raise CaptionerError(
            f"'{path}' holds no caption head ({HEAD_CONFIG} missing); train one with "
            "groundscope train configs/llmdet_stage1_synth.yaml (LLMDet caption supervision)"
        )
    raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    # Heads saved before groundscope followed LLMDet's layout keep the layout they were trained with.
    raw.setdefault("box_encoding", "cxcywh")
    raw.setdefault("template", "tokenizer")
    config = CaptionHeadConfig(**raw)
    lm, tokenizer = load_lm(config, device, head_dir=path)
    config.llm = str(resolve_llm(config.llm, path)) if resolve_llm(config.llm, path).exists() else config.llm
    lm.requires_grad_(False)
    if config.lora:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(path / LORA_DIR), is_trainable=trainable)
    head = CaptionHead(config, lm, tokenizer)
    missing, unexpected = head.load_state_dict(load_file(path / HEAD_WEIGHTS), strict=False)
    missing = [k for k in missing if not k.startswith("lm.")]
    if missing or unexpected:
        raise CaptionerError(f"'{path / HEAD_WEIGHTS}' does not fit the head: missing {missing}, unexpected {unexpected}")
    if not trainable:
        head.requires_grad_(False)
    return head.to(device).eval()


# ---------------------------------------------------------------------------------------------- inference
@dataclass
class DetectorView:
    """What one detector forward gives the head: (1, S, d) memory + validity + level shapes, and the last
    layer's (1, Q, d) query features with their (1, Q, 4) normalised cxcywh boxes."""

    memory: torch.Tensor
    memory_valid: torch.Tensor
    spatial_shapes: list[tuple[int, int]]
    query_features: torch.Tensor
    boxes: torch.Tensor


@torch.inference_mode()
def look(detector, pixel_values: torch.Tensor, prompt: str) -> DetectorView:
    """Run `detector` (a `GroundingDetector`) on one (3, H, W) preprocessed image with a text prompt."""
    from groundscope.models import staged

    ids = detector.tokenizer(prompt, return_tensors="pt", truncation=True,
                             max_length=detector.max_text_len)["input_ids"]
    images = staged.encode_images(detector.model, pixel_values[None].to(detector.device, detector.dtype))
    raw = staged.fuse_and_decode(detector.model, images, [staged.encode_text(detector.model, ids.to(detector.device))])
    return DetectorView(raw.memory, images.mask, images.spatial_shapes_list, raw.query_features, raw.boxes)


def best_queries(view: DetectorView, boxes_xyxy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,) index of the query whose predicted box overlaps each given box most.

    Args:
        boxes_xyxy: (N, 4) pixel boxes on the original image.
        size: (height, width) of the original image.
    """
    h, w = size
    given = boxes_xyxy.float() / torch.tensor([w, h, w, h], dtype=torch.float32)
    iou, _ = pairwise_iou(given, cxcywh_to_xyxy(view.boxes[0].float().cpu()))
    return iou.argmax(1)


def caption_image(head: CaptionHead, view: DetectorView, max_new_tokens: int) -> str:
    """The detailed caption of the image the view was computed on."""
    with torch.inference_mode():
        tokens = head.image_tokens(view.memory, view.memory_valid, view.spatial_shapes)
    return head.generate(tokens, head.config.image_prompt, max_new_tokens)[0]


def caption_regions(head: CaptionHead, view: DetectorView, boxes_xyxy: torch.Tensor, size: tuple[int, int],
                    max_new_tokens: int) -> list[str]:
    """A phrase per (N, 4) pixel box: each box speaks through the query that predicts it best, as in training a
    ground-truth box speaks through its matched query."""
    if len(boxes_xyxy) == 0:
        return []
    q = best_queries(view, boxes_xyxy, size).to(view.query_features.device)
    with torch.inference_mode():
        tokens = head.region_tokens(view.query_features[0, q], view.boxes[0, q])
        n = len(q)
        cross = head.cross_attention_input(view.memory.expand(n, -1, -1), view.memory_valid.expand(n, -1),
                                           view.spatial_shapes, view.boxes[0, q])
    return head.generate(tokens, head.config.region_prompt, max_new_tokens, cross)
