"""Describe Anything (DAM): a localized vision backbone + projector + causal LM that describes a masked region.

DAM (Lian et al., 2025; NVlabs/describe-anything, built on VILA / LLaVA) reads a region's focal prompt
(`groundscope.describe.focal`) through one vision encoder used twice:

    full pass   patch_embed(full RGB) + mask_embed(full mask) -> the encoder's layers; the hidden state at the
                feature layer (-2: the input of the last layer, as LLaVA feeds) is the context z.
    crop pass   patch_embed(crop RGB) + mask_embed(crop mask) -> the same layers (shared weights); after each
                layer an adapter  h = h + a * CrossAttn(LN(h), z);  h = h + b * MLP(LN(h)).
                Its feature-layer state is the region's visual features.

`mask_embed` (a patch-sized Conv2d from one channel, with bias) and the gates a, b start at zero, so an
untrained DAM is its base VLM looking at the crop (`DamModel.base_vlm_features`). Released gates are raw
factors; ``gate="tanh"`` uses tanh(a), tanh(b). The projector ("mlp2x_gelu", or "mlp_downsample": 2x2 token
merge + LayerNorm + MLP, DAM-3B's) maps features to LM embeddings. Each ``<image>`` of the vicuna_v1 prompt
becomes one frame's tokens; a video is its frames' tokens in time order.

`load_dam` reads the released folder layout (``llm/``, ``vision_tower/``, ``mm_projector/``,
``context_provider/``, ``config.json``) by renaming the reference's parameters onto ours, without
trust_remote_code; `DamModel.save` writes the same layout. Naming (reference -> ours):

    vision_tower   vision_model.embeddings.mask_patch_embedding.*  -> backbone.mask_embed.*
                   vision_model.<rest>                               -> backbone.vision.<rest>
    mm_projector   layers.<i>.*                                      -> projector.layers.<i>.*
    context_provider  context_provider_module.layers.<i>.layer_norm1 -> backbone.adapters.<i>.attn_norm
                   ... .cross_attn.{q,k,v,out}_proj -> .cross_attn.{q,k,v,o};  .attn_factor -> .attn_gate
                   ... .layer_norm2 -> .mlp_norm;  .mlp.fc{1,2} -> .mlp.fc{1,2};  .mlp_factor -> .mlp_gate
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from groundscope.describe.focal import CROP_MODES, focal_batch

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200  # the reference's placeholder id in input_ids (LLaVA)
IGNORE_INDEX = -100
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
DAM_DIRS = ("llm", "vision_tower", "mm_projector", "context_provider")


# Named generation settings. "dlc-bench": the published DLC-Bench run (official evaluation/get_model_outputs.py
# ~67-71, ~103, ~126-132: temperature 0.2, top_p None, num_beams 1, max_new_tokens 512, every seed set to 123
# once before the first region). top_p None adds no nucleus filter; top_p 1.0 is the same in transformers.
GENERATION_PRESETS: dict[str, dict] = {
    "dlc-bench": {"temperature": 0.2, "top_p": 1.0, "max_new_tokens": 512, "seed": 123},
    "official-default": {"temperature": 0.2, "top_p": 0.5, "max_new_tokens": 512},  # get_description's defaults
    "greedy": {"temperature": 0.0},
}


def generation_preset(name: str) -> dict:
    """The settings of a named preset (a copy); raises DamError naming the known ones."""
    if name not in GENERATION_PRESETS:
        raise DamError(f"unknown generation preset {name!r}; use one of {sorted(GENERATION_PRESETS)}")
    return dict(GENERATION_PRESETS[name])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every CUDA device too), as the official evaluation does (~126-132)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class DamError(RuntimeError):
    """A DAM model cannot be built, loaded or used; the message says why and what to do."""


@dataclass
class DamConfig:
    """What fixes DAM's inputs, prompts and generation (saved in config.json under ``groundscope_dam``).

    Attributes:
        vision / llm: where the vision model (a SiglipVisionModel folder or hub id) and the causal LM came from.
        prompt: the user turn for an image; exactly one ``<image>``.
        video_prompt: the user turn for a video; ``{images}`` becomes one ``<image>`` per frame.
        conv_template: only "vicuna_v1": ``{system} USER: {prompt} ASSISTANT:``, answers end with EOS.
        image_size / image_mean / image_std / resample / image_aspect_ratio: the encoder's input processing.
        projector: "mlp2x_gelu" or "mlp_downsample".
        feature_layer: hidden state fed to the projector (-2: output of the second-to-last layer).
        select_feature: "cls_patch" keeps every token (SigLIP has no CLS), "patch" drops the first.
        num_frames: frames per video (DAM-3B-Video: 8).
        gate: "raw" (released: h + a * x) or "tanh" (h + tanh(a) * x).
        masked_cross_attn: crop tokens attend only to context tokens under the mask (the reference's option).
        treat_image_as_cimage: False (reference default): a region whose crop is the full image (identical
            8-channel input halves) gets the full pass's features, without adapters.
        min_crop: the focal crop's minimum box side in pixels.
        crop_mode: the focal crop's geometry: "clamp" (the reference's: clamped to the image, then stretched to
            the square input) or "square" (centred on the region, padded past the border; for models trained so).
        focal_crop: False for the ablation without the focal crop (the full image and mask only: the crop pass
            then sees the full image, which `treat_image_as_cimage` False answers with the full pass's features).
        context_provider: the context provider's own settings, as its ``context_provider/config.json`` names them
            (``num_attention_heads``, ``intermediate_size``, ``hidden_act``, ``layer_norm_eps``,
            ``num_hidden_layers``, ``context_provider_layer_indices``); the official ContextProvider builds its
            layers from that config, not the tower's (context_provider.py ~95-112, ~183-189, ~245-253, ~314-316).
            None (a DAM groundscope builds): the vision tower's values, one layer per tower layer.
        pixel_dtype: "float16": focal pixels are rounded to float16 before the tower, as the official
            ``get_image_tensor`` casts them (describe_anything_model.py ~144-162) whatever the model's dtype;
            "float32" keeps them unrounded (groundscope's own DAMs, trained so). A released folder (no
            ``groundscope_dam`` block) loads with "float16".
        temperature / top_p / max_new_tokens: generation defaults (the reference's ``get_description``:
            0.2 / 0.5 / 512; describe_anything_model.py ~125). ``GENERATION_PRESETS`` has DLC-Bench's.
    """

    vision: str | None = None
    llm: str | None = None
    prompt: str = "<image>\nDescribe the masked region in detail."
    video_prompt: str = ("Video: {images}\nGiven the video in the form of a sequence of frames above, describe the "
                         "object in the masked region in the video in detail.")
    conv_template: str = "vicuna_v1"
    system: str = VICUNA_V1_SYSTEM
    image_size: int = 384
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    resample: str = "bicubic"
    image_aspect_ratio: str = "resize"
    projector: str = "mlp_downsample"
    feature_layer: int = -2
    select_feature: str = "cls_patch"
    num_frames: int = 8
    gate: str = "raw"
    masked_cross_attn: bool = False
    treat_image_as_cimage: bool = False
    min_crop: int = 48
    crop_mode: str = "clamp"
    focal_crop: bool = True
    context_provider: dict | None = None
    pixel_dtype: str = "float32"
    temperature: float = 0.2
    top_p: float = 0.5
    max_new_tokens: int = 512

    def __post_init__(self):
        if self.conv_template != "vicuna_v1":
            raise DamError(f"conv_template {self.conv_template!r} is not supported; use 'vicuna_v1' (DAM's)")
        if self.prompt.count(IMAGE_TOKEN) != 1 or "{images}" not in self.video_prompt:
            raise DamError("prompt needs exactly one '<image>' and video_prompt an '{images}' placeholder")
        for name, value, allowed in (("projector", self.projector, PROJECTORS), ("gate", self.gate, ("raw", "tanh")),
                                     ("select_feature", self.select_feature, ("cls_patch", "patch")),
                                     ("crop_mode", self.crop_mode, CROP_MODES),
                                     ("pixel_dtype", self.pixel_dtype, ("float16", "float32"))):
            if value not in allowed:
                raise DamError(f"DamConfig.{name} = {value!r}; use one of {list(allowed)}")


# ---------------------------------------------------------------------------------------------- backbone
class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, T, C) on a context (B, S, C) -> (B, T, C)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """key_mask: (B, 1, 1, S) bool (True: may attend) or None."""
        b, t, c = x.shape
        split = lambda y: y.view(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(context)), split(self.v(context)),
                                             attn_mask=key_mask)
        return self.o(out.transpose(1, 2).reshape(b, t, c))


class ContextAdapter(nn.Module):
    """After one encoder layer of the crop pass: ``h + a*CrossAttn(LN(h), z)``, then ``h + b*MLP(LN(h))``.
    The gates a, b are (1,) zeros, so the adapter starts as the identity."""

    def __init__(self, dim: int, heads: int, intermediate: int, act: str, eps: float, gate: str = "raw"):
        super().__init__()
        from transformers.activations import ACT2FN

        self.gate = gate
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = CrossAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, intermediate), nn.Linear(intermediate, dim)
        self.act = ACT2FN[act]
        self.attn_gate, self.mlp_gate = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))

    def _g(self, p: torch.Tensor) -> torch.Tensor:
        return torch.tanh(p) if self.gate == "tanh" else p

    def forward(self, h: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, T, C), context (B, S, C) -> (B, T, C)."""
        h = h + self._g(self.attn_gate) * self.cross_attn(self.attn_norm(h), context, key_mask)
        return h + self._g(self.mlp_gate) * self.mlp.fc2(self.act(self.mlp.fc1(self.mlp_norm(h))))


CONTEXT_KEYS = ("num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps", "num_hidden_layers",
                "context_provider_layer_indices")


def context_settings(vision_config, context: dict | None, num_layers: int) -> dict:
    """The context provider's settings (`CONTEXT_KEYS`): those of `context` (its config.json), the vision
    tower's for any it lacks (official ContextProviderConfig's defaults are ViT-B's, never the tower's; a
    released config always names them)."""
    tower = {"num_attention_heads": vision_config.num_attention_heads,
             "intermediate_size": vision_config.intermediate_size, "hidden_act": vision_config.hidden_act,
             "layer_norm_eps": vision_config.layer_norm_eps, "num_hidden_layers": num_layers,
             "context_provider_layer_indices": None}
    given = {k: v for k, v in (context or {}).items() if k in CONTEXT_KEYS and v is not None}
    return {**tower, **given}


class LocalizedVisionBackbone(nn.Module):
    """DAM's localized vision backbone around a ViT-like model (`SiglipVisionModel`; any model whose vision
    transformer has ``embeddings.patch_embedding`` and ``encoder.layers``, e.g. CLIP's, whose ``pre_layrnorm``
    is applied too).

    Input: (B, 8, S, S) focal pixels (`focal_pixels`). Output: (B, T, C) crop features at `feature_layer`,
    T = (S / patch)^2 (minus one with select_feature "patch"), C the encoder width.
    """

    def __init__(self, vision: nn.Module, feature_layer: int = -2, select_feature: str = "cls_patch",
                 gate: str = "raw", masked_cross_attn: bool = False, treat_image_as_cimage: bool = False,
                 mask_mean: float = 0.5, mask_std: float = 0.5, context: dict | None = None):
        super().__init__()
        self.vision = vision
        inner = self._inner
        conv = getattr(getattr(inner, "embeddings", None), "patch_embedding", None)
        if not isinstance(conv, nn.Conv2d) or not hasattr(getattr(inner, "encoder", None), "layers"):
            raise DamError(f"{type(vision).__name__} is not ViT-like: DAM needs embeddings.patch_embedding "
                           "(Conv2d) and encoder.layers; use a SiglipVisionModel")
        cfg = vision.config
        n = len(inner.encoder.layers)
        self.num_run = n + 1 + feature_layer if feature_layer < 0 else feature_layer
        if not 0 < self.num_run <= n:
            raise DamError(f"feature_layer {feature_layer} is outside the encoder's {n} layers")
        self.feature_layer, self.select_feature = feature_layer, select_feature
        self.masked_cross_attn, self.treat_image_as_cimage = masked_cross_attn, treat_image_as_cimage
        self.mask_mean, self.mask_std = mask_mean, mask_std
        self.mask_embed = nn.Conv2d(1, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride)
        for p in self.mask_embed.parameters():
            nn.init.zeros_(p)
        self.context = context_settings(cfg, context, n)
        ctx = self.context
        if conv.out_channels % ctx["num_attention_heads"]:
            raise DamError(f"context provider: hidden size {conv.out_channels} is not divisible by "
                           f"{ctx['num_attention_heads']} heads")
        # The official CrossAttnContextProviderEndToAll (context_provider.py ~314-316) builds one layer per
        # `num_hidden_layers` when context_provider_layer_indices is None. With indices set, its filter compares
        # enumerate()'s (i, i) tuples with the integer indices and keeps no layer, so the crop pass then runs
        # without cross-attention (modeling_siglip.py ~737: `if context_provider_layers:`); we do the same.
        count = ctx["num_hidden_layers"] if ctx.get("context_provider_layer_indices") is None else 0
        if 0 < count < self.num_run:
            raise DamError(f"context provider has {count} layers but the crop pass runs {self.num_run} tower "
                           "layers, each followed by its own context layer (official modeling_siglip.py ~739 "
                           "indexes them by tower layer); set num_hidden_layers to the tower's")
        # Released: one layer per tower layer; with feature_layer -2 the last one is never run.
        self.adapters = nn.ModuleList(
            ContextAdapter(conv.out_channels, ctx["num_attention_heads"], ctx["intermediate_size"],
                           ctx["hidden_act"], ctx["layer_norm_eps"], gate) for _ in range(count))

    @property
    def _inner(self) -> nn.Module:
        return getattr(self.vision, "vision_model", self.vision)

    @property
    def patch_size(self) -> int:
        return int(self.mask_embed.kernel_size[0])

    def _select(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, 1:] if self.select_feature == "patch" else h

    def _embed(self, pixels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        emb = self._inner.embeddings
        dtype = emb.patch_embedding.weight.dtype
        if mask is None:
            return emb(pixels.to(dtype))
        extra = self.mask_embed(mask.to(dtype))
        # Add the mask embedding to the patch embedding's output through a hook, so whatever the embeddings
        # module does afterwards (CLS token, position embeddings) stays the vision model's own code.
        handle = emb.patch_embedding.register_forward_hook(lambda _m, _i, out: out + extra)
        try:
            return emb(pixels.to(dtype))
        finally:
            handle.remove()

    def features(self, pixels: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) pixels (+ (B, 1, S, S) mask) -> (B, T, C) at the feature layer; with a (B, T', C)
        `context`, each layer is followed by its adapter."""
        inner = self._inner
        h = self._embed(pixels, mask)
        if hasattr(inner, "pre_layrnorm"):
            h = inner.pre_layrnorm(h)
        for i, layer in enumerate(inner.encoder.layers[: self.num_run]):
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
            if context is not None and len(self.adapters):
                h = self.adapters[i](h, context, context_mask)
        return self._select(h)

    def _key_mask(self, full_mask: torch.Tensor, keys: int) -> torch.Tensor:
        """(B, 1, S, S) normalised mask -> (B, 1, 1, keys) bool, True on context tokens with any mask pixel
        (all True for a row that would have none, instead of NaN)."""
        p = self.patch_size
        on = (full_mask.float() * self.mask_std + self.mask_mean).clamp(0, 1)
        covered = (F.avg_pool2d(on, p, p).flatten(1) * p * p) >= 1e-5
        if covered.shape[1] != keys:
            raise DamError(f"masked cross-attention needs one context token per patch ({covered.shape[1]}), "
                           f"got {keys}; use select_feature 'cls_patch' with a model without CLS token")
        return (covered | ~covered.any(1, keepdim=True))[:, None, None]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 8, S, S) focal pixels (full RGB, full mask, crop RGB, crop mask) -> (B, T, C) region features."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 8:
            raise DamError(f"focal pixels must be (B, 8, S, S), got {tuple(pixel_values.shape)}; "
                           "build them with groundscope.describe.focal_pixels")
        z = self.features(pixel_values[:, :3], pixel_values[:, 3:4])
        key_mask = self._key_mask(pixel_values[:, 3:4], z.shape[1]) if self.masked_cross_attn else None
        crop = self.features(pixel_values[:, 4:7], pixel_values[:, 7:8], context=z, context_mask=key_mask)
        if self.treat_image_as_cimage:
            return crop
        same = (pixel_values[:, :4] == pixel_values[:, 4:]).flatten(1).all(1)
        return torch.where(same[:, None, None], z.to(crop.dtype), crop)

    def base_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The base VLM's features of (B, 3, S, S) pixels through the vision model's own forward (no mask
        embedding, no adapters) -> (B, T, C)."""
        dtype = self._inner.embeddings.patch_embedding.weight.dtype
        out = self.vision(pixel_values=pixels.to(dtype), output_hidden_states=True)
        return self._select(out.hidden_states[self.feature_layer])


# ---------------------------------------------------------------------------------------------- projector
class Merge2x2(nn.Module):
    """(B, s*s, C) tokens of an s x s grid -> (B, ceil(s/2)^2, 4C), in the reference's order.

    An odd grid is padded with zero tokens at the bottom / right. Output token (j, i) for column pair j and row
    pair i, j-major (the grid comes out transposed), holds [x[2i,2j], x[2i,2j+1], x[2i+1,2j], x[2i+1,2j+1]]
    concatenated; the released projector's LayerNorm and Linear weights depend on exactly this order.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        s = math.isqrt(t)
        if s * s != t:
            raise DamError(f"mlp_downsample needs a square token grid, got {t} tokens")
        g = F.pad(x.reshape(b, s, s, c), (0, 0, 0, s % 2, 0, s % 2))
        h = (s + 1) // 2
        g = g.reshape(b, h, 2, h, 2, c).permute(0, 3, 1, 2, 4, 5)  # (b, j, i, di, dj, c)
        return g.reshape(b, h * h, 4 * c)


PROJECTORS = ("mlp2x_gelu", "mlp_downsample")


class Projector(nn.Module):
    """(B, T, C) vision features -> (B, V, H) LM embeddings; ``layers`` indexes as the reference's."""

    def __init__(self, kind: str, vision_dim: int, llm_dim: int):
        super().__init__()
        if kind == "mlp2x_gelu":
            mods = [nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim)]
        elif kind == "mlp_downsample":
            mods = [Merge2x2(), nn.LayerNorm(4 * vision_dim), nn.Linear(4 * vision_dim, llm_dim), nn.GELU(),
                    nn.Linear(llm_dim, llm_dim)]
        else:
            raise DamError(f"projector {kind!r} is not supported; use one of {list(PROJECTORS)}")
        self.kind = kind
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ---------------------------------------------------------------------------------------------- model
@dataclass
class DamOutput:
    """loss: scalar or None; logits (B, L, vocab); labels (B, L) aligned with logits (-100 off the answers) or
    None; attention_mask (B, L)."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor | None
    attention_mask: torch.Tensor


class DamModel(nn.Module):
    """Backbone + projector + causal LM + tokenizer. Parameters: ``backbone.*`` (``vision``, ``mask_embed``,
    ``adapters``), ``projector.layers.*``, ``llm.*``."""

    def __init__(self, config: DamConfig, backbone: LocalizedVisionBackbone, projector: Projector, llm: nn.Module,
                 tokenizer):
        super().__init__()
        self.config, self.backbone, self.projector = config, backbone, projector
        self.llm, self.tokenizer = llm, tokenizer
        if tokenizer.eos_token_id is None:
            raise DamError("the tokenizer has no EOS token; DAM's answers end with it")

    @classmethod
    def from_parts(cls, config: DamConfig, vision: nn.Module, llm: nn.Module, tokenizer) -> "DamModel":
        """A fresh DAM on a vision model and an LM: zero mask embedding and gates, a random projector."""
        if getattr(vision.config, "image_size", config.image_size) != config.image_size:
            raise DamError(f"DamConfig.image_size {config.image_size} differs from the vision model's "
                           f"{vision.config.image_size}; set it to the vision model's input size")
        backbone = LocalizedVisionBackbone(vision, config.feature_layer, config.select_feature, config.gate,
                                           config.masked_cross_attn, config.treat_image_as_cimage,
                                           config.image_mean[0], config.image_std[0], config.context_provider)
        projector = Projector(config.projector, backbone.mask_embed.out_channels,
                              llm.get_input_embeddings().weight.shape[1])
        return cls(config, backbone, projector, llm, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.projector.layers[-1].weight.device

    # ------------------------------------------------------------------ visual tokens
    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(M, 8, S, S) focal pixels -> (M, V, H) LM embeddings, one row per frame."""
        return self.projector(self.backbone(pixel_values.to(self.device)))

    def base_vlm_features(self, crop: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) crop pixels -> (M, T, C): the same vision model without mask embedding or adapters."""
        return self.backbone.base_features(crop.to(self.device))

    def base_vlm_tokens(self, crop: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) crop pixels -> (M, V, H): what the base VLM feeds its LM for the crop."""
        return self.projector(self.base_vlm_features(crop))

    def focal_inputs(self, images: Sequence, masks: Sequence) -> tuple[torch.Tensor, list[int]]:
        """`focal_batch` with this model's input processing: ((M, 8, S, S), frames per region)."""
        cfg = self.config
        pixels, frames = focal_batch(images, masks, cfg.image_size, cfg.image_mean, cfg.image_std, cfg.resample,
                                     cfg.image_aspect_ratio, cfg.min_crop, cfg.focal_crop, cfg.crop_mode)
        if cfg.pixel_dtype == "float16":  # official get_image_tensor: .to(dtype=torch.float16), ~144-162
            pixels = pixels.half().float()
        return pixels, frames

    # ------------------------------------------------------------------ text
    def user_message(self, frames: int, prompt: str | None = None) -> str:
        """The user turn for `frames` frames: the image prompt, the video prompt, or `prompt` (which must hold
        one ``<image>`` per frame)."""
        text = prompt or (self.config.prompt if frames == 1 else
                          self.config.video_prompt.format(images=IMAGE_TOKEN * frames))
        if text.count(IMAGE_TOKEN) != frames:
            raise DamError(f"prompt has {text.count(IMAGE_TOKEN)} '<image>' but the region has {frames} frames")
        return text

    def _ids_with_images(self, text: str) -> list[int]:
        """Token ids of `text` with IMAGE_TOKEN_INDEX for each ``<image>``, tokenized piece by piece as the
        reference's tokenizer_image_token: a BOS the tokenizer adds is kept once, at the start."""
        chunks = [self.tokenizer(c)["input_ids"] for c in text.split(IMAGE_TOKEN)]
        bos = self.tokenizer.bos_token_id
        offset = 1 if bos is not None and chunks[0][:1] == [bos] else 0
        ids = list(chunks[0][:offset])
        for k, chunk in enumerate(chunks):
            ids += ([IMAGE_TOKEN_INDEX] if k else []) + list(chunk[offset:])
        return ids

    def encode(self, user: str, answer: str | None = None) -> tuple[list[int], list[int]]:
        """(ids, labels) of one conversation: ``{system} USER: {user} ASSISTANT:`` then, with an answer,
        `` {answer}`` and EOS. Labels are -100 except on the answer and EOS. The answer's ids are those it has
        following the prompt (tokenized together, as LLaVA tokenizes the whole conversation)."""
        prompt = f"{self.config.system} USER: {user} ASSISTANT:"
        ids = self._ids_with_images(prompt)
        if answer is None:
            return ids, [IGNORE_INDEX] * len(ids)
        joint = self._ids_with_images(f"{prompt} {answer}")
        tail = (joint[len(ids):] if joint[: len(ids)] == ids
                else self.tokenizer(f" {answer}", add_special_tokens=False)["input_ids"])
        tail = list(tail) + [self.tokenizer.eos_token_id]
        return ids + tail, [IGNORE_INDEX] * len(ids) + tail

    def tokenize(self, frames: Sequence[int], answers: Sequence[str] | None = None,
                 prompt: str | Sequence[str | None] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (B, T) for regions of `frames` frames.
        `prompt` is one user turn for every region or a list with one per region (None: the default)."""
        if answers is not None and len(answers) != len(frames):
            raise DamError(f"{len(answers)} answers for {len(frames)} regions")
        prompts = [prompt] * len(frames) if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(frames):
            raise DamError(f"{len(prompts)} prompts for {len(frames)} regions")
        pairs = [self.encode(self.user_message(f, prompts[i]), answers[i] if answers is not None else None)
                 for i, f in enumerate(frames)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        stack = lambda rows, value: torch.nn.utils.rnn.pad_sequence(  # noqa: E731
            [torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)
        ids, labels = zip(*pairs)
        return {"input_ids": stack(ids, pad), "attention_mask": stack([[1] * len(i) for i in ids], 0),
                "labels": stack(labels, IGNORE_INDEX)}

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, visual: torch.Tensor,
              labels: torch.Tensor | None = None):
        """Replace each IMAGE_TOKEN_INDEX by one frame's tokens (rows of `visual` in order of appearance).

        Args:
            input_ids / attention_mask / labels: (B, T); padding (mask 0) is dropped before re-padding.
            visual: (M, V, H), M = the number of placeholders.
        Returns:
            inputs_embeds (B, L, H), attention_mask (B, L) long, labels (B, L) (-100 on visual tokens) or None;
            right-padded.
        """
        device = visual.device
        input_ids = input_ids.to(device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        placeholders = int(((input_ids == IMAGE_TOKEN_INDEX) & attention_mask.bool()).sum())
        if placeholders != visual.shape[0]:
            raise DamError(f"input_ids hold {placeholders} image placeholders but {visual.shape[0]} frames were "
                           "given; pass one focal-pixel row per '<image>'")
        emb = self.llm.get_input_embeddings()
        seqs, labs, k = [], [], 0
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids = input_ids[b][keep]
            lab = labels[b].to(device)[keep] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
            text = emb(ids.clamp(min=0))
            parts, lparts, start = [], [], 0
            for p in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                parts += [text[start:p], visual[k].to(text.dtype)]
                lparts += [lab[start:p], lab.new_full((visual.shape[1],), IGNORE_INDEX)]
                k, start = k + 1, p + 1
            seqs.append(torch.cat(parts + [text[start:]]))
            labs.append(torch.cat(lparts + [lab[start:]]))
        lengths = torch.tensor([s.shape[0] for s in seqs], device=device)
        embeds = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        mask = (torch.arange(embeds.shape[1], device=device) < lengths[:, None]).long()
        out_labels = torch.nn.utils.rnn.pad_sequence(labs, batch_first=True, padding_value=IGNORE_INDEX)
        return embeds, mask, (out_labels if labels is not None else None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                visual_tokens: torch.Tensor | None = None) -> DamOutput:
        """LM logits (and, with labels, the mean next-token loss over labelled tokens) for (B, T) input_ids
        holding image placeholders, with (M, 8, S, S) `pixel_values` or precomputed (M, V, H) `visual_tokens`."""
        if (pixel_values is None) == (visual_tokens is None):
            raise DamError("pass exactly one of pixel_values (focal pixels) or visual_tokens")
        visual = self.visual_tokens(pixel_values) if visual_tokens is None else visual_tokens
        embeds, mask, labels = self.embed(input_ids, attention_mask, visual, labels)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)
        return DamOutput(loss=out.loss, logits=out.logits, labels=labels, attention_mask=mask)

    @torch.no_grad()
    def generate(self, images: Sequence, masks: Sequence, prompt: str | None = None, temperature: float | None = None,
                 top_p: float | None = None, max_new_tokens: int | None = None, seed: int | None = None,
                 **kwargs) -> list[str]:
        """Descriptions of N regions (see `focal_inputs`). The vision pass is batched over every frame; the LM
        generates each region on its own, so no padding sits inside a prompt. ``temperature`` 0 is greedy;
        `seed` seeds every generator first (`seed_everything`)."""
        cfg = self.config
        if seed is not None:
            seed_everything(seed)
        pixels, frames = self.focal_inputs(images, masks)
        visual = self.visual_tokens(pixels)
        batch = self.tokenize(frames, None, prompt)
        temperature = cfg.temperature if temperature is None else temperature
        sampling = {"do_sample": True, "temperature": temperature,
                    "top_p": cfg.top_p if top_p is None else top_p} if temperature > 0 else {"do_sample": False}
        eos, texts, start = self.tokenizer.eos_token_id, [], 0
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        for i, f in enumerate(frames):
            embeds, mask, _ = self.embed(batch["input_ids"][i:i + 1], batch["attention_mask"][i:i + 1],
                                         visual[start:start + f])
            start += f
            ids = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, eos_token_id=eos, pad_token_id=pad,
                                    max_new_tokens=max_new_tokens or cfg.max_new_tokens, **sampling, **kwargs)
            text = self.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
            eos_text = self.tokenizer.eos_token or ""
            texts.append(text[: -len(eos_text)].strip() if eos_text and text.endswith(eos_text) else text)
        return texts

    # ------------------------------------------------------------------ files
    def save(self, out_dir: str | Path, base_vlm: bool = False) -> Path:
        """Write the released DAM layout (names in the module docstring), readable by `load_dam` and, for the
        raw gate form, by the reference code.

        With ``base_vlm=True`` the DAM parts (mask embedding, ``context_provider/``) are left out: the folder
        of the base VLM (VILA layout) that ``load_dam(..., from_base_vlm=True)`` starts a DAM from."""
        from safetensors.torch import save_file

        out, cfg, bb = Path(out_dir), self.config, self.backbone

        def part(name: str, state: dict, config: dict) -> dict:
            (out / name).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, out / name / "model.safetensors")
            _write_json(out / name / "config.json", config)
            return config

        self.llm.save_pretrained(out / "llm")
        self.tokenizer.save_pretrained(out / "llm")
        prefix = "" if hasattr(bb.vision, "vision_model") else "vision_model."
        vision_sd = {prefix + k: v for k, v in bb.vision.state_dict().items()}
        if not base_vlm:
            vision_sd.update({f"vision_model.embeddings.mask_patch_embedding.{k}": v
                              for k, v in bb.mask_embed.state_dict().items()})
        vcfg = part("vision_tower", vision_sd, {**bb.vision.config.to_dict(), "architectures": ["SiglipVisionModel"],
                                                **({} if base_vlm else {"num_mask_channels": 1})})
        _write_json(out / "vision_tower" / "preprocessor_config.json", {
            "image_processor_type": "SiglipImageProcessor", "do_resize": True, "do_rescale": True,
            "do_normalize": True, "rescale_factor": 1 / 255, "image_mean": cfg.image_mean, "image_std": cfg.image_std,
            "resample": _RESAMPLE_IDS[cfg.resample], "size": {"height": cfg.image_size, "width": cfg.image_size}})
        pcfg = part("mm_projector", self.projector.state_dict(), {
            "mm_projector_type": self.projector.kind, "model_type": "v2l_projector",
            "architectures": ["MultimodalProjector"]})
        ctx = {f"context_provider_module.layers.{k}": v for k, v in
               _rename(bb.adapters.state_dict(), _ADAPTER_NAMES, reverse=True).items()}
        vc = bb.vision.config
        ccfg = None if base_vlm else part("context_provider", ctx, {
            "model_type": "context_provider", "architectures": ["ContextProvider"],
            "context_provider_type": "cross_attn_end_to_all", "hidden_size": vc.hidden_size, **bb.context,
            "num_channels": 3, "num_mask_channels": 1, "image_size": cfg.image_size,
            "patch_size": bb.patch_size, "zero_init_output": True,
            "masked_cross_attn": cfg.masked_cross_attn, "treat_image_as_cimage": cfg.treat_image_as_cimage})
        dtype = next(self.llm.parameters()).dtype
        _write_json(out / "config.json", {
            "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "model_dtype": str(dtype),
            "llm_cfg": self.llm.config.to_dict(), "vision_tower_cfg": vcfg, "mm_projector_cfg": pcfg,
            "context_provider_cfg": ccfg, "hidden_size": self.llm.get_input_embeddings().weight.shape[1],
            "mm_hidden_size": vc.hidden_size, "mm_vision_select_layer": cfg.feature_layer,
            "mm_vision_select_feature": cfg.select_feature, "image_aspect_ratio": cfg.image_aspect_ratio,
            "num_video_frames": cfg.num_frames, "groundscope_dam": asdict(cfg)})
        if base_vlm:
            import shutil

            shutil.rmtree(out / "context_provider", ignore_errors=True)  # an earlier save into the same folder
        return out


# ---------------------------------------------------------------------------------------------- loading
_ADAPTER_NAMES = [  # reference suffix -> ours, inside layer <i>
    ("layer_norm1.", "attn_norm."), ("layer_norm2.", "mlp_norm."), ("cross_attn.q_proj.", "cross_attn.q."),
    ("cross_attn.k_proj.", "cross_attn.k."), ("cross_attn.v_proj.", "cross_attn.v."),
    ("cross_attn.out_proj.", "cross_attn.o."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
    ("attn_factor", "attn_gate"), ("mlp_factor", "mlp_gate")]
_RESAMPLE_IDS = {"nearest": 0, "bilinear": 2, "bicubic": 3}


def _rename(state: dict, table: list[tuple[str, str]], reverse: bool = False) -> dict:
    """Rename ``<i>.<suffix>`` keys by `table` (reference -> ours; ours -> reference with `reverse`)."""
    out = {}
    for key, value in state.items():
        layer, _, rest = key.partition(".")
        for ref, ours in table:
            src, dst = (ours, ref) if reverse else (ref, ours)
            if rest.startswith(src):
                out[f"{layer}.{dst}{rest[len(src):]}"] = value
                break
        else:
            raise DamError(f"unknown context-provider parameter {key!r}")
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved module folder (model.safetensors, or shards listed in its index)."""
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(folder / shard))
        return state
    raise DamError(f"no weights in {folder}: expected model.safetensors or model.safetensors.index.json")


def _load_strict(module: nn.Module, state: dict, what: str, optional: tuple[str, ...] = ()) -> None:
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(optional))
    if unexpected or missing:
        raise DamError(f"{what}: parameter names do not match (missing {missing[:5]}, unexpected {unexpected[:5]}); "
                       "is this a DAM / VILA folder with the same architecture?")
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise DamError(f"{what}: {e}") from e


def _config_from_folder(root: Path, top: dict) -> DamConfig:
    """Our saved DamConfig (if any), overridden by the reference's own fields, which decide the shapes."""
    read = lambda *p: json.loads(root.joinpath(*p).read_text()) if root.joinpath(*p).is_file() else {}  # noqa: E731
    known = {f.name for f in fields(DamConfig)}
    values = {k: v for k, v in (top.get("groundscope_dam") or {}).items() if k in known}
    values["image_size"] = read("vision_tower", "config.json").get("image_size", values.get("image_size", 384))
    pre = read("vision_tower", "preprocessor_config.json")
    values["image_size"] = int((pre.get("size") or {}).get("height", values["image_size"]))
    values.update({k: list(pre[k]) for k in ("image_mean", "image_std") if k in pre})
    values["resample"] = {v: k for k, v in _RESAMPLE_IDS.items()}.get(pre.get("resample"), values.get("resample"))
    for ours, ref in (("feature_layer", "mm_vision_select_layer"), ("select_feature", "mm_vision_select_feature"),
                      ("image_aspect_ratio", "image_aspect_ratio"), ("num_frames", "num_video_frames")):
        if top.get(ref) is not None:
            values[ours] = top[ref]
    values["projector"] = read("mm_projector", "config.json").get("mm_projector_type", values.get("projector"))
    ctx = read("context_provider", "config.json")
    if ctx and (ctx.get("context_image_as_queries") or ctx.get("context_provider_type") != "cross_attn_end_to_all"):
        raise DamError(f"{root}/context_provider: only the 'cross_attn_end_to_all' context provider with crop "
                       "queries is supported (DAM-3B's)")
    if ctx:
        values["context_provider"] = {k: ctx[k] for k in CONTEXT_KEYS if k in ctx}
    # Released folders round pixels to float16 as the official code does; our saved configs say what they used.
    values["pixel_dtype"] = (top.get("groundscope_dam") or {}).get("pixel_dtype",
                                                                   "float32" if "groundscope_dam" in top else "float16")
    values.update(masked_cross_attn=bool(ctx.get("masked_cross_attn", False)),
                  treat_image_as_cimage=bool(ctx.get("treat_image_as_cimage", False)),
                  vision=str(root / "vision_tower"), llm=str(root / "llm"))
    return DamConfig(**{k: v for k, v in values.items() if v is not None})


def load_dam(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             from_base_vlm: bool = False) -> DamModel:
    """Load a DAM folder in the released layout (nvidia/DAM-3B, or one `DamModel.save` wrote).

    With ``from_base_vlm=True`` a VILA-layout folder without ``context_provider/`` or mask embedding loads too,
    those parts zero-initialised (an untrained DAM: the start of DAM training).
    Raises:
        DamError: the folder is not in that layout or its parameters do not match.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    root = Path(path)
    needed = DAM_DIRS[:3] if from_base_vlm else DAM_DIRS
    absent = [d for d in ("config.json",) + needed if not (root / d).exists()]
    if absent:
        raise DamError(f"{root} is not a DAM folder: {absent} missing (expected config.json, "
                       f"{', '.join(d + '/' for d in DAM_DIRS)}); download nvidia/DAM-3B or pass from_base_vlm=True "
                       "for a VILA folder")
    config = _config_from_folder(root, json.loads((root / "config.json").read_text()))
    try:
        llm = AutoModelForCausalLM.from_pretrained(root / "llm", dtype=dtype)
        # As official language_model/builder.py ~117-123: the slow tokenizer, legacy=False, right padding. Under
        # transformers 5 "slow" reads tokenizer.json as well (a folder without tokenizer.model loads).
        tokenizer = AutoTokenizer.from_pretrained(root / "llm", use_fast=False, legacy=False, padding_side="right")
        vision = AutoModel.from_config(AutoConfig.from_pretrained(root / "vision_tower"))
    except (OSError, ValueError) as e:
        raise DamError(f"cannot load the LM or vision tower of {root}: {e}") from e
    if llm.get_input_embeddings().weight.shape[0] != len(tokenizer):
        # official model_utils.py ~91: model.resize_token_embeddings(len(tokenizer)), whichever way it goes
        llm.resize_token_embeddings(len(tokenizer))
    model = DamModel.from_parts(config, vision, llm, tokenizer)
    bb = model.backbone
    state, own = _read_state(root / "vision_tower"), set(bb.vision.state_dict())
    mask_prefix = "vision_model.embeddings.mask_patch_embedding."
    mask_sd = {k[len(mask_prefix):]: state.pop(k) for k in list(state) if k.startswith(mask_prefix)}
    state = {k[len("vision_model."):] if k not in own and k.startswith("vision_model.") else k: v
             for k, v in state.items()}
    _load_strict(bb.vision, state, f"{root}/vision_tower", optional=("head.", "post_layernorm.", "vision_model.head.",
                                                                     "vision_model.post_layernorm."))
    if mask_sd or not from_base_vlm:
        _load_strict(bb.mask_embed, mask_sd, f"{root}/vision_tower mask_patch_embedding")
    _load_strict(model.projector, _read_state(root / "mm_projector"), f"{root}/mm_projector")
    if (root / "context_provider").exists():
        ctx = {k.removeprefix("context_provider_module.layers."): v
               for k, v in _read_state(root / "context_provider").items()}
        _load_strict(bb.adapters, _rename(ctx, _ADAPTER_NAMES), f"{root}/context_provider")
    return model.to(device=device, dtype=dtype).eval()
