"""The Grounding DINO forward pass, split into its three stages.

transformers' ``GroundingDinoModel.forward`` runs image backbone, text backbone, fusion encoder and decoder in one
call. For a vocabulary split into several prompt chunks that would run the (expensive) Swin backbone once per
chunk and re-encode every chunk's text for every image. Here the same modules run in three stages:

    encode_images(pixel_values)  -> ImageFeatures   once per image
    encode_text(input_ids)       -> TextFeatures    once per prompt chunk (cached by the caller)
    fuse_and_decode(img, text)   -> RawOutputs      once per (image, chunk) pair, batched

The arithmetic is the reference's, module for module (same submodules, same order), so the outputs equal
``model(pixel_values, input_ids)`` to float precision; tests/test_parity.py holds us to that. Works for both
``GroundingDinoForObjectDetection`` and ``MMGroundingDinoForObjectDetection`` (they share this forward).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.grounding_dino.modeling_grounding_dino import (
    generate_masks_with_special_tokens_and_transfer_map,
)


@dataclass
class ImageFeatures:
    """Flattened multi-scale image features of B images of one common size (no padding).

    Attributes:
        source: (B, S, d) projected features of all levels, S = sum of H_l * W_l.
        mask: (B, S) bool, True where the pixel is *valid* (the reference's ``mask_flatten``).
        pos: (B, S, d) sine position + level embeddings.
        spatial_shapes_list: [(H_l, W_l)] per level.
        valid_ratios: (B, L, 2).
    """

    source: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    spatial_shapes_list: list[tuple[int, int]]
    valid_ratios: torch.Tensor

    def select(self, index: torch.Tensor | list[int]) -> "ImageFeatures":
        """Rows `index` of the batch (repeats allowed: one row per (image, chunk) pair)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.source.device)
        return ImageFeatures(
            self.source[idx], self.mask[idx], self.pos[idx], self.spatial_shapes_list, self.valid_ratios[idx]
        )


@dataclass
class TextFeatures:
    """One prompt's projected text features (unpadded).

    Attributes:
        features: (1, T, d) text backbone output after ``text_projection``.
        self_attention_mask: (1, T, T) bool, the phrase-block mask made from the *unpadded* ids.
        position_ids: (1, T) position ids restarting after each delimiter.
        input_ids: (1, T).
    """

    features: torch.Tensor
    self_attention_mask: torch.Tensor
    position_ids: torch.Tensor
    input_ids: torch.Tensor

    @property
    def length(self) -> int:
        return self.features.shape[1]


