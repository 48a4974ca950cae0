"""bf16 execution of a loaded detector: bf16 weights and activations for the heavy layers, fp32 where boxes and
scores are made.

Measured at Grounding-DINO-T size (benchmarks/results/speed_levers.md): for the fusion encoder, bf16 *weights*
beat fp32 weights under ``torch.autocast`` by ~1.7x per layer, because autocast re-casts activations around every
matmul while the layers' cost is mostly memory traffic (elementwise passes over 22k x 256-2048 activations), which
bf16 activations halve (for the Swin backbone the two are even). So the backbone and the encoder are converted;
the numerically sensitive parts stay fp32:

- the box heads (``bbox_embed``, shared by the decoder's iterative refinement, and ``encoder_output_bbox_embed``):
  a box is sigmoid(delta + logit(reference)), and bf16's 8-bit mantissa would move boxes by pixels;
- the token-logit heads (``class_embed``, ``encoder_output_class_embed``): the scores are sigmoids of them;
- the two-stage query selection (``enc_output``, ``enc_output_norm``), which `staged.fuse_and_decode_padded`
  feeds with fp32 memory, so proposals and their top-k are computed in fp32;
- reference points and valid ratios (fp32 in `staged`), so deformable sampling locations are fp32 too;
- a cheap part: the input projections (1x1 convolutions + GroupNorm per level, which shape every encoder input).

So bf16 covers the Swin backbone, the text tower, the fusion encoder and the decoder layers. (Keeping the decoder
in fp32 as well did not change the share of a trained model's top-100 that bf16 reproduces: 86% either way on
nano. The text tower went to bf16 in session 8: its features enter the bf16 fusion layers anyway; at
Grounding-DINO-T size it took 0.18 s in fp32 and takes 0.09 s for an 80-name prompt, and nano's share read 94%
with it against 86% without.)

Dtypes meet at module boundaries: each module with weights casts its floating inputs to its weights' dtype (a
forward pre-hook), and the fp32 heads cast theirs up.
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")
# Attribute paths (from the *ForObjectDetection module) of the parts kept in fp32.
FP32_PARTS = (
    "bbox_embed",
    "class_embed",
    "model.decoder.bbox_embed",
    "model.decoder.class_embed",
    "model.encoder_output_bbox_embed",
    "model.encoder_output_class_embed",
    "model.enc_output",
    "model.enc_output_norm",
    "model.reference_points",
    # A cheap part: the input projections (1x1 convs + GroupNorm per level, which shape every encoder input).
    "model.input_proj_vision",
)


class PrecisionError(ValueError):
    """An unknown precision name; the message lists the valid ones."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    return precision


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _cast_hook(dtype: torch.dtype):
    def cast(x):
        if torch.is_tensor(x) and x.is_floating_point() and x.dtype != dtype:
            return x.to(dtype)
        return x

    def hook(module, args, kwargs):
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    return hook


def to_bf16(model: nn.Module) -> nn.Module:
    """Convert a *ForObjectDetection model in place for bf16 inference (see the module docstring); returns it.

    Idempotent. `GroundingDetector` and `staged` need nothing else: valid ratios, reference points and
    proposals are fp32 by construction there.
    """
    if getattr(model, "_groundscope_precision", "fp32") == "bf16":
        return model
    model.to(torch.bfloat16)
    fp32_roots = []
    for path in FP32_PARTS:
        part = _get(model, path)
        if isinstance(part, nn.Module):
            part.float()
            fp32_roots.append(part)
    # Every module with weights of its own casts its inputs to them; the fp32 heads (some, like GDINO's
    # contrastive embedding, have no weights) cast theirs to fp32.
    hooked = set()
    for root in fp32_roots:
        for m in ([root] if not isinstance(root, nn.ModuleList) else list(root)):
            m.register_forward_pre_hook(_cast_hook(torch.float32), with_kwargs=True)
            hooked.add(id(m))
    for m in model.modules():
        if id(m) in hooked:
            continue
        own = [p for p in m.parameters(recurse=False) if p.is_floating_point()]
        if own:
            m.register_forward_pre_hook(_cast_hook(own[0].dtype), with_kwargs=True)
    model._groundscope_precision = "bf16"
    return model
