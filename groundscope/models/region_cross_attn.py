"""LLMDet's region cross-attention inside the LM: at a few decoder layers, each region token looks back into the
detector's encoder memory with multi-scale deformable attention around its box.

Official (iSEE-Laboratory/LLMDet): ``use_lmm_cross_attn=True``, ``num_lmm_new_layers=6``,
``lmm_new_layer_insert_type='all'`` (configs/grounding_dino_swin_t.py ~L32-34): layers ``i * (24 // 6)`` =
0, 4, ..., 20 of Qwen2-0.5B get (llava/model/language_model/modeling_qwen2.py ~L888-895, ~L944-969, placed at
~L1147-1157)::

    h = residual + self_attn(input_layernorm(residual))            # the layer's own attention
    r = h[region tokens]                                            # (N, 1, H)
    r = RMSNorm(up_proj(MSDeformAttn(down_proj(r), query_pos, memory, reference points)) + r)
    h[region tokens] = r                                            # then the layer's MLP, as usual

with ``down_proj`` H -> 256, ``up_proj`` 256 -> H initialised to zero, mmcv's ``MultiScaleDeformableAttention``
(8 heads, 4 points, every memory level, its own init) and ``query_pos = ref_point_head(sine(reference))``, a
2-layer MLP shared by all layers (grounding_dino.py ~L441, ~L977-1004). The reference is the region's detached
predicted box, cxcywh, scaled by each level's valid ratio.

Here the layers attach to any transformers causal LM by hooks, without touching its code: a pre-hook on a
decoder layer keeps its input (the residual), a hook on its ``self_attn`` rewrites the attention output at the
region positions so that ``residual + output`` is the official ``h`` above. Decoder layers that do not add the
attention output straight to the residual (Gemma 2/3 normalise it first: they have ``pre_feedforward_layernorm``)
get the block after the whole layer instead (``placement == "layer"``). With fewer decoder layers than
requested cross-attention layers, every decoder layer gets one (LLMDet asserts instead).
The deformable attention is transformers' `GroundingDinoMultiscaleDeformableAttention` (the detector's own).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn


def placement_indices(num_layers: int, count: int) -> list[int]:
    """Decoder layers that get a cross-attention block: LLMDet's 'all' insertion ``i * (num_layers // count)``
    (modeling_qwen2.py ~L1153-1157), with `count` capped at `num_layers`."""
    count = min(count, num_layers)
    if count <= 0:
        return []
    interval = num_layers // count
    return [i * interval for i in range(count)]


def sine_embedding(coords: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """mmdet's ``coordinate_to_encoding`` / LLMDet's ``gen_sineembed_for_position``.

    Args:
        coords: (..., 4) normalised coordinates (a, b, c, d).
    Returns:
        (..., 4 * num_feats): the sines of (b, a, c, d) in that order, sin/cos interleaved - the (y, x, w, h) order
        of DINO for cxcywh input; LLMDet feeds xyxy boxes through the same function.
    """
    scale = 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    parts = []
    for k in (1, 0, 2, 3):
        pos = coords[..., k, None].float() * scale / dim_t
        parts.append(torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), -1).flatten(-2))
    return torch.cat(parts, -1)


class RMSNorm(nn.Module):
    """Qwen2's RMSNorm (fp32 statistics, weight applied in the input dtype), the official ``corss_attn_norm``."""

    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _mmcv_init(attn: nn.Module) -> None:
    """mmcv ``MultiScaleDeformableAttention.init_weights`` (called in its constructor): zero offsets with a
    bias on a ring of directions growing with the point index, zero attention logits, xavier projections."""
    heads, levels, points = attn.n_heads, attn.n_levels, attn.n_points
    nn.init.constant_(attn.sampling_offsets.weight, 0.0)
    thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2).repeat(1, levels, points, 1)
    for i in range(points):
        grid[:, :, i, :] *= i + 1
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(grid.view(-1))
    nn.init.constant_(attn.attention_weights.weight, 0.0)
    nn.init.constant_(attn.attention_weights.bias, 0.0)
    nn.init.xavier_uniform_(attn.value_proj.weight)
    nn.init.constant_(attn.value_proj.bias, 0.0)
    nn.init.xavier_uniform_(attn.output_proj.weight)
    nn.init.constant_(attn.output_proj.bias, 0.0)


