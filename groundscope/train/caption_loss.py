"""LLMDet's two language-modelling losses on a training batch: image captions from the encoder memory, region
phrases from the Hungarian-matched decoder queries.

Which query speaks for a ground-truth box: the one the matcher assigned to it in the *last* decoder layer.
`TrainOutputs.query_features` holds the matching queries only (denoising queries are cut off in
`groundscope.models.staged.fuse_and_decode`), so the matcher's query index is also the row of
``query_features``; the reference implementation indexes the decoder output without removing the denoising
queries first, which picks a denoising query's feature instead.
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
            feats = out.query_features[image, query]
            boxes = out.decoder[-1].boxes[image, query]
            losses["region"] = head.region_loss(head.region_tokens(feats, boxes), sel.phrases)
    return losses
