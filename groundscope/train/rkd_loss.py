"""RKD's three losses: point-wise L1 and inter-embedding relationship (IRM) distillation, and the pseudo max score
loss on image-level labels, with the reference's reductions (hanoonaR/object-centric-ovd).

The reductions matter because the reference's weights (0.15, 0.15, 0.1) only mean what they mean there under the
same reductions:

* L1 (official: ovd/modeling/roi_heads/custom_fast_rcnn.py ~L168-172): ``F.l1_loss(..., reduction='mean')`` over
  all N x D entries of the L2-normalised embeddings (normalised in res5_roi_heads.py ~L49-51), times
  ``rkd_temperature`` = 100.
* IRM (custom_fast_rcnn.py ~L175-180): ``torch.norm(G_s - G_t) ** 2`` -- the squared Frobenius norm SUMMED over the
  N x N entries of the row-normalised Gram matrices of the batch's regions, times 100. The term therefore grows
  with N^2 (the reference has 5 regions per image).
* Pseudo max score (custom_fast_rcnn.py ~L343-351, ~L270-295): per pseudo-box, binary cross-entropy of the chosen
  proposal's scores against the one-hot label SUMMED over the classes (``reduction='sum'``); averaged over the
  image's labels, then over the images of the batch. Grounding DINO scores tokens, not classes: a class of
  several tokens enters the sum once, as the mean of its tokens' BCE, and tokens of no class (special tokens,
  separators, padding) are not counted, as the reference has no column for them (its background column is a
  constant: zero weights, no bias).

`DISTILL_SCALE` is the reference's ``rkd_temperature``; the configs' weights multiply on top of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTILL_SCALE = 100.0  # official: custom_fast_rcnn.py ~L39 rkd_temperature=100


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} embeddings must both be "
                         "(N, D) of the same shape: one teacher embedding per student region")


def rkd_l1_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Point-wise distillation.

    Args:
        student: (N, D) region embeddings of the detector (projected to the teacher's dimension).
        teacher: (N, D) the teacher's embeddings of the same regions.
    Returns: scalar, ``100 * mean over the N x D entries of |s/|s| - t/|t||`` (0 when N = 0), the reference's
    ``F.l1_loss(reduction='mean')``.
    """
    _check_pair(student, teacher)
    if student.shape[0] == 0:
        return student.sum() * 0.0
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    return DISTILL_SCALE * F.l1_loss(s, t, reduction="mean")


def relation_matrix(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N): Gram matrix of the L2-normalised rows, each row then L2-normalised
    (official: custom_fast_rcnn.py ~L177-178, ``normalize(x @ x.T, 1)`` on normalised embeddings)."""
    x = F.normalize(x.float(), dim=-1)
    return F.normalize(x @ x.T, dim=-1)


def rkd_irm_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Inter-embedding relationship distillation over all N regions of a batch: the student's regions must relate
    to each other as the teacher's do.

    Args:
        student, teacher: (N, D) as in `rkd_l1_loss`.
    Returns: scalar, ``100 * ||G_s - G_t||_F^2`` summed over the N x N entries, as the reference (0 when N < 2,
    where there is no relation to match).
    """
    _check_pair(student, teacher)
    if student.shape[0] < 2:
        return student.sum() * 0.0
    diff = relation_matrix(student) - relation_matrix(teacher)
    return DISTILL_SCALE * diff.pow(2).sum()


def class_bce(logits: torch.Tensor, targets: torch.Tensor, column_class: torch.Tensor | None = None) -> torch.Tensor:
    """Per-box BCE-with-logits SUMMED over the classes (the reference's ``reduction='sum'`` over its C + 1
    classes, custom_fast_rcnn.py ~L350-351).

    Args:
        logits: (P, L) scores of the pseudo-boxes' queries: token-level logits of the prompt, or a class-level
            head's logits.
        targets: (P, L) 1 at the label's columns, 0 elsewhere.
        column_class: (P, L) int, the class each column belongs to (-1: counted nowhere: padding, special tokens,
            the " . " separators). A class of several tokens counts once, as the mean of its tokens' BCE, so a
            class weighs the same whatever its length, as a class's one column does in the reference. None: every
            column is a class of its own (class-level logits).
    Returns: (P,) the per-box loss.
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be (P, L)")
    logits = logits.float()
    if column_class is None:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").sum(-1)
    column_class = torch.as_tensor(column_class, device=logits.device).long()
    if column_class.shape != logits.shape:
        raise ValueError(f"column_class {tuple(column_class.shape)} must have the shape of logits "
                         f"{tuple(logits.shape)}: the class of each column, -1 where none")
    counted = column_class >= 0
    # padding holds -inf logits (nan BCE, nan gradients): columns counted nowhere are zeroed before the BCE
    logits = torch.where(counted, logits, torch.zeros_like(logits))
    bce = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none") * counted.float()
    index = column_class.clamp(min=0)
    width = int(index.max()) + 1 if index.numel() else 1
    sums = bce.new_zeros(bce.shape[0], width).scatter_add(1, index, bce)
    counts = bce.new_zeros(bce.shape[0], width).scatter_add(1, index, counted.float())
    return (sums / counts.clamp(min=1.0)).sum(-1)


def pseudo_max_score_loss(logits: torch.Tensor, targets: torch.Tensor, column_class: torch.Tensor | None = None,
                          image_index: torch.Tensor | None = None) -> torch.Tensor:
    """Image-level supervision through pseudo-boxes.

    Args:
        logits, targets, column_class: as in `class_bce`.
        image_index: (P,) int, the image of each pseudo-box; all from one image when None.
    Returns: scalar: per pseudo-box `class_bce` (summed over its classes), averaged over each image's
    pseudo-boxes, then over the images (the reference's ``loss_i / len(labels)`` and ``loss / B``,
    custom_fast_rcnn.py ~L280, ~L295); 0 when P = 0.
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be (P, L)")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    per_box = class_bce(logits, targets, column_class)  # (P,)
    if image_index is None:
        return per_box.mean()
    image_index = torch.as_tensor(image_index, device=per_box.device).long().reshape(-1)
    if image_index.shape[0] != per_box.shape[0]:
        raise ValueError(f"image_index has {image_index.shape[0]} entries for {per_box.shape[0]} pseudo-boxes")
    images, inverse = torch.unique(image_index, return_inverse=True)
    sums = per_box.new_zeros(len(images)).index_add(0, inverse, per_box)
    counts = per_box.new_zeros(len(images)).index_add(0, inverse, torch.ones_like(per_box))
    return (sums / counts).mean()