@dataclass
class CrossAttentionInput:
    """What the region tokens attend to, one row per sequence.

    Attributes:
        memory: (N, S, d) encoder memory of each sequence's image.
        memory_valid: (N, S) bool, True on real pixels.
        spatial_shapes: [(H_l, W_l)] per level.
        reference_points: (N, 1, L, 4) cxcywh boxes times each level's valid ratios.
        query_pos: (N, 1, d) ref_point_head(sine(reference at level 0)).
        start: position of the region token in the LM sequence; count: tokens from there (1).
        seq_len: the prompt's length; LM calls with fewer tokens (cached generation steps) are left alone.
    """

    memory: torch.Tensor
    memory_valid: torch.Tensor
    spatial_shapes: list[tuple[int, int]]
    reference_points: torch.Tensor
    query_pos: torch.Tensor
    start: int = 0
    count: int = 1
    seq_len: int = 0


class RegionCrossAttentionLayer(nn.Module):
    """One official cross-attention block: (N, R, H) region hidden states -> (N, R, H)."""

    def __init__(self, hidden: int, d_model: int, num_levels: int, num_heads: int = 8, num_points: int = 4,
                 eps: float = 1e-6):
        super().__init__()
        from transformers.models.grounding_dino.modeling_grounding_dino import (
            GroundingDinoMultiscaleDeformableAttention,
        )

        self.down_proj = nn.Linear(hidden, d_model)  # PyTorch's default init, as the official
        self.up_proj = nn.Linear(d_model, hidden)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)
        self.norm = RMSNorm(hidden, eps)
        cfg = SimpleNamespace(d_model=d_model, num_feature_levels=num_levels, disable_custom_kernels=True)
        self.attn = GroundingDinoMultiscaleDeformableAttention(cfg, num_heads, num_points)
        _mmcv_init(self.attn)

    def forward(self, tokens: torch.Tensor, ctx: CrossAttentionInput) -> torch.Tensor:
        dtype = self.down_proj.weight.dtype
        x = self.down_proj(tokens.to(dtype))
        shapes = torch.as_tensor(ctx.spatial_shapes, dtype=torch.long, device=x.device)
        starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
        out, _ = self.attn(
            x, attention_mask=ctx.memory_valid, encoder_hidden_states=ctx.memory.to(dtype),
            position_embeddings=ctx.query_pos.to(dtype), reference_points=ctx.reference_points.to(dtype),
            spatial_shapes=shapes, spatial_shapes_list=[tuple(s) for s in ctx.spatial_shapes],
            level_start_index=starts,
        )
        # mmcv's block is called with identity=0: its output carries no residual; the residual is the token's
        return self.norm(self.up_proj(out) + tokens.to(dtype)).to(tokens.dtype)


