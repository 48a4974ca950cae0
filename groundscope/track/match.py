"""One-to-one assignment of detections to tracks by overlap: the Hungarian algorithm on IoU (scipy's
``linear_sum_assignment``), pairs under the threshold rejected, as SORT / ByteTrack-style trackers match."""

from __future__ import annotations

import numpy as np


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of bool masks a (N, H, W) and b (M, H, W) -> (N, M); an empty pair has IoU 0."""
    fa = np.asarray(a, bool).reshape(len(a), -1).astype(np.float32)
    fb = np.asarray(b, bool).reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0).astype(np.float64)


def buffered(boxes: np.ndarray, ratio: float) -> np.ndarray:
    """xyxy boxes (N, 4) grown by `ratio` of their width / height on every side (C-BIoU's buffered box: Yang et
    al., "Hard to Track Objects with Irregular Motions and Similar Appearances? Make It Easier by Buffering the
    Matching Space", WACV 2023, Eq. 1), so that a box that moved or grew by more than its overlap still meets
    its track."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = (b[:, 2] - b[:, 0])[:, None], (b[:, 3] - b[:, 1])[:, None]
    return b + np.concatenate([-ratio * w, -ratio * h, ratio * w, ratio * h], axis=1)


def match(iou: np.ndarray, threshold: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Maximum-IoU one-to-one matching.

    Args:
        iou: (T, D) overlap of T tracks with D detections.
        threshold: a pair matches only with IoU >= threshold.
    Returns:
        (pairs (track, detection), unmatched tracks, unmatched detections), each sorted.
    """
    from scipy.optimize import linear_sum_assignment

    iou = np.asarray(iou, np.float64)
    if iou.ndim != 2:
        raise ValueError(f"iou must be a (tracks, detections) matrix, got shape {iou.shape}")
    n_tracks, n_dets = iou.shape
    pairs: list[tuple[int, int]] = []
    if n_tracks and n_dets:
        rows, cols = linear_sum_assignment(-iou)
        pairs = sorted((int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= threshold)
    matched_t = {t for t, _ in pairs}
    matched_d = {d for _, d in pairs}
    return pairs, [t for t in range(n_tracks) if t not in matched_t], [d for d in range(n_dets) if d not in matched_d]
