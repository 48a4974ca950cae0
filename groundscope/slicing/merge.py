"""Merging the detections of overlapping tiles: shifting them back, and SAHI's two rules (NMS and greedy NMM).

Every tile's `Detections` is in the tile's own pixels; `shift_detections` moves it into the image's (boxes plus
the tile's top-left corner, masks pasted into an image-sized canvas). `merge_detections` then applies one rule,
class by class (boxes of different ``class_ids`` never match), highest score first:

* ``"nms"``: SAHI's ``batched_nms`` (obss/sahi sahi/postprocess/combine.py ``batched_nms`` / ``nms``): the best
  box is kept and every remaining box that matches it (``match >= threshold``) is dropped.
* ``"nmm"``: SAHI's greedy non-maximum merging (same file, ``batched_greedy_nmm`` / ``greedy_nmm`` and
  ``GreedyNMMPostprocess``): the best box takes every remaining box that matches it (``>= threshold``) out of
  the pool; then, best first, each taken box whose match with the box merged so far is still ``> threshold``
  (``has_match`` in sahi/postprocess/utils.py) is merged into it: the box becomes the union box, the score the
  larger score, the label / span / class those of the higher-scoring box (the kept one), and the masks, when
  present, the union of the masks (``merge_object_prediction_pair``, ``get_merged_mask``).

`match` is SAHI's ``IOS`` (intersection over the smaller box's area, the default: a box cut by a tile border
lies inside the whole object's box, so its IOS is ~1 however small it is) or ``IOU``.

Borders: as SAHI, boxes cut by a tile border are kept (clipped to the tile by the detector, so they stay inside
the image once shifted) and left to the merge: with NMM + IOS the partial box of an object is merged into the
box of the same object from a neighbouring tile or the whole-image pass, so the union is the object; with NMS
the best-scoring of them stands for it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from groundscope import masks as mask_ops
from groundscope.detections import Detections


def _with(dets: Detections, **fields) -> Detections:
    """A copy of `dets` with some fields replaced (keyword construction only, so fields added to `Detections`
    later are not mixed up)."""
    base = {"xyxy": dets.xyxy, "scores": dets.scores, "class_ids": dets.class_ids, "labels": dets.labels,
            "spans": dets.spans, "masks": dets.masks}
    base.update(fields)
    return Detections(**base)


def shift_detections(dets: Detections, offset: tuple[int, int], image_size: tuple[int, int]) -> Detections:
    """Move a tile's detections into image pixels.

    Args:
        dets: detections of one tile, boxes (N, 4) xyxy in tile pixels, masks (when present) at the tile's size.
        offset: the tile's top-left corner (x, y) in the image.
        image_size: the image's (height, width); boxes are clipped to it and masks pasted into a canvas of it.
    Returns:
        the same detections, boxes (N, 4) in image pixels, masks (N RLE) at the image's size.
    """
    x, y = int(offset[0]), int(offset[1])
    h, w = int(image_size[0]), int(image_size[1])
    xyxy = dets.xyxy.astype(np.float64) + np.asarray([x, y, x, y], np.float64)
    xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, h)
    masks = dets.masks
    if masks is not None and len(dets):
        tile = mask_ops.decode(masks)  # (N, th, tw) bool
        th, tw = tile.shape[1:]
        canvas = np.zeros((len(dets), h, w), bool)
        canvas[:, y : y + th, x : x + tw] = tile[:, : h - y, : w - x]
        masks = mask_ops.encode(canvas)
    return _with(dets, xyxy=xyxy.astype(np.float32), masks=masks)


def match_matrix(a: np.ndarray, b: np.ndarray, metric: str = "ios") -> np.ndarray:
    """(N, M) match values of xyxy boxes a (N, 4) and b (M, 4): "iou" (intersection over union) or "ios"
    (intersection over the smaller box's area, SAHI's ``IOS``). A pair with nothing to divide by is 0."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    if metric == "iou":
        denom = area_a[:, None] + area_b[None, :] - inter
    elif metric == "ios":
        denom = np.minimum(area_a[:, None], area_b[None, :])
    else:
        raise ValueError(f"match metric must be 'ios' or 'iou', not {metric!r}")
    return np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)


def _groups(xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, metric: str, threshold: float
            ) -> list[tuple[int, list[int]]]:
    """Greedy grouping, class by class: (kept index, [indices it took, best first]) for every kept box, best
    kept box first. A box is taken when its match with the kept box is >= threshold (SAHI's ``greedy_nmm`` /
    ``nms``: ``mask = match < threshold`` keeps the rest in the pool)."""
    order = np.argsort(-scores, kind="stable")
    out: list[tuple[int, list[int]]] = []
    for c in np.unique(class_ids):
        pool = [int(i) for i in order if class_ids[i] == c]
        while pool:
            keep, rest = pool[0], np.asarray(pool[1:], np.int64)
            if len(rest):
                value = match_matrix(xyxy[keep : keep + 1], xyxy[rest], metric)[0]
                taken = rest[value >= threshold].tolist()
                pool = rest[value < threshold].tolist()
            else:
                taken, pool = [], []
            out.append((keep, taken))
    out.sort(key=lambda g: (-float(scores[g[0]]), g[0]))
    return out


def merge_detections(dets: Detections, rule: str = "nmm", metric: str = "ios", threshold: float = 0.5) -> Detections:
    """Merge the detections of one image gathered from its tiles (and the whole image), class by class.

    Args:
        dets: N detections in image pixels (`shift_detections`, then `Detections.merge`).
        rule: "nmm" (greedy non-maximum merging) or "nms" (non-maximum suppression); the module docstring says
            how each treats matched boxes.
        metric: "ios" or "iou" (`match_matrix`).
        threshold: the match value at which two boxes are the same object.
    Returns:
        the merged detections, best score first: at most N, boxes (M, 4), masks merged by union under "nmm".
    """
    if rule not in ("nmm", "nms"):
        raise ValueError(f"merge rule must be 'nmm' or 'nms', not {rule!r}")
    if len(dets) == 0:
        return dets
    xyxy = dets.xyxy.astype(np.float64)
    groups = _groups(xyxy, dets.scores.astype(np.float64), dets.class_ids, metric, threshold)
    kept = dets[[k for k, _ in groups]]
    if rule == "nms":
        return kept
    boxes = kept.xyxy.astype(np.float64).copy()
    scores = kept.scores.copy()
    masks = None if dets.masks is None else list(kept.masks)
    for row, (_, taken) in enumerate(groups):
        union: list[int] = []
        for j in taken:
            # SAHI's GreedyNMMPostprocess re-checks each taken box against the box merged so far (has_match, > thr)
            if match_matrix(boxes[row : row + 1], xyxy[j : j + 1], metric)[0, 0] > threshold:
                boxes[row, :2] = np.minimum(boxes[row, :2], xyxy[j, :2])
                boxes[row, 2:] = np.maximum(boxes[row, 2:], xyxy[j, 2:])
                scores[row] = max(scores[row], dets.scores[j])
                union.append(j)
        if masks is not None and union:
            stack = mask_ops.decode([masks[row]] + [dets.masks[j] for j in union])
            masks[row] = mask_ops.encode(stack.any(axis=0))[0]
    return _with(kept, xyxy=boxes.astype(np.float32), scores=scores, masks=masks)


def gather(tile_dets: Sequence[Detections], offsets: Sequence[tuple[int, int]], image_size: tuple[int, int]
           ) -> Detections:
    """Every tile's detections shifted into the image (`shift_detections`) and concatenated, tile by tile."""
    return Detections.merge([shift_detections(d, o, image_size) for d, o in zip(tile_dets, offsets)])
