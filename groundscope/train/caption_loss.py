"""LLMDet's two language-modelling losses on a training batch: image captions from the encoder memory, region
phrases from the Hungarian-matched decoder queries.

Which query speaks for a ground-truth box: the one the matcher assigned to it in the *last* decoder layer.
`TrainOutputs.query_features` holds the matching queries only (denoising queries are cut off in
`groundscope.models.staged.fuse_and_decode`), so the matcher's query index is also the row of
``query_features`` (``region_index: matched``, the default). LLMDet's released training indexes the last
layer's hidden states of ``[denoising; matching]`` queries with the matching-query index
(iSEE-Laboratory/LLMDet mmdet/models/detectors/grounding_dino.py ~L962-966), so a region's feature is the
denoising query at that row whenever the index is below the number of denoising queries, while its box is the
matched query's; ``region_index: official`` reproduces that.

With region cross-attention (``cross_attn_layers``) each region token also attends to its image's memory
around its detached predicted box (grounding_dino.py ~L977-1004).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groundscope.data.caption_clean import clean_region_phrase
from groundscope.models.captioner import CaptionHead
from groundscope.train.forward import TrainOutputs


@dataclass
class RegionSelection:
    """The regions captioned in a batch.

    Attributes:
        image: (R,) long, the batch row of each region.
        query: (R,) long, its matched query.
        target: (R,) long, its ground-truth box index.
        phrases: R cleaned phrases (the LM's targets).
    """

    image: torch.Tensor
    query: torch.Tensor
    target: torch.Tensor
    phrases: list[str]


def select_regions(matches: list[tuple[torch.Tensor, torch.Tensor]], phrases: list[list[str]], max_regions: int,
                   generator: torch.Generator | None = None) -> RegionSelection:
    """Up to `max_regions` matched boxes per image (a random subset when there are more, as LLMDet samples),
    skipping boxes whose phrase cleans to nothing.

    Args:
        matches: per image (query indices (K,), target indices (K,)) from the matcher.
        phrases: per image, the phrase of every target box.
    """
    rows, queries, targets, texts = [], [], [], []
    for b, (q, t) in enumerate(matches):
        order = torch.randperm(len(q), generator=generator) if len(q) > max_regions else torch.arange(len(q))
        taken = 0
        for k in order.tolist():
            if taken >= max_regions:
                break
            try:
                text = clean_region_phrase(phrases[b][int(t[k])])
            except ValueError:
                continue  # an empty phrase says nothing to learn
            rows.append(b)
            queries.append(int(q[k]))
            targets.append(int(t[k]))
            texts.append(text)
            taken += 1
    as_long = lambda xs: torch.as_tensor(xs, dtype=torch.long)  # noqa: E731
    return RegionSelection(as_long(rows), as_long(queries), as_long(targets), texts)


def region_features(out: TrainOutputs, image: torch.Tensor, query: torch.Tensor, rule: str = "matched") -> torch.Tensor:
    """(R, d) features of the regions' queries.

    matched: ``query_features[image, query]``, the matched query's own hidden state. official: row `query` of
    the last layer's ``[denoising; matching]`` hidden states, as LLMDet indexes them (its region features then
    come mostly from denoising queries).
    """
    if rule == "matched":
        return out.query_features[image, query]
    if rule != "official":
        raise ValueError(f"caption.region_index '{rule}': use matched or official")
    dn = getattr(out, "dn_query_features", None)
    full = out.query_features if dn is None else torch.cat([dn, out.query_features], 1)
    return full[image, query]


def caption_losses(head: CaptionHead, out: TrainOutputs, matches: list[tuple[torch.Tensor, torch.Tensor]],
                   phrases: list[list[str]], long_captions: list[str | None],
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """{"image": loss, "region": loss} for the batch; a term is absent when the batch has nothing for it
    (no image with a detailed caption, no matched box with a phrase).

    Args:
        out: the detector's training outputs (memory, query features, last-layer boxes).
        matches: last decoder layer's Hungarian assignment per image.
        phrases: per image, per target box, the text naming it.
        long_captions: per image, the detailed caption or None.
    """
    losses: dict[str, torch.Tensor] = {}
    rows = [b for b, c in enumerate(long_captions) if c]
    if rows and head.config.image_max_tokens > 0:
        idx = torch.as_tensor(rows, device=out.memory.device)
        tokens = head.image_tokens(out.memory[idx], out.memory_valid[idx], out.spatial_shapes)
        losses["image"] = head.image_loss(tokens, [long_captions[b] for b in rows])
    if head.config.max_regions > 0:
        sel = select_regions(matches, phrases, head.config.max_regions, generator)
        if sel.phrases:
            device = out.query_features.device
            image, query = sel.image.to(device), sel.query.to(device)
            feats = region_features(out, image, query, head.config.region_index)
            boxes = out.decoder[-1].boxes[image, query]
            cross = head.cross_attention_input(out.memory[image], out.memory_valid[image].to(device),
                                               out.spatial_shapes, boxes)
            losses["region"] = head.region_loss(head.region_tokens(feats, boxes), sel.phrases, cross)
    return losses
