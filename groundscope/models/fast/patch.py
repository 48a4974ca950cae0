"""Install the CPU fast path on a loaded Grounding DINO / MM-GDINO / LLMDet model, in place.

Nothing about the checkpoint changes (the patched modules hold no parameters of their own), so published
weights load as they are and `save_pretrained` writes the same files. What changes is how these modules run at
inference:

- every ``*MultiscaleDeformableAttention`` module's sampling core (``.attn``) becomes
  `deform_attn.FastMultiScaleDeformableAttention` (one sparse-dense product instead of grid_sample per level);
- every ``*BiMultiHeadAttention`` (the fusion layers' image-text cross attention) becomes its `Fast*` subclass
  (``__class__`` swapped, weights untouched), which runs `attention.bi_attention_forward`: two
  scaled_dot_product_attention calls;
- every ``*DeformableLayer`` (the encoder's deformable self-attention + FFN) becomes its `Fast*` subclass,
  which runs its FFN in chunks of tokens (`attention.chunked_ffn`: the same numbers, 2.3x faster), and so
  does every Swin block's MLP (``SwinMLP``);
- with ``kernel="cpp"`` (precision="bf16"), every ``*MultiscaleDeformableAttention`` also becomes its `Fast*`
  subclass, which runs `fused_deformable_forward`: softmax, sampling locations and sampling in one C++ pass.

All fall back to the reference code in training mode, with autograd on, and under the export tracer, so
training and ONNX export see transformers' modules exactly. The subclasses are importable classes, so a patched
model pickles and deep-copies like an unpatched one.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoBiMultiHeadAttention,
    GroundingDinoDeformableLayer,
    GroundingDinoMultiscaleDeformableAttention,
)
from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import (
    MMGroundingDinoBiMultiHeadAttention,
    MMGroundingDinoDeformableLayer,
    MMGroundingDinoMultiscaleDeformableAttention,
)
from transformers.models.swin.modeling_swin import SwinMLP

from groundscope.models.fast.attention import bi_attention_forward, chunked_ffn, deformable_layer_forward
from groundscope.models.fast.deform_attn import FastMultiScaleDeformableAttention


def reference_needed(module: nn.Module) -> bool:
    """Training, autograd or export tracing: run transformers' own code."""
    return module.training or torch.is_grad_enabled() or torch.jit.is_tracing()


class _FastBiAttention:
    """Mixin: a `*BiMultiHeadAttention` whose inference runs `bi_attention_forward` (SDPA)."""

    def forward(self, *args, **kwargs):
        if reference_needed(self):
            return super().forward(*args, **kwargs)
        return bi_attention_forward(self, *args, **kwargs)


class FastGroundingDinoBiMultiHeadAttention(_FastBiAttention, GroundingDinoBiMultiHeadAttention):
    """`GroundingDinoBiMultiHeadAttention` whose inference runs `bi_attention_forward` (SDPA)."""


class FastMMGroundingDinoBiMultiHeadAttention(_FastBiAttention, MMGroundingDinoBiMultiHeadAttention):
    """`MMGroundingDinoBiMultiHeadAttention` whose inference runs `bi_attention_forward` (SDPA)."""


