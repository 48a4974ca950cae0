"""DAM's localized vision backbone: one vision encoder used twice on a region's focal prompt
(`groundscope.describe.focal`), the crop pass reading the full pass through cross-attention adapters.

    full pass   patch_embed(full RGB) + mask_embed(full mask) -> the encoder's layers; the hidden state at the
                feature layer (-2: the input of the last layer, as LLaVA feeds) is the context z.
    crop pass   patch_embed(crop RGB) + mask_embed(crop mask) -> the same layers (shared weights); after each
                layer an adapter  h = h + a * CrossAttn(LN(h), z);  h = h + b * MLP(LN(h)).
                Its feature-layer state is the region's visual features.

Input (B, 8, S, S) focal pixels (full RGB, full mask, crop RGB, crop mask); output (B, T, C) region features,
T = (S / patch)^2, C the encoder width. `mask_embed` (a patch-sized Conv2d from one channel, with bias) and the
gates a, b start at zero, so an untrained backbone is its base VLM's vision model looking at the crop. Released
gates are raw factors; ``gate="tanh"`` uses tanh(a), tanh(b).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from groundscope.describe.config import DamError


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
