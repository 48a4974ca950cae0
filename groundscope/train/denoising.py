"""Contrastive denoising queries (DINO's CDN) for a grounding detector.

During training only, noised copies of the ground-truth boxes enter the decoder as extra queries, in front of
the matching queries. Each query's *content* says which entity it is (possibly a wrong one: label noise) and its
*reference box* says where (a jittered ground-truth box: box noise). The decoder must undo the noise, which
gives every decoder layer a direct, assignment-free training signal from the first step on; DN-DETR and DINO
report that this is what makes DETR-style detectors converge several times faster.

Layout (DINO's dynamic groups, as in MM-GDINO's ``CdnQueryGenerator`` with ``num_dn_queries=100``):

* ``G = max(1, num_queries // max_gt)`` groups, ``max_gt`` = most boxes of one image in the batch; each group
  holds ``max_gt`` *positive* queries (box noise below `box_noise` x half the box size: they must reconstruct
  their box and entity) followed by ``max_gt`` *negative* queries (noise between 1x and 2x that: they must say
  "no object"). Images with fewer boxes leave padding slots: no loss reads them, and a slot that is padding in
  every image of the batch is seen by no other query.
* Attention mask over the decoder's self-attention: the matching queries never see a denoising query (so the
  matching part computes exactly what it computes without them, which is what inference runs), and the groups
  never see each other; a denoising query sees its own group and the matching queries.

The label embedding (groundscope's own form, not MM-GDINO's). DINO looks a query's content up in a learned
class-embedding table, and so does MM-GDINO for grounding: mmdetection's ``CdnQueryGenerator`` holds
``nn.Embedding(256, 256)`` indexed by the entity's position in the prompt, and its label noise replaces an id by a
random one in [0, 256), an entity the prompt may not even have (official: mmdet/models/layers/transformer/
dino_layers.py ~L185, ~L337-340; ``num_classes=256`` in configs/mm_grounding_dino/*). Here the content is built
from the text instead: the mean of the entity's token features in the fusion encoder's text output (the same
features the contrastive head scores against), so no parameter is added and a trained model stays a plain
transformers checkpoint (transformers' GroundingDino / MMGroundingDino classes have no such table to save it in).
Label noise swaps, with probability ``label_noise / 2`` (DINO's rule for a noise scale), the entity for another
entity of the same prompt (a negative class name included, when the prompt holds one); the target stays the true
entity. The docs' fidelity table lists this departure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from groundscope.prompts import Prompt
from groundscope.box_ops import cxcywh_to_xyxy, xyxy_to_cxcywh
from groundscope.train.targets import Target


@dataclass
class DenoisingQueries:
    """What the decoder needs to run the denoising queries of a batch (see `staged.fuse_and_decode`).

    Attributes:
        boxes: (B, N, 4) noised reference boxes, normalised cxcywh in (0, 1).
        entity_weights: (B, N, T) rows that average the entity's text tokens (zero rows at padding slots);
            T = the longest prompt of the batch.
        attn_mask: (N + Q, N + Q) bool, True where a query (row) must NOT attend to a key (column);
            the N denoising queries come first, then the Q matching queries.
    """

    boxes: torch.Tensor
    entity_weights: torch.Tensor
    attn_mask: torch.Tensor

    @property
    def num_queries(self) -> int:
        return int(self.boxes.shape[1])


@dataclass
class DenoisingTargets:
    """What the loss needs: which denoising slot is what.

    Attributes:
        valid: (B, N) bool, real slots (False at padding: no loss).
        positive: (B, N) bool, slots that must reconstruct a box.
        target_index: (B, N) long, index into the image's `Target` of the box a slot was made from (-1: padding).
        num_groups: G.
    """

    valid: torch.Tensor
    positive: torch.Tensor
    target_index: torch.Tensor
    num_groups: int


def build_denoising(
    targets: list[Target],
    prompts: list[Prompt],
    num_matching: int,
    *,
    num_queries: int = 100,
    label_noise: float = 0.5,
    box_noise: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    max_gt: int | None = None,
) -> tuple[DenoisingQueries, DenoisingTargets] | None:
    """Noised queries and their targets for one batch; None when no image has a box (`max_gt` 0).

    Args:
        targets: B targets (boxes normalised cxcywh, entity index per box).
        prompts: the B prompts (their entities are the label-noise candidates).
        num_matching: the model's matching queries Q (for the attention mask).
        num_queries: denoising query budget (DINO / MM-GDINO: 100); groups = budget // most boxes per image.
        label_noise: DINO's label noise scale; an entity is swapped with probability label_noise / 2.
        box_noise: DINO's box noise scale (lambda): positives move by < lambda x half the box size, negatives
            by lambda..2 lambda x that.
        generator: torch RNG (default: the global one), or one per image: then an image's noise does not depend
            on the other images of the batch, so a data-parallel shard draws what the whole batch would.
        max_gt: most boxes of one image in the whole batch when `targets` is one process's shard of it (the
            maximum over the processes): the group layout and the attention mask are then the whole batch's.
            Default: this batch's.
    """
    batch = len(targets)
    global_layout = max_gt is not None
    if max_gt is None:
        max_gt = max((len(t) for t in targets), default=0)
    if max_gt == 0:
        return None
    if isinstance(generator, Sequence) and len(generator) != batch:
        raise ValueError(f"{len(generator)} generators for a batch of {batch} images; give one per image")
    groups = max(1, num_queries // max_gt)
    per_group = 2 * max_gt
    n = groups * per_group
    t_max = max(p.num_tokens for p in prompts)

    boxes = torch.full((batch, n, 4), 0.5)
    weights = torch.zeros((batch, n, t_max))
    valid = torch.zeros((batch, n), dtype=torch.bool)
    positive = torch.zeros((batch, n), dtype=torch.bool)
    index = torch.full((batch, n), -1, dtype=torch.long)
    for b, (tgt, prompt) in enumerate(zip(targets, prompts)):
        k = len(tgt)
        if k == 0:
            continue
        gen = generator[b] if isinstance(generator, Sequence) else generator
        entity_maps = prompt.positive_map(t_max)  # (E, T), rows average an entity's tokens
        num_entities = entity_maps.shape[0]
        for g in range(groups):
            for neg in (0, 1):
                start = g * per_group + neg * max_gt
                slots = torch.arange(start, start + k)
                entity = tgt.entity.clone()
                if label_noise > 0 and num_entities > 1:
                    flip = torch.rand(k, generator=gen) < label_noise * 0.5
                    entity[flip] = torch.randint(0, num_entities, (int(flip.sum()),), generator=gen)
                boxes[b, slots] = noise_boxes(tgt.boxes.float(), box_noise, negative=bool(neg), generator=gen)
                weights[b, slots] = entity_maps[entity]
                valid[b, slots] = True
                positive[b, slots] = not neg
                index[b, slots] = torch.arange(k)
    # A slot is hidden from the others when it is padding in every image of the batch. The whole batch of a
    # given `max_gt` has an image that fills every slot, so then nothing is hidden, whatever this shard holds.
    mask = denoising_attn_mask(n, num_matching, groups, torch.ones_like(valid) if global_layout else valid)
    return DenoisingQueries(boxes, weights, mask), DenoisingTargets(valid, positive, index, groups)


def noise_boxes(boxes: torch.Tensor, scale: float, *, negative: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """DINO's box noise on (K, 4) normalised cxcywh boxes -> (K, 4) cxcywh, clamped inside the image.

    Each corner moves by sign * r * scale * (w/2, h/2), r ~ U[0, 1) for positives and U[1, 2) for negatives.
    """
    if scale <= 0:
        return boxes.clone()
    xyxy = cxcywh_to_xyxy(boxes)
    half = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:] / 2], dim=1)
    sign = torch.randint(0, 2, boxes.shape, generator=generator).float() * 2 - 1
    part = torch.rand(boxes.shape, generator=generator) + (1.0 if negative else 0.0)
    noised = (xyxy + sign * part * half * scale).clamp(0.0, 1.0)
    # a box squeezed to nothing by the clamp keeps a sliver, so its inverse sigmoid stays finite
    x0, y0 = noised[:, 0], noised[:, 1]
    x1, y1 = torch.maximum(noised[:, 2], x0 + 1e-3), torch.maximum(noised[:, 3], y0 + 1e-3)
    return xyxy_to_cxcywh(torch.stack([x0, y0, x1, y1], 1)).clamp(1e-4, 1 - 1e-4)


def denoising_attn_mask(n: int, num_matching: int, groups: int, valid: torch.Tensor) -> torch.Tensor:
    """(n + Q, n + Q) bool, True = blocked. Matching queries see only matching queries; each denoising group
    sees itself and the matching queries; padding slots (invalid in every image) are seen by no other query.

    A slot that is padding in one image but real in another stays visible inside its group (the mask is shared
    by the batch); its content is a zero vector there, as in DINO's padded groups.
    """
    total = n + num_matching
    mask = torch.zeros((total, total), dtype=torch.bool)
    mask[n:, :n] = True  # matching queries never see denoising ones
    per_group = n // groups
    for g in range(groups):
        lo, hi = g * per_group, (g + 1) * per_group
        mask[lo:hi, :lo] = True
        mask[lo:hi, hi:n] = True
    pad = ~valid.any(0)  # (n,) padding in every image
    if pad.any():
        cols = torch.nonzero(pad).flatten()
        mask[:, cols] = True
        mask[cols, cols] = False  # a row must attend to something: itself
    return mask