def valid_ratios(memory_valid: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
    """(B, S) validity -> (B, L, 2) (width, height) valid ratios per level, as DETR's ``get_valid_ratio``."""
    out, start = [], 0
    for h, w in spatial_shapes:
        v = memory_valid[:, start:start + h * w].reshape(-1, h, w)
        out.append(torch.stack([v[:, 0, :].sum(1).float() / w, v[:, :, 0].sum(1).float() / h], -1))
        start += h * w
    return torch.stack(out, 1)


def _decoder_layers(lm: nn.Module) -> nn.ModuleList:
    for name, mod in lm.named_modules():
        if isinstance(mod, nn.ModuleList) and name.endswith("layers") and len(mod) and all(
                hasattr(layer, "self_attn") for layer in mod):
            return mod
    raise ValueError(f"the caption LM ({type(lm).__name__}) has no list of decoder layers with `self_attn`; "
                     "set caption.cross_attn_layers: 0")


class RegionCrossAttention(nn.Module):
    """The cross-attention blocks of one LM and their shared ``ref_point_head``.

    Args:
        lm: the causal LM (hooks are registered on its decoder layers; its weights are not touched).
        hidden: the LM's width; d_model: the detector's; num_levels: memory levels.
        count: blocks asked for (LLMDet: 6), placed by `placement_indices`.
    """

    def __init__(self, lm: nn.Module, hidden: int, d_model: int, num_levels: int, count: int = 6,
                 num_heads: int = 8, num_points: int = 4):
        super().__init__()
        layers = _decoder_layers(lm)
        self.at = placement_indices(len(layers), count)
        eps = float(getattr(getattr(lm, "config", None), "rms_norm_eps", 1e-6) or 1e-6)
        self.layers = nn.ModuleList(RegionCrossAttentionLayer(hidden, d_model, num_levels, num_heads, num_points, eps)
                                    for _ in self.at)
        # mmdet MLP(2d, d, d, 2): Linear -> ReLU -> Linear, PyTorch's default init (grounding_dino.py ~L441)
        self.ref_point_head = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.d_model = d_model
        self._ctx: CrossAttentionInput | None = None
        self._residual: dict[int, torch.Tensor] = {}
        self.placement = "layer" if any(hasattr(layers[i], "pre_feedforward_layernorm") for i in self.at) else "attention"
        # hooks hold this module through a closure, not as a submodule: the LM stays out of its state dict
        self._handles = []
        for k, i in enumerate(self.at):
            layer = layers[i]
            if self.placement == "attention":
                self._handles.append(layer.register_forward_pre_hook(self._keep_residual(k), with_kwargs=True))
                self._handles.append(layer.self_attn.register_forward_hook(self._after_attention(k)))
            else:
                self._handles.append(layer.register_forward_hook(self._after_layer(k)))

    # ------------------------------------------------------------------ inputs
    def inputs(self, memory: torch.Tensor, memory_valid: torch.Tensor, spatial_shapes: list[tuple[int, int]],
               boxes: torch.Tensor) -> CrossAttentionInput:
        """The cross-attention input of N regions.

        Args:
            memory: (N, S, d) memory of each region's image (repeat an image's memory for its regions);
            memory_valid: (N, S) bool; boxes: (N, 4) normalised cxcywh (detached here, as LLMDet detaches them).
        """
        ratios = valid_ratios(memory_valid, spatial_shapes).to(memory.dtype)  # (N, L, 2)
        ref = boxes.detach()[:, None].to(memory.dtype)  # (N, 1, 4)
        ref = ref[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]  # (N, 1, L, 4)
        query_pos = self.ref_point_head(sine_embedding(ref[:, :, 0], self.d_model // 2).to(
            self.ref_point_head[0].weight.dtype))
        return CrossAttentionInput(memory, memory_valid, list(spatial_shapes), ref, query_pos)

    @contextmanager
    def active(self, ctx: CrossAttentionInput):
        """Apply the blocks to positions ``ctx.start : ctx.start + ctx.count`` of LM calls of ``ctx.seq_len``
        tokens while the context is open."""
        self._ctx = ctx
        try:
            yield
        finally:
            self._ctx = None
            self._residual.clear()

    # ------------------------------------------------------------------ hooks
    def _applies(self, hidden: torch.Tensor) -> bool:
        ctx = self._ctx
        # A cached generation step (fewer tokens than the prompt) leaves the region alone, as LLMDet skips calls of
        # another length; a call as long as the prompt or longer (generation without a cache) holds the region.
        return ctx is not None and hidden.dim() == 3 and hidden.shape[1] >= ctx.seq_len

    def _block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """h (N, T, H) after the layer's attention -> h with the region positions replaced."""
        ctx = self._ctx
        s, e = ctx.start, ctx.start + ctx.count
        new = self.layers[k](h[:, s:e], ctx)
        return torch.cat([h[:, :s], new, h[:, e:]], 1)

    def _keep_residual(self, k: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if self._ctx is not None:
                self._residual[k] = hidden
        return hook

    def _after_attention(self, k: int):
        def hook(_module, _args, output):
            attn = output[0] if isinstance(output, tuple) else output
            residual = self._residual.pop(k, None)
            if residual is None or not self._applies(residual):
                return None
            h = residual + attn
            # residual + (new - residual) is the official hidden state at the region positions (to rounding)
            out = attn + (self._block(k, h) - h)
            return (out, *output[1:]) if isinstance(output, tuple) else out
        return hook

    def _after_layer(self, k: int):
        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            if not self._applies(h):
                return None
            out = self._block(k, h)
            return (out, *output[1:]) if isinstance(output, tuple) else out
        return hook
