"""Hungarian matching of queries to ground-truth boxes (DETR's set prediction, with token-level classes).

The cost of giving target j to query i is

    w_class * C_class[i, j] + w_bbox * |b_i - b_j|_1 + w_giou * (-GIoU(b_i, b_j))

where the classification cost is the focal-loss difference between "positive" and "negative" at each token,
averaged over the target's tokens (Grounding DINO's matcher: a target is named by several tokens, and a query
that fires on all of them is the cheapest)::

    p = sigmoid(logit)
    pos(p) = alpha * (1 - p)^gamma * -log(p)        # focal loss if the token were positive
    neg(p) = (1 - alpha) * p^gamma * -log(1 - p)     # focal loss if it were negative
    C_class[i, j] = mean over tokens t of target j of (pos(p_it) - neg(p_it))

Default weights 2 / 5 / 2 are MM-Grounding-DINO's (BinaryFocalLossCost 2.0, BBoxL1Cost 5.0, IoUCost 2.0).
Matching is solved per image with scipy's `linear_sum_assignment`; each image's cost matrix is only
(num_queries, num_targets), so there is no need for DETR's batch-wide block matrix.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from groundscope.box_ops import cxcywh_to_xyxy, generalized_box_iou
from groundscope.train.targets import Target

EPS = 1e-8


class HungarianMatcher:
    """One-to-one assignment of queries to targets.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three costs.
        alpha, gamma: focal parameters of the classification cost.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0; the assignment would be arbitrary")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.alpha = alpha
        self.gamma = gamma

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, target: Target) -> torch.Tensor:
        """Cost of each (query, target) pair of one image.

        Args:
            logits: (Q, L) token logits (-inf at padding / beyond the prompt is fine: those tokens are in no
                target's map and contribute nothing).
            boxes: (Q, 4) predicted normalised cxcywh.
            target: N boxes and their token maps (N, L).
        Returns:
            (Q, N) float32 cost.
        """
        prob = logits.float().sigmoid()
        pos = self.alpha * (1 - prob).pow(self.gamma) * -(prob + EPS).log()
        neg = (1 - self.alpha) * prob.pow(self.gamma) * -(1 - prob + EPS).log()
        token_map = target.token_map.float()
        # Rows sum to 1 so the product is the mean over the target's tokens (a 1-token and a 3-token class
        # cost the same when every token is equally right).
        token_map = token_map / token_map.sum(-1, keepdim=True).clamp(min=1.0)
        cost_class = (pos - neg) @ token_map.T
        pred = boxes.float()
        tgt = target.boxes.float()
        cost_bbox = torch.cdist(pred, tgt, p=1)
        cost_giou = -generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt))
        cost = self.cost_class * cost_class + self.cost_bbox * cost_bbox + self.cost_giou * cost_giou
        # A NaN/inf (e.g. a degenerate predicted box) must not crash the solver; make such pairs the last resort.
        return torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)

    @torch.no_grad()
    def __call__(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[Target]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match a batch.

        Args:
            logits: (B, Q, L) token logits.
            boxes: (B, Q, 4) normalised cxcywh.
            targets: B targets.
        Returns:
            per image (query_idx, target_idx), two (K,) long tensors with K = min(Q, N), sorted by query.
        """
        if logits.shape[0] != len(targets):
            raise ValueError(f"{logits.shape[0]} predictions for {len(targets)} targets")
        out = []
        for b, target in enumerate(targets):
            if len(target) == 0:
                empty = torch.zeros(0, dtype=torch.long)
                out.append((empty, empty))
                continue
            cost = self.cost_matrix(logits[b], boxes[b], target).cpu().numpy()
            rows, cols = linear_sum_assignment(cost)
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out