@dataclass
class RawOutputs:
    """Outputs of the fused encoder + decoder for a batch of (image, prompt) pairs.

    Attributes:
        logits: (B, Q, max_text_len) final-layer token logits (-inf beyond each prompt / at padding).
        boxes: (B, Q, 4) final-layer boxes, normalised cxcywh.
        text_mask: (B, T) bool, valid text tokens (T = longest prompt in the batch).
        all_logits: (num_decoder_layers, B, Q, max_text_len), for auxiliary losses.
        all_boxes: (num_decoder_layers, B, Q, 4).
        enc_logits: (B, Q, max_text_len) logits of the selected encoder proposals (two-stage).
        enc_boxes: (B, Q, 4) the selected proposals, normalised cxcywh.
        query_features: (B, Q, d) final decoder hidden states (LLMDet's region features).
        memory: (B, S, d) encoder vision memory.
        memory_text: (B, T, d) encoder text memory.
        dn_logits: (num_decoder_layers, B, N, max_text_len) logits of the N denoising queries (training only).
        dn_boxes: (num_decoder_layers, B, N, 4) their boxes.
        dn_query_features: (B, N, d) final decoder hidden states of the denoising queries (LLMDet's
            `region_index: official` reads them).
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    text_mask: torch.Tensor
    all_logits: torch.Tensor
    all_boxes: torch.Tensor
    enc_logits: torch.Tensor | None
    enc_boxes: torch.Tensor | None
    query_features: torch.Tensor
    memory: torch.Tensor
    memory_text: torch.Tensor | None = None
    dn_logits: torch.Tensor | None = None
    dn_boxes: torch.Tensor | None = None
    dn_query_features: torch.Tensor | None = None


def encode_images(detector: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> ImageFeatures:
    """Backbone + input projections + flattening for (B, 3, H, W) images."""
    m = detector.model
    cfg = detector.config
    batch_size, _, height, width = pixel_values.shape
    if pixel_mask is None:
        pixel_mask = torch.ones((batch_size, height, width), dtype=torch.long, device=pixel_values.device)
    vision_features, pos_list = m.backbone(pixel_values, pixel_mask)
    feature_maps, masks = [], []
    for level, (source, mask) in enumerate(vision_features):
        feature_maps.append(m.input_proj_vision[level](source))
        masks.append(mask)
    # Extra lowest-resolution levels: stride-2 3x3 convolutions on the last backbone stage.
    for level in range(len(feature_maps), cfg.num_feature_levels):
        if level == len(vision_features):
            source = m.input_proj_vision[level](vision_features[-1][0])
        else:
            source = m.input_proj_vision[level](feature_maps[-1])
        mask = nn.functional.interpolate(pixel_mask[None].float(), size=source.shape[-2:]).to(torch.bool)[0]
        pos_list.append(m.backbone.position_embedding(source, mask).to(source.dtype))
        feature_maps.append(source)
        masks.append(mask)

    sources, flat_masks, pos_embeds, shapes = [], [], [], []
    for level, (source, mask, pos) in enumerate(zip(feature_maps, masks, pos_list)):
        shapes.append((source.shape[2], source.shape[3]))
        sources.append(source.flatten(2).transpose(1, 2))
        flat_masks.append(mask.flatten(1))
        pos_embeds.append(pos.flatten(2).transpose(1, 2) + m.level_embed[level].view(1, 1, -1))
    source_flatten = torch.cat(sources, 1)
    # fp32 under precision="bf16": the valid ratios scale every reference point, and so every deformable
    # sampling location, which bf16 would move by up to half a pixel on the largest level.
    ratio_dtype = torch.float32 if _mixed_bf16(detector) else source_flatten.dtype
    valid_ratios = torch.stack([m.get_valid_ratio(mk, dtype=ratio_dtype) for mk in masks], 1)
    return ImageFeatures(source_flatten, torch.cat(flat_masks, 1), torch.cat(pos_embeds, 1), shapes, valid_ratios)


def encode_text(detector: nn.Module, input_ids: torch.Tensor) -> TextFeatures:
    """Text backbone (BERT with the phrase-block attention mask) + projection for one (1, T) prompt."""
    m = detector.model
    if input_ids.shape[1] > detector.config.max_text_len:
        raise ValueError(
            f"prompt has {input_ids.shape[1]} tokens, more than the model's max_text_len "
            f"{detector.config.max_text_len}; split it into chunks (groundscope.prompts.chunk_classes)"
        )
    self_mask, position_ids = generate_masks_with_special_tokens_and_transfer_map(input_ids, m.special_tokens)
    token_type_ids = torch.zeros_like(input_ids)
    out = m.text_backbone(input_ids, self_mask[:, None, :, :], token_type_ids, position_ids, return_dict=True)
    features = m.text_projection(out.last_hidden_state)
    return TextFeatures(features, self_mask, position_ids, input_ids)


def pad_text(texts: list[TextFeatures]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack prompts of different lengths.

    Returns features (B, T, d), token mask (B, T) bool (True = real token), self-attention mask (B, T, T) and
    position ids (B, T). Padding tokens attend only to themselves, so no softmax row is empty and no real
    token sees padding: a padded prompt gives the same outputs as the prompt alone.
    """
    t_max = max(t.length for t in texts)
    b = len(texts)
    ref = texts[0].features
    feats = ref.new_zeros((b, t_max, ref.shape[-1]))
    token_mask = torch.zeros((b, t_max), dtype=torch.bool, device=ref.device)
    self_mask = torch.eye(t_max, dtype=torch.bool, device=ref.device).repeat(b, 1, 1)
    pos = torch.zeros((b, t_max), dtype=torch.long, device=ref.device)
    for i, t in enumerate(texts):
        n = t.length
        feats[i, :n] = t.features[0]
        token_mask[i, :n] = True
        self_mask[i, :n, :n] = t.self_attention_mask[0]
        pos[i, :n] = t.position_ids[0]
    return feats, token_mask, self_mask, pos


