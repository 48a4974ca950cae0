"""Box conversions and (generalized) IoU in torch: the ground under the models, the matcher and the losses.

Boxes inside the training code are normalised ``(cx, cy, w, h)`` in [0, 1] (the model's output format) or
normalised ``(x1, y1, x2, y2)`` for IoU. GIoU is invariant to scaling each axis, so computing it on
normalised boxes gives the same value as mmdetection's pixel-space GIoU loss.

torchvision has the same functions, but its compiled ops do not load on the CPU torch build used here.
"""

from __future__ import annotations

import torch


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cx, cy, w, h -> (..., 4) x1, y1, x2, y2."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) x1, y1, x2, y2 -> (..., 4) cx, cy, w, h."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1), -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) area (0 for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union of every pair: a (N, 4), b (M, 4) xyxy -> (N, M), (N, M)."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12), union


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019): a (N, 4), b (M, 4) xyxy -> (N, M) in [-1, 1]."""
    iou, union = pairwise_iou(a, b)
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-12)


def paired_generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of matched pairs: a (N, 4), b (N, 4) xyxy -> (N,). Avoids the N x N matrix the loss never needs."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-12)
    hull_lt = torch.minimum(a[:, :2], b[:, :2])
    hull_rb = torch.maximum(a[:, 2:], b[:, 2:])
    hull = (hull_rb - hull_lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-12)
