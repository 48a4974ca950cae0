"""Raw model outputs -> `Detections`.

The scoring rules:
- detection / grounding with known phrases (mmdetection's positive-map rule, which produced the published
  MM-GDINO and LLMDet COCO/LVIS numbers): a query's score for an entity is the mean of the sigmoid token
  probabilities over the entity's tokens (``score_rule="max"`` takes the max instead). Detections are the top-k
  (query, entity) pairs, so one box may carry two classes.
- grounding without phrases (the reference demo's rule): a query's score is its highest token probability; its
  phrase is the tokens whose probability passes the text threshold.
- referring expressions (the RefCOCO protocol): the entity is the whole expression; the top-k queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from groundscope.detections import Detections
from groundscope.prompts import Prompt


@dataclass
class Candidates:
    """Scored (query, entity) pairs of one image from one prompt, before the final top-k.

    Attributes:
        scores: (K,) float32.  boxes: (K, 4) normalised cxcywh.  entity_ids: (K,) user-facing ids.
        labels / spans: per pair.
    """

    scores: torch.Tensor
    boxes: torch.Tensor
    entity_ids: torch.Tensor
    labels: list[str]
    spans: list[list[tuple[int, int]]] | None


def entity_scores(logits: torch.Tensor, prompt: Prompt, score_rule: str = "mean") -> torch.Tensor:
    """(Q, max_text_len) logits -> (Q, num_entities) scores in [0, 1]."""
    probs = logits[:, : prompt.num_tokens].float().sigmoid()
    if score_rule == "mean":
        return probs @ prompt.positive_map().to(probs.device).T
    if score_rule == "max":
        pm = prompt.positive_map(normalize=False).to(probs.device).bool()
        return torch.stack([probs[:, row].max(-1).values for row in pm], -1)
    raise ValueError(f"score_rule must be 'mean' or 'max', got '{score_rule}'")


def topk_pairs(logits: torch.Tensor, boxes: torch.Tensor, prompt: Prompt, k: int, score_rule: str = "mean") -> Candidates:
    """The k best (query, entity) pairs of one image.

    Args:
        logits: (Q, max_text_len); boxes: (Q, 4) normalised cxcywh.
    """
    scores = entity_scores(logits, prompt, score_rule)  # (Q, C)
    num_entities = scores.shape[1]
    flat = scores.reshape(-1)
    top = torch.topk(flat, min(k, flat.numel()))
    query = top.indices // num_entities
    entity = top.indices % num_entities
    ids = torch.as_tensor(prompt.entity_ids, dtype=torch.long)[entity.cpu()]
    ent = entity.tolist()
    return Candidates(
        scores=top.values.float().cpu(),
        boxes=boxes[query].float().cpu(),
        entity_ids=ids,
        labels=[prompt.labels[e] for e in ent],
        spans=[prompt.entity_spans[e] for e in ent],
    )


def decoded_phrases(
    logits: torch.Tensor, boxes: torch.Tensor, prompt: Prompt, tokenizer, box_threshold: float, text_threshold: float
) -> Candidates:
    """The reference demo's grounding rule, for a caption without given phrases.

    Each query whose best token probability passes `box_threshold` becomes a box; its phrase is the caption
    text of its tokens above `text_threshold` (special tokens and "." excluded), its span those tokens' characters.
    """
    probs = logits[:, : prompt.num_tokens].float().sigmoid()
    content = torch.tensor([b > a and prompt.text[a:b] != "." for a, b in prompt.offsets], device=probs.device)
    probs = probs * content
    best = probs.max(-1).values
    keep = torch.nonzero(best > box_threshold).flatten()
    labels, spans, kept = [], [], []
    for q in keep.tolist():
        toks = torch.nonzero(probs[q] > text_threshold).flatten().tolist()
        if not toks:
            continue
        runs = _merge_runs([prompt.offsets[t] for t in toks], prompt.text)
        labels.append(" ".join(prompt.text[a:b] for a, b in runs))
        spans.append(runs)
        kept.append(q)
    names = list(dict.fromkeys(labels))
    idx = torch.as_tensor(kept, dtype=torch.long)
    return Candidates(
        scores=best[idx].cpu() if kept else torch.zeros(0),
        boxes=boxes[idx].float().cpu() if kept else torch.zeros((0, 4)),
        entity_ids=torch.as_tensor([names.index(lab) for lab in labels], dtype=torch.long),
        labels=labels,
        spans=spans,
    )


def _merge_runs(offsets: list[tuple[int, int]], text: str) -> list[tuple[int, int]]:
    """Join token character ranges separated only by whitespace (sub-words, adjacent words)."""
    runs: list[list[int]] = []
    for a, b in sorted(offsets):
        if runs and not text[runs[-1][1] : a].strip():
            runs[-1][1] = max(runs[-1][1], b)
        else:
            runs.append([a, b])
    return [(a, b) for a, b in runs]


def merge_candidates(items: list[Candidates]) -> Candidates:
    return Candidates(
        scores=torch.cat([c.scores for c in items]),
        boxes=torch.cat([c.boxes for c in items]),
        entity_ids=torch.cat([c.entity_ids for c in items]),
        labels=[x for c in items for x in c.labels],
        spans=[x for c in items for x in (c.spans or [])],
    )


def to_detections(
    cand: Candidates, image_size: tuple[int, int], max_detections: int, box_threshold: float, with_spans: bool
) -> Detections:
    """Final top-k, threshold and box conversion for one image.

    Boxes go from normalised cxcywh to pixel xyxy of the original image (height, width) and are clipped to
    the image, as mmdetection does before the published evaluations.
    """
    order = torch.argsort(cand.scores, descending=True, stable=True)[:max_detections]
    order = order[cand.scores[order] >= box_threshold]
    h, w = image_size
    b = cand.boxes[order].double()
    xyxy = torch.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], -1)
    xyxy = xyxy * torch.tensor([w, h, w, h], dtype=torch.float64)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
    idx = order.tolist()
    return Detections(
        xyxy=xyxy.float().numpy() if len(idx) else np.zeros((0, 4), np.float32),
        scores=cand.scores[order].numpy(),
        class_ids=cand.entity_ids[order].numpy(),
        labels=[cand.labels[i] for i in idx],
        spans=[cand.spans[i] for i in idx] if with_spans else None,
    )