def fused_deformable_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    position_embeddings: torch.Tensor | None = None,
    reference_points: torch.Tensor | None = None,
    spatial_shapes: torch.Tensor | None = None,
    spatial_shapes_list: list[tuple[int, int]] | None = None,
    level_start_index: torch.Tensor | None = None,
    output_attentions: bool = False,
):
    """`*MultiscaleDeformableAttention.forward` with softmax, sampling locations and sampling in one C++ pass.

    Shapes as the reference's: hidden_states (B, Q, d), encoder_hidden_states (B, S, d), attention_mask (B, S)
    bool (True = valid), reference_points (B, Q, L, 2 or 4). The value masking is skipped when nothing is masked
    (a full pass over (B, S, d) otherwise spent multiplying by one). Returns (output (B, Q, d), None).
    """
    from groundscope.models.fast.msda_cpp import fused_deformable_attention

    if position_embeddings is not None:
        hidden_states = hidden_states + position_embeddings
    b, q, _ = hidden_states.shape
    s = encoder_hidden_states.shape[1]
    value = self.value_proj(encoder_hidden_states)
    if attention_mask is not None and not bool(attention_mask.all()):
        value = value.masked_fill(~attention_mask[..., None], 0.0)
    value = value.view(b, s, self.n_heads, self.d_model // self.n_heads)
    offsets = self.sampling_offsets(hidden_states).view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
    logits = self.attention_weights(hidden_states).view(b, q, self.n_heads, self.n_levels * self.n_points)
    shapes = [(int(h), int(w)) for h, w in spatial_shapes_list]
    out = fused_deformable_attention(value, shapes, reference_points, offsets, logits)
    return self.output_proj(out), None


def _fused_available(module: nn.Module, hidden_states: torch.Tensor) -> bool:
    from groundscope.models.fast import msda_cpp

    attn = getattr(module, "attn", None)
    return (isinstance(attn, FastMultiScaleDeformableAttention) and attn.kernel == "cpp"
            and hidden_states.device.type == "cpu" and msda_cpp.kernel() is not None)


class _FastDeformableAttention:
    """Mixin: with the "cpp" kernel, `fused_deformable_forward` at inference; transformers' forward otherwise."""

    def forward(self, hidden_states, *args, **kwargs):
        if reference_needed(self) or kwargs.get("output_attentions") or not _fused_available(self, hidden_states):
            return super().forward(hidden_states, *args, **kwargs)
        return fused_deformable_forward(self, hidden_states, *args, **kwargs)


class FastGroundingDinoMultiscaleDeformableAttention(_FastDeformableAttention,
                                                     GroundingDinoMultiscaleDeformableAttention):
    """With the "cpp" kernel: `fused_deformable_forward` at inference; transformers' forward otherwise."""


class FastMMGroundingDinoMultiscaleDeformableAttention(_FastDeformableAttention,
                                                       MMGroundingDinoMultiscaleDeformableAttention):
    """With the "cpp" kernel: `fused_deformable_forward` at inference; transformers' forward otherwise."""


class _FastDeformableLayer:
    """Mixin: a `*DeformableLayer` whose inference chunks its FFN (`attention.deformable_layer_forward`)."""

    def forward(self, *args, **kwargs):
        if reference_needed(self):
            return super().forward(*args, **kwargs)
        return deformable_layer_forward(self, *args, **kwargs)


class FastGroundingDinoDeformableLayer(_FastDeformableLayer, GroundingDinoDeformableLayer):
    """`GroundingDinoDeformableLayer` whose inference chunks its FFN (`attention.deformable_layer_forward`)."""


class FastMMGroundingDinoDeformableLayer(_FastDeformableLayer, MMGroundingDinoDeformableLayer):
    """`MMGroundingDinoDeformableLayer` whose inference chunks its FFN (`attention.deformable_layer_forward`)."""


class FastSwinMLP(SwinMLP):
    """The Swin backbone's MLP with `attention.chunked_ffn` at inference (the same numbers)."""

    def forward(self, hidden_states):
        if reference_needed(self):
            return super().forward(hidden_states)
        return chunked_ffn(hidden_states, self.fc1, self.activation_fn, self.fc2)


FAST_CLASSES = {
    GroundingDinoBiMultiHeadAttention: FastGroundingDinoBiMultiHeadAttention,
    MMGroundingDinoBiMultiHeadAttention: FastMMGroundingDinoBiMultiHeadAttention,
    GroundingDinoMultiscaleDeformableAttention: FastGroundingDinoMultiscaleDeformableAttention,
    MMGroundingDinoMultiscaleDeformableAttention: FastMMGroundingDinoMultiscaleDeformableAttention,
    GroundingDinoDeformableLayer: FastGroundingDinoDeformableLayer,
    MMGroundingDinoDeformableLayer: FastMMGroundingDinoDeformableLayer,
    SwinMLP: FastSwinMLP,
}


def apply_fast_path(model: nn.Module, kernel: str = "sparse") -> dict[str, int]:
    """Patch `model` (any module tree holding Grounding DINO layers) in place; idempotent.

    `kernel` picks the deformable sampler: "sparse" (pure PyTorch) or "cpp" (`msda_cpp`, compiled on first use,
    ~5x faster; falls back to "sparse" where no compiler is found). The environment variable
    GROUNDSCOPE_MSDA_KERNEL, when set, overrides it.
    Returns how many modules of each kind run the fast path, e.g. {"deformable_attention": 12,
    "fusion_attention": 6, "deformable_layer": 6, "backbone_mlp": 12} for Grounding-DINO-T.
    """
    kernel = os.environ.get("GROUNDSCOPE_MSDA_KERNEL", "").strip().lower() or kernel
    counts = {"deformable_attention": 0, "fusion_attention": 0, "deformable_layer": 0, "backbone_mlp": 0}
    for module in model.modules():
        kind = type(module).__name__
        if kind.endswith("MultiscaleDeformableAttention") and isinstance(getattr(module, "attn", None), nn.Module):
            if not isinstance(module.attn, FastMultiScaleDeformableAttention):
                module.attn = FastMultiScaleDeformableAttention(module.attn, kernel)
            else:
                module.attn.kernel = kernel
            if type(module) in FAST_CLASSES:
                module.__class__ = FAST_CLASSES[type(module)]
            counts["deformable_attention"] += 1
        elif type(module) in FAST_CLASSES or type(module) in FAST_CLASSES.values():
            if type(module) in FAST_CLASSES:
                module.__class__ = FAST_CLASSES[type(module)]
            group = ("deformable_layer" if kind.endswith("DeformableLayer") else
                     "backbone_mlp" if kind.endswith("SwinMLP") else "fusion_attention")
            counts[group] += 1
    return counts


def remove_fast_path(model: nn.Module) -> None:
    """Undo `apply_fast_path`: transformers' own modules run again."""
    reference_classes = {fast: base for base, fast in FAST_CLASSES.items()}
    for module in model.modules():
        if isinstance(getattr(module, "attn", None), FastMultiScaleDeformableAttention):
            module.attn = module.attn.reference
        if type(module) in reference_classes:
            module.__class__ = reference_classes[type(module)]
