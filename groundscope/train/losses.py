"""The grounding loss of Grounding DINO / MM-Grounding-DINO.

For one set of predictions (a decoder layer, or the encoder's selected proposals):

1. Hungarian-match queries to target boxes (`HungarianMatcher`).
2. Token alignment: a sigmoid focal loss (alpha 0.25, gamma 2) on every (query, valid text token) logit. The
   target of a matched query is the binary token map of its box's entity (the tokens of "remote control", say);
   every other query's target is all zeros. Tokens beyond the prompt (padding) are left out, as mmdetection
   does, because their logits are -inf by construction.
3. Boxes: L1 on normalised cxcywh and 1 - GIoU, on matched pairs only.

Each term is summed and divided by the number of target boxes in the batch (DETR's normalisation, so an image
with many objects weighs more than one with few). Weights: classification 1, L1 5, GIoU 2 (mmdetection's
MM-GDINO configs). The same loss is applied to every decoder layer (auxiliary losses, each with its own
matching) and to the encoder's top-k proposals (two-stage), and the total is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from groundscope.box_ops import cxcywh_to_xyxy, paired_generalized_box_iou
from groundscope.train.denoising import DenoisingTargets
from groundscope.train.matcher import HungarianMatcher
from groundscope.train.targets import Target


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Elementwise focal loss (Lin et al. 2017) of any-shaped logits and {0, 1} targets, not reduced.

    FL = alpha_t * (1 - p_t)^gamma * BCE(logit, target), p_t the probability of the true label; alpha_t is
    alpha for positives and 1 - alpha for negatives (alpha < 0 disables the weighting).
    """
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def count_normalizer(count: float) -> float:
    """DETR's divisor of a summed loss: the number of target boxes in the batch, at least 1."""
    return max(float(count), 1.0)


@dataclass
class LossWeights:
    """Weights of the three terms in the total (the matcher has its own)."""

    cls: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0


@dataclass
class Predictions:
    """One set of predictions to supervise.

    Attributes:
        logits: (B, Q, L) token logits, L = max_text_len (-inf beyond each prompt).
        boxes: (B, Q, 4) normalised cxcywh.
    """

    logits: torch.Tensor
    boxes: torch.Tensor


