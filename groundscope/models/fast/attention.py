"""Grounding DINO's image-text cross attention with ``scaled_dot_product_attention`` (CPU fast path).

transformers' `GroundingDinoBiMultiHeadAttention` materialises the (B*heads, S, T) score matrix of ~22k image
tokens against the prompt's tokens, subtracts its global max, clamps it to +-50000, masks, and runs two softmaxes
(image->text over T, text->image over S on the transpose), then two bmm's. The same two attentions are two SDPA
calls sharing the projections:

    vision -> text:  sdpa(q = vision_proj(v) * scale, k = text_proj(t),            v = values_text_proj(t))
    text -> vision:  sdpa(q = text_proj(t),           k = vision_proj(v) * scale,  v = values_vision_proj(v))

Softmax is shift-invariant, so the max subtraction changes nothing; the +-50000 clamp only acts on scores more than
50000 apart, which fp32 or bf16 activations of a trained model never reach (the reference comments that it is
there for fp16). The attention weights are not returned (None), as nothing downstream reads them unless
``output_attentions`` is asked for, which `apply_fast_path` leaves to the reference modules.
"""

from __future__ import annotations

import torch
from torch import nn


def bi_attention_forward(
    self: nn.Module,
    vision_features: torch.Tensor,
    text_features: torch.Tensor,
    vision_attention_mask: torch.Tensor | None = None,
    text_attention_mask: torch.Tensor | None = None,
):
    """`GroundingDinoBiMultiHeadAttention.forward` (and MM-GDINO's) via SDPA; bound to a module by `apply_fast_path`.

    Args:
        vision_features: (B, S, d). text_features: (B, T, d).
        vision_attention_mask: (B, S) bool, True at padding pixels. text_attention_mask: (B, T) bool, True at padding.
    Returns:
        ((vision_out (B, S, d), None), (text_out (B, T, d), None)), the reference's structure.
    """
    b, s, _ = vision_features.shape
    t = text_features.shape[1]
    heads, dh = self.num_heads, self.head_dim

    def split(x: torch.Tensor, n: int) -> torch.Tensor:  # (B, n, heads*dh) -> (B, heads, n, dh)
        return x.view(b, n, heads, dh).transpose(1, 2)

    vision_query = split(self.vision_proj(vision_features) * self.scale, s)
    text_key = split(self.text_proj(text_features), t)
    vision_value = split(self.values_vision_proj(vision_features), s)
    text_value = split(self.values_text_proj(text_features), t)

    # SDPA's boolean masks say where to attend; None (no padding) lets it take its fastest kernel.
    text_keep = None if text_attention_mask is None or not text_attention_mask.any() else ~text_attention_mask[:, None, None, :]
    vision_keep = (None if vision_attention_mask is None or not vision_attention_mask.any()
                   else ~vision_attention_mask[:, None, None, :])
    sdpa = nn.functional.scaled_dot_product_attention
    vision_out = sdpa(vision_query, text_key, text_value, attn_mask=text_keep, scale=1.0)
    text_out = sdpa(text_key, vision_query, vision_value, attn_mask=vision_keep, scale=1.0)

    vision_out = self.out_vision_proj(vision_out.transpose(1, 2).reshape(b, s, heads * dh))
    text_out = self.out_text_proj(text_out.transpose(1, 2).reshape(b, t, heads * dh))
    return (vision_out, None), (text_out, None)