def fuse_and_decode(
    detector: nn.Module, images: ImageFeatures, texts: list[TextFeatures], denoising=None
) -> RawOutputs:
    """Fusion encoder, language-guided query selection, decoder and heads for B (image, prompt) pairs.

    `images` must already hold one row per pair (see `ImageFeatures.select`). `denoising` (training only, a
    `groundscope.train.denoising.DenoisingQueries`) puts N denoising queries in front of the matching ones,
    with the attention mask that hides them from the matching queries; their outputs come back separately in
    ``dn_logits`` / ``dn_boxes`` and every other output is that of the matching queries alone.
    """
    batch_size = images.source.shape[0]
    if len(texts) != batch_size:
        raise ValueError(f"{batch_size} image rows but {len(texts)} prompts")
    text_features, text_mask, text_self_mask, position_ids = pad_text(texts)
    return fuse_and_decode_padded(detector, images, text_features, text_mask, text_self_mask, position_ids, denoising)


def fuse_and_decode_padded(
    detector: nn.Module,
    images: ImageFeatures,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    text_self_mask: torch.Tensor,
    position_ids: torch.Tensor,
    denoising=None,
) -> RawOutputs:
    """`fuse_and_decode` on text already padded to one length (the form `pad_text` returns).

    Args:
        text_features: (B, T, d) projected text features.
        text_mask: (B, T) bool, True for real tokens.
        text_self_mask: (B, T, T) bool, True where token i may attend to token j.
        position_ids: (B, T) long.
    The ONNX export traces this function, so it holds no Python branching on tensor values.
    """
    m = detector.model
    cfg = detector.config
    batch_size = images.source.shape[0]
    device = images.source.device
    spatial_shapes = spatial_shapes_tensor(images.spatial_shapes_list, device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))

    enc = m.encoder(
        vision_features=images.source,
        vision_attention_mask=~images.mask,
        vision_position_embedding=images.pos,
        spatial_shapes=spatial_shapes,
        spatial_shapes_list=images.spatial_shapes_list,
        level_start_index=level_start_index,
        valid_ratios=images.valid_ratios,
        text_features=text_features,
        text_attention_mask=~text_mask,
        text_position_embedding=None,
        text_self_attention_masks=~text_self_mask,
        text_position_ids=position_ids,
        return_dict=True,
    )
    memory, memory_text = enc.last_hidden_state_vision, enc.last_hidden_state_text

    query_embeds = m.query_position_embeddings.weight if (cfg.embedding_init_target or cfg.two_stage) else None
    enc_logits = enc_boxes = None
    if cfg.two_stage:
        # Language-guided query selection: the num_queries memory tokens most similar to any text token.
        # Under precision="bf16" the proposals and their scores are fp32 (those heads stay fp32): a bf16 memory
        # would put the proposal grid and the top-k selection on bf16's coarse grid.
        object_query, output_proposals = m.generate_encoder_output_proposals(
            memory.float() if _mixed_bf16(detector) else memory, ~images.mask, images.spatial_shapes_list
        )
        enc_class = m.encoder_output_class_embed(object_query, memory_text, text_mask)
        # An extreme image (20 x 8000 px resizes to a strip a few tokens high) can hold fewer encoder tokens than
        # the model has queries; the reference's topk then fails ("selected index k out of range"). Such an
        # image runs with one query per token instead. A traced export sees a constant here (num_queries).
        num_queries = min(cfg.num_queries, enc_class.shape[1])
        topk = torch.topk(enc_class.max(-1)[0], num_queries, dim=1)[1]
        # The box MLP is row-wise, so it runs on the num_queries selected tokens only (not all ~22k of an
        # 800x1333 image, as the reference does before gathering): the same boxes for 4% of the work.
        selected = torch.gather(object_query, 1, topk.unsqueeze(-1).repeat(1, 1, object_query.shape[-1]))
        enc_coords = m.encoder_output_bbox_embed(selected) + torch.gather(
            output_proposals, 1, topk.unsqueeze(-1).repeat(1, 1, 4))
        reference_points = enc_coords.detach().sigmoid()
        if query_embeds is not None:
            target = query_embeds[:num_queries].unsqueeze(0).repeat(batch_size, 1, 1)
        else:
            target = torch.gather(object_query, 1, topk.unsqueeze(-1).repeat(1, 1, cfg.d_model)).detach()
        enc_boxes = reference_points
        enc_logits = m.encoder_output_class_embed(target, text_features, text_mask)
    else:
        num_queries = cfg.num_queries
        target = query_embeds.unsqueeze(0).repeat(batch_size, 1, 1)
        reference_points = m.reference_points.weight.unsqueeze(0).repeat(batch_size, 1, 1).sigmoid()
    num_dn = 0
    self_attn_mask = None
    if denoising is not None:
        num_dn = denoising.num_queries
        # Label embedding of a denoising query: the mean of its entity's tokens in the fused text memory.
        weights = denoising.entity_weights[:, :, : memory_text.shape[1]].to(device=device, dtype=memory_text.dtype)
        target = torch.cat([torch.bmm(weights, memory_text), target], 1)
        reference_points = torch.cat([denoising.boxes.to(device=device, dtype=reference_points.dtype),
                                      reference_points], 1)
        blocked = denoising.attn_mask.to(device)
        self_attn_mask = torch.zeros(blocked.shape, dtype=target.dtype, device=device)
        self_attn_mask = self_attn_mask.masked_fill(blocked, torch.finfo(target.dtype).min)[None, None]
    init_reference = reference_points

    # A Python int (not reference_points.shape[1]), so an exporter's tracer sees a constant, not a tensor.
    with _decoder_query_count(m.decoder, num_queries + num_dn):
        dec = m.decoder(
            inputs_embeds=target,
            vision_encoder_hidden_states=memory,
            vision_encoder_attention_mask=images.mask,
            text_encoder_hidden_states=memory_text,
            text_encoder_attention_mask=~text_mask,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            spatial_shapes_list=images.spatial_shapes_list,
            level_start_index=level_start_index,
            valid_ratios=images.valid_ratios,
            self_attn_mask=self_attn_mask,
            return_dict=True,
        )
    hidden = dec.intermediate_hidden_states  # (B, layers, Q, d)
    refs = dec.intermediate_reference_points  # (B, layers, Q, 4)
    all_logits, all_boxes = [], []
    for level in range(hidden.shape[1]):
        reference = init_reference if level == 0 else refs[:, level - 1]
        reference = torch.special.logit(reference, eps=1e-5)
        all_logits.append(detector.class_embed[level](hidden[:, level], memory_text, text_mask))
        delta = detector.bbox_embed[level](hidden[:, level])
        if reference.shape[-1] == 4:
            coords = delta + reference
        else:
            delta[..., :2] += reference
            coords = delta
        all_boxes.append(coords.sigmoid())
    all_logits_t, all_boxes_t = torch.stack(all_logits), torch.stack(all_boxes)
    dn_logits = dn_boxes = None
    if num_dn:
        dn_logits, dn_boxes = all_logits_t[:, :, :num_dn], all_boxes_t[:, :, :num_dn]
        all_logits_t, all_boxes_t = all_logits_t[:, :, num_dn:], all_boxes_t[:, :, num_dn:]
    return RawOutputs(
        logits=all_logits_t[-1],
        boxes=all_boxes_t[-1],
        text_mask=text_mask,
        all_logits=all_logits_t,
        all_boxes=all_boxes_t,
        enc_logits=enc_logits,
        enc_boxes=enc_boxes,
        query_features=hidden[:, -1, num_dn:],
        memory=memory,
        memory_text=memory_text,
        dn_logits=dn_logits,
        dn_boxes=dn_boxes,
        dn_query_features=hidden[:, -1, :num_dn] if num_dn else None,
    )


def _mixed_bf16(detector: nn.Module) -> bool:
    """Whether `detector` runs groundscope's bf16 precision (groundscope.models.fast.precision.to_bf16)."""
    return getattr(detector, "_groundscope_precision", "fp32") == "bf16"


def spatial_shapes_tensor(shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(L, 2) long tensor of the levels' (H_l, W_l).

    Under the TorchScript tracer (the ONNX export) the sizes are traced 0-d tensors; stacking them keeps the
    graph's shapes symbolic, where ``torch.as_tensor`` would freeze the example image's sizes into it.
    """
    if torch.jit.is_tracing():
        rows = [torch.stack([v if torch.is_tensor(v) else torch.tensor(v) for v in hw]) for hw in shapes]
        return torch.stack(rows).to(device=device, dtype=torch.long)
    return torch.as_tensor(shapes, dtype=torch.long, device=device)


@contextmanager
def _decoder_query_count(decoder: nn.Module, count: int):
    """transformers' decoder sizes its text attention mask by ``config.num_queries``; with denoising queries
    in front the decoder runs more queries than that, so the count is raised for the call and then restored."""
    cfg = decoder.config
    saved = cfg.num_queries
    cfg.num_queries = count
    try:
        yield
    finally:
        cfg.num_queries = saved
