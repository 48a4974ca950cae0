"""The training forward pass: the staged Grounding DINO forward with gradients, plus the encoder proposals.

`groundscope.models.staged` is the inference forward, module for module the reference's, and it is
differentiable; training calls the same three stages so a trained model is scored by exactly the code that
trained it. One thing the loss needs that inference does not keep: the encoder's top-k proposals *with their
gradient*. staged returns the detached proposals that seed the decoder (as transformers does), which would give
the encoder's class and box heads no signal. mmdetection's Grounding DINO supervises the top-k rows of the
encoder's class scores and its un-detached box predictions; we recover those by recording the outputs of
``encoder_output_class_embed`` and ``encoder_output_bbox_embed`` with forward hooks during the staged call and
taking the same top-k rows staged took (same tensor, same `torch.topk`, so the same rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from groundscope.models import staged
from groundscope.prompts import Prompt
from groundscope.train.denoising import DenoisingQueries
from groundscope.train.losses import Predictions


@dataclass
class TrainOutputs:
    """What the loss needs from one forward pass.

    Attributes:
        decoder: one `Predictions` per decoder layer ((B, Q, L) logits, (B, Q, 4) boxes), last layer last.
        encoder: the top-k encoder proposals with gradients (two-stage models), else None.
        text_mask: (B, T) bool, valid prompt tokens.
        denoising: one `Predictions` per decoder layer for the denoising queries ((B, N, L), (B, N, 4)), or None.
        query_features: (B, Q, d) last decoder layer's hidden states of the matching queries (LLMDet's region
            features; denoising queries excluded, so index q is the q-th query of ``decoder[-1]``).
        memory: (B, S, d) encoder vision memory (LLMDet's image features).
        memory_valid: (B, S) bool, True on real (unpadded) pixels.
        spatial_shapes: [(H_l, W_l)] per memory level.
        dn_query_features: (B, N, d) last decoder layer's hidden states of the denoising queries, or None.
    """

    decoder: list[Predictions]
    encoder: Predictions | None
    text_mask: torch.Tensor
    denoising: list[Predictions] | None = None
    query_features: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    memory_valid: torch.Tensor | None = None
    spatial_shapes: list[tuple[int, int]] | None = None
    dn_query_features: torch.Tensor | None = None


class _Recorder:
    """Forward hooks that keep every output of a module while the context is open."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules
        self.outputs: list[list[torch.Tensor]] = [[] for _ in modules]
        self.handles = []

    def __enter__(self) -> "_Recorder":
        for k, mod in enumerate(self.modules):
            self.handles.append(mod.register_forward_hook(lambda _m, _i, out, k=k: self.outputs[k].append(out)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def encode_prompts(model: nn.Module, prompts: list[Prompt], device: torch.device) -> list[staged.TextFeatures]:
    """Text features per prompt; a prompt repeated in the batch is encoded once."""
    cache: dict[tuple[int, ...], staged.TextFeatures] = {}
    out = []
    for p in prompts:
        key = tuple(p.input_ids[0].tolist())
        if key not in cache:
            cache[key] = staged.encode_text(model, p.input_ids.to(device))
        out.append(cache[key])
    return out


def forward_train(
    model: nn.Module,
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor | None,
    prompts: list[Prompt],
    denoising: DenoisingQueries | None = None,
) -> TrainOutputs:
    """Run the detector on a batch with gradients.

    Args:
        model: a GroundingDinoForObjectDetection / MMGroundingDinoForObjectDetection (in train mode).
        pixel_values: (B, 3, H, W) normalised images (padded).
        pixel_mask: (B, H, W), 1 on real pixels, or None when nothing is padded.
        prompts: B prompts, one per image.
        denoising: contrastive denoising queries for this batch (`groundscope.train.denoising`), or None.
    """
    device = pixel_values.device
    images = staged.encode_images(model, pixel_values, pixel_mask)
    texts = encode_prompts(model, prompts, device)
    m = model.model
    two_stage = bool(model.config.two_stage)
    if not two_stage:
        raw = staged.fuse_and_decode(model, images, texts, denoising)
        encoder = None
    else:
        with _Recorder(m.encoder_output_class_embed, m.encoder_output_bbox_embed) as rec:
            raw = staged.fuse_and_decode(model, images, texts, denoising)
        # The first class-embed call scores every memory token (B, S, L); the second scores the decoder queries.
        # The box head runs on the top-k selected tokens only (B, num_queries, 4): staged skips the other rows.
        enc_class, enc_delta = rec.outputs[0][0], rec.outputs[1][0]
        k = model.config.num_queries
        if enc_class.shape[1] != raw.memory.shape[1] or enc_delta.shape[1] not in (raw.memory.shape[1], k):
            raise RuntimeError(
                "unexpected encoder head calls in the staged forward "
                f"(class {tuple(enc_class.shape)}, box {tuple(enc_delta.shape)}, memory {tuple(raw.memory.shape)}); "
                "groundscope.train.forward must be updated with groundscope.models.staged"
            )
        with torch.no_grad():
            # The anchor of each memory token (fixed grid, inverse-sigmoid, inf where invalid); no parameters.
            _, anchors = m.generate_encoder_output_proposals(
                raw.memory.detach().float(), ~images.mask, images.spatial_shapes_list
            )
        topk = torch.topk(enc_class.max(-1)[0], k, dim=1)[1]
        logits = torch.gather(enc_class, 1, topk[..., None].expand(-1, -1, enc_class.shape[-1]))
        anchors_k = torch.gather(anchors, 1, topk[..., None].expand(-1, -1, 4))
        if enc_delta.shape[1] == raw.memory.shape[1]:
            enc_delta = torch.gather(enc_delta, 1, topk[..., None].expand(-1, -1, 4))
        coords = enc_delta + anchors_k
        encoder = Predictions(logits, coords.sigmoid())
    decoder = [Predictions(raw.all_logits[k], raw.all_boxes[k]) for k in range(raw.all_logits.shape[0])]
    dn = None
    if raw.dn_logits is not None:
        dn = [Predictions(raw.dn_logits[k], raw.dn_boxes[k]) for k in range(raw.dn_logits.shape[0])]
    return TrainOutputs(decoder, encoder, raw.text_mask, dn, raw.query_features, raw.memory, images.mask,
                        images.spatial_shapes_list, raw.dn_query_features)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute layer activations in the backward pass instead of keeping them (MM-GDINO trains with it:
    ``with_cp`` in its Swin, ``num_cp=6`` in its encoder). Returns the number of layers wrapped.

    Wrapped: every fusion-encoder and decoder layer, every BERT layer, and the innermost checkpointable layers of
    a transformers vision backbone (Swin blocks). Each layer's ``forward`` is replaced on the instance, so
    parameter names, state dicts and saved models are unchanged. Recomputation restores the RNG state, so the
    losses equal those without checkpointing; it only runs when gradients are being recorded.
    """
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    m = model.model
    targets = list(m.encoder.layers) + list(m.decoder.layers)
    text_layers = getattr(getattr(m.text_backbone, "encoder", None), "layer", None)
    if text_layers is not None:
        targets += list(text_layers)
    for mod in m.backbone.modules():
        if isinstance(mod, GradientCheckpointingLayer) and not any(
            isinstance(c, GradientCheckpointingLayer) for c in mod.modules() if c is not mod
        ):
            targets.append(mod)
    count = 0
    for mod in targets:
        if getattr(mod, "_groundscope_checkpointed", False):
            continue
        inner = mod.forward

        def forward(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        mod.forward = forward
        mod._groundscope_checkpointed = True
        count += 1
    return count

