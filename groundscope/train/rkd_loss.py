"""RKD's three losses: point-wise L1 and inter-embedding relationship (IRM) distillation, and the pseudo max score
loss on image-level labels.

The definitions follow the reference (hanoonaR/object-centric-ovd): both embeddings L2-normalised; L1 is the
mean absolute difference x 100 (the reference scales both distillation losses by 100 before its 0.15 weights, so
the weights in configs are the reference's); IRM compares the row-normalised Gram matrices of all regions of the
batch (squared Frobenius norm per entry x 100); the pseudo max score loss is a binary cross-entropy of one box's scores
against the one-hot image-level label, averaged over pseudo-boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTILL_SCALE = 100.0


def rkd_l1_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Point-wise distillation.

    Args:
        student: (N, D) region embeddings of the detector (projected to the teacher's dimension).
        teacher: (N, D) the teacher's embeddings of the same regions.
    Returns: scalar, ``100 * mean |s/|s| - t/|t||`` (0 when N = 0).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} embeddings differ in shape")
    if student.shape[0] == 0:
        return student.sum() * 0.0
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    return DISTILL_SCALE * (s - t).abs().mean()


def relation_matrix(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N): Gram matrix of the L2-normalised rows, each row then L2-normalised."""
    x = F.normalize(x.float(), dim=-1)
    return F.normalize(x @ x.T, dim=-1)


def rkd_irm_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Inter-embedding relationship distillation over all N regions of a batch: the student's regions must relate
    to each other as the teacher's do. Returns ``100 * ||G_s - G_t||_F^2 / N^2`` (0 when N < 2).

    The squared Frobenius norm is averaged over the N^2 entries so the term does not grow with the batch: summed,
    with 20 regions per batch (4 images x 5) and the reference's weight, it measured 144 against L1's 1.5 and the
    grounding loss's ~5, and gradient clipping then left the detection losses almost no say.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} embeddings differ in shape")
    if student.shape[0] < 2:
        return student.sum() * 0.0
    diff = relation_matrix(student) - relation_matrix(teacher)
    return DISTILL_SCALE * diff.pow(2).mean()


def pseudo_max_score_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Image-level supervision through pseudo-boxes.

    Args:
        logits: (P, L) scores of the query that holds each pseudo-box (token-level logits of the prompt, or a
            class-level head's logits).
        targets: (P, L) 1 at the image-level label's tokens (its class), 0 elsewhere.
        valid: (P, L) bool, the columns that count (the prompt's real tokens); all when None.
    Returns: scalar, BCE-with-logits averaged over the valid columns of each pseudo-box, then over pseudo-boxes
    (0 when P = 0).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if valid is None:
        return bce.mean()
    valid = valid.float()
    per_box = (bce * valid).sum(-1) / valid.sum(-1).clamp(min=1.0)
    return per_box.mean()
