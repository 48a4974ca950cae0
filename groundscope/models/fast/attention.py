"""Grounding DINO's image-text cross attention with ``scaled_dot_product_attention`` (CPU fast path).

transformers' `GroundingDinoBiMultiHeadAttention` materialises the (B*heads, S, T) score matrix of ~22k image
tokens against the prompt's tokens, subtracts its global max, clamps it to +-50000, masks, and runs two softmaxes
(image->text over T, text->image over S on the transpose), then two bmm's. The same two attentions are two SDPA
calls sharing the projections:

    vision -> text:  sdpa(q = vision_proj(v), k = text_proj(t),   v = values_text_proj(t),   scale = head_dim^-0.5)
    text -> vision:  sdpa(q = text_proj(t),   k = vision_proj(v), v = values_vision_proj(v), scale = head_dim^-0.5)

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

    # The reference scales the query before its bmm; SDPA's `scale` does the same multiply inside the kernel,
    # saving a pass over the (B, S, 1024) projection.
    vision_query = split(self.vision_proj(vision_features), s)
    text_key = split(self.text_proj(text_features), t)
    vision_value = split(self.values_vision_proj(vision_features), s)
    text_value = split(self.values_text_proj(text_features), t)

    # SDPA's boolean masks say where to attend; None (no padding) lets it take its fastest kernel.
    text_keep = None if text_attention_mask is None or not text_attention_mask.any() else ~text_attention_mask[:, None, None, :]
    vision_keep = (None if vision_attention_mask is None or not vision_attention_mask.any()
                   else ~vision_attention_mask[:, None, None, :])
    sdpa = nn.functional.scaled_dot_product_attention
    vision_out = sdpa(vision_query, text_key, text_value, attn_mask=text_keep, scale=self.scale)
    text_out = sdpa(text_key, vision_query, vision_value, attn_mask=vision_keep, scale=self.scale)

    vision_out = self.out_vision_proj(vision_out.transpose(1, 2).reshape(b, s, heads * dh))
    text_out = self.out_text_proj(text_out.transpose(1, 2).reshape(b, t, heads * dh))
    return (vision_out, None), (text_out, None)


# Tokens per FFN chunk: the (chunk, 2048) hidden activation (8 MB in fp32) stays in cache between fc1, the
# activation and fc2, instead of three trips through memory for the whole (22k, 2048) tensor.
FFN_CHUNK = 2048


def _onednn_activation(activation: nn.Module) -> tuple[str, str] | None:
    """oneDNN's (post-op, algorithm) for `activation`, or None when it has none (`_linear_pointwise`'s names)."""
    if isinstance(activation, nn.ReLU):
        return "relu", ""
    if isinstance(activation, nn.GELU) and activation.approximate == "none":
        return "gelu", "none"
    if type(activation).__name__ == "GELUActivation" and getattr(activation, "act", None) is nn.functional.gelu:
        return "gelu", "none"  # transformers' ACT2FN["gelu"]: the exact (erf) GELU
    return None


_fused_fc1_works: dict[str, bool] = {}


def _fused_fc1(x: torch.Tensor, fc1: nn.Module, activation: nn.Module) -> torch.Tensor | None:
    """activation(fc1(x)) as one oneDNN matmul with the activation fused into it, for bf16 on the CPU; None where
    that does not apply (other dtypes keep the reference's kernels) or the op is missing from this torch build.

    The fused call skips a pass over the (chunk, 2048) hidden activation: at Grounding-DINO-T size the encoder
    FFN takes 27 ms instead of 40 ms at 2 threads (`python benchmarks/bench_ffn.py`)."""
    post = _onednn_activation(activation)
    if (post is None or x.dtype != torch.bfloat16 or x.device.type != "cpu" or fc1.weight.dtype != torch.bfloat16
            or _fused_fc1_works.get("ok") is False):
        return None
    try:
        out = torch.ops.mkldnn._linear_pointwise(x, fc1.weight, fc1.bias, post[0], [], post[1])
    except (AttributeError, RuntimeError):  # no oneDNN in this build, or it refuses these operands
        _fused_fc1_works["ok"] = False
        return None
    _fused_fc1_works["ok"] = True
    return out


def chunked_ffn(x: torch.Tensor, fc1: nn.Module, activation: nn.Module, fc2: nn.Module) -> torch.Tensor:
    """fc2(activation(fc1(x))) over (B, N, d) in chunks of FFN_CHUNK tokens; the same numbers as one call
    (in bf16, fc1 and the activation run as one fused oneDNN call: `_fused_fc1`).

    Measured at 22k tokens, d 256 -> 2048 -> 256, bf16, 1 thread: 0.060 s against 0.141 s unchunked.
    """
    b, n, _ = x.shape
    out = x.new_empty((b, n, fc2.out_features))
    relu = isinstance(activation, nn.ReLU)
    for start in range(0, n, FFN_CHUNK):
        chunk = x[:, start : start + FFN_CHUNK]
        hidden = _fused_fc1(chunk, fc1, activation)
        if hidden is None:
            hidden = fc1(chunk)
            hidden = torch.relu_(hidden) if relu else activation(hidden)  # in place: no second (chunk, 2048) buffer
        out[:, start : start + FFN_CHUNK] = fc2(hidden)
    return out


def deformable_layer_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_embeddings: torch.Tensor | None = None,
    reference_points: torch.Tensor | None = None,
    spatial_shapes: torch.Tensor | None = None,
    spatial_shapes_list: list[tuple[int, int]] | None = None,
    level_start_index: torch.Tensor | None = None,
    output_attentions: bool = False,
):
    """`*DeformableLayer.forward` (the encoder's deformable self-attention + FFN) at inference, with the FFN
    chunked (`chunked_ffn`). Shapes: hidden_states (B, S, d); returns ((B, S, d), attention weights or None)."""
    residual = hidden_states
    hidden_states, attn_weights = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        encoder_hidden_states=hidden_states,
        encoder_attention_mask=attention_mask,
        position_embeddings=position_embeddings,
        reference_points=reference_points,
        spatial_shapes=spatial_shapes,
        spatial_shapes_list=spatial_shapes_list,
        level_start_index=level_start_index,
        output_attentions=output_attentions,
    )
    hidden_states = self.self_attn_layer_norm(residual + hidden_states)
    hidden_states = hidden_states + chunked_ffn(hidden_states, self.fc1, self.activation_fn, self.fc2)
    return self.final_layer_norm(hidden_states), attn_weights