class GroundingLoss:
    """Matching + focal token loss + L1 + GIoU over the decoder layers and the encoder proposals.

    Args:
        matcher: the Hungarian matcher.
        weights: weights of cls / bbox / giou in the total.
        alpha, gamma: focal loss parameters.
        normalizer: maps the batch's count of target boxes (or denoising positives) to the divisor of the summed
            terms; default max(count, 1). Data-parallel training passes
            `groundscope.train.distributed.loss_normalizer` (the global count over the number of processes).
    """

    def __init__(
        self,
        matcher: HungarianMatcher | None = None,
        weights: LossWeights | None = None,
        alpha: float = 0.25,
        gamma: float = 2.0,
        normalizer: Callable[[float], float] | None = None,
    ):
        self.matcher = matcher or HungarianMatcher()
        self.weights = weights or LossWeights()
        self.alpha = alpha
        self.gamma = gamma
        self.normalizer = normalizer or count_normalizer

    def single(
        self, pred: Predictions, text_mask: torch.Tensor, targets: list[Target], num_boxes: float
    ) -> dict[str, torch.Tensor]:
        """Unweighted cls / bbox / giou losses of one prediction set.

        Args:
            pred: (B, Q, L) logits and (B, Q, 4) boxes.
            text_mask: (B, T) bool, valid prompt tokens (T <= L).
            targets: B targets with (N_b, L) token maps.
            num_boxes: the normaliser (total target boxes in the batch, at least 1).
        """
        return self.terms(pred, text_mask, [t.to(pred.logits.device) for t in targets],
                          self.match(pred, targets), num_boxes)

    def match(self, pred: Predictions, targets: list[Target]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Hungarian assignment of one prediction set: per image (query indices, target indices)."""
        device = pred.logits.device
        targets = [t.to(device) for t in targets]
        return [(q.to(device), t.to(device))
                for q, t in self.matcher(pred.logits.detach().float(), pred.boxes.detach().float(), targets)]

    def terms(
        self,
        pred: Predictions,
        text_mask: torch.Tensor,
        targets: list[Target],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: float,
        query_valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """cls / bbox / giou for a given assignment.

        Args:
            indices: per image, (query indices, target indices) of the supervised pairs; every other query's
                token target is all zeros ("no object").
            query_valid: (B, Q) bool, queries that take part in the classification loss (default: all).
        """
        logits = pred.logits.float()
        boxes = pred.boxes.float()
        batch, _, length = logits.shape
        device = logits.device
        valid = torch.zeros((batch, length), dtype=torch.bool, device=device)
        valid[:, : text_mask.shape[1]] = text_mask
        target_map = torch.zeros_like(logits)
        for b, (q, t) in enumerate(indices):
            target_map[b, q] = targets[b].token_map[t].to(target_map.dtype)
        select = valid[:, None, :].expand_as(logits)
        if query_valid is not None:
            select = select & query_valid.to(device)[:, :, None]
        # Select before the loss: the -inf logits at padding would give inf * 0 = NaN in the BCE otherwise.
        loss_cls = sigmoid_focal_loss(logits[select], target_map[select], self.alpha, self.gamma).sum() / num_boxes

        src_boxes = torch.cat([boxes[b, q] for b, (q, _) in enumerate(indices)])
        tgt_boxes = torch.cat([targets[b].boxes[t].float() for b, (_, t) in enumerate(indices)])
        loss_bbox = (src_boxes - tgt_boxes).abs().sum() / num_boxes
        giou = paired_generalized_box_iou(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"cls": loss_cls, "bbox": loss_bbox, "giou": loss_giou}

    def denoising(
        self, layers: list[Predictions], text_mask: torch.Tensor, targets: list[Target], dn: DenoisingTargets
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """DINO's denoising loss: the same three terms with the assignment fixed by construction.

        A positive slot is supervised with the box and entity tokens it was made from; a negative slot's token
        target is all zeros and it has no box loss; padding slots are left out. Every decoder layer is
        supervised, normalised by the number of positive slots (DINO divides by num_boxes x num_groups).

        Returns:
            (weighted total over layers, parts "dn.cls" / "dn.bbox" / "dn.giou" of the last layer).
        """
        device = layers[-1].logits.device
        targets = [t.to(device) for t in targets]
        positive, index = dn.positive.to(device), dn.target_index.to(device)
        indices = []
        for b in range(len(targets)):
            q = torch.nonzero(positive[b]).flatten()
            indices.append((q, index[b, q]))
        num_pos = self.normalizer(float(positive.sum()))
        total = layers[-1].logits.new_zeros((), dtype=torch.float32)
        w = self.weights
        for pred in layers:
            terms = self.terms(pred, text_mask, targets, indices, num_pos, query_valid=dn.valid)
            total = total + w.cls * terms["cls"] + w.bbox * terms["bbox"] + w.giou * terms["giou"]
        parts = {f"dn.{k}": float(v.detach()) for k, v in terms.items()}
        return total, parts

    def __call__(
        self,
        decoder: list[Predictions],
        text_mask: torch.Tensor,
        targets: list[Target],
        encoder: Predictions | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts.

        Args:
            decoder: one `Predictions` per decoder layer, last layer last.
            text_mask: (B, T) bool valid prompt tokens.
            targets: B targets.
            encoder: the encoder's top-k proposals (two-stage models), or None.
        Returns:
            (scalar total, parts) where parts holds floats named "cls", "bbox", "giou" (last layer),
            "d{i}.cls" ... (earlier decoder layers), "enc.cls" ... (encoder), and "loss" (the total).
        """
        num_boxes = self.normalizer(float(sum(len(t) for t in targets)))
        sets: list[tuple[str, Predictions]] = [("", decoder[-1])]
        sets += [(f"d{i}.", p) for i, p in enumerate(decoder[:-1])]
        if encoder is not None:
            sets.append(("enc.", encoder))
        total = decoder[-1].logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        w = self.weights
        for prefix, pred in sets:
            terms = self.single(pred, text_mask, targets, num_boxes)
            total = total + w.cls * terms["cls"] + w.bbox * terms["bbox"] + w.giou * terms["giou"]
            for k, v in terms.items():
                parts[prefix + k] = float(v.detach())
        parts["loss"] = float(total.detach())
        return total, parts
