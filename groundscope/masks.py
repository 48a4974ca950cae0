"""Instance masks stored compactly: COCO compressed RLE, decoded on demand.

A mask set is a list of N RLE dicts ``{"size": [H, W], "counts": str}`` (the string pycocotools' ``mask.encode``
writes, so files and COCO results carry them as they are). Decoding gives bool (N, H, W). pycocotools is a
groundscope dependency and does the work (its C code is ~50x faster than numpy here); the numpy encoder and
decoder in `groundscope.data.regions` give the same strings and pixels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

RLE = dict[str, Any]


def _coco():
    from pycocotools import mask as coco_mask

    return coco_mask


def encode(masks: np.ndarray) -> list[RLE]:
    """bool (N, H, W) or (H, W) -> N compressed RLE dicts (``counts`` as str, JSON-ready)."""
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"masks must be (N, H, W) or (H, W), got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        return []
    rles = _coco().encode(np.asfortranarray(arr.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def _c(rles: Sequence[RLE]) -> list[dict]:
    """pycocotools wants ``counts`` as bytes."""
    out = []
    for r in rles:
        counts = r["counts"]
        if isinstance(counts, list):  # uncompressed RLE (COCO's iscrowd form)
            out.append(_coco().frPyObjects(r, int(r["size"][0]), int(r["size"][1])))
        else:
            out.append({"size": list(r["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
    return out


def decode(rles: Sequence[RLE]) -> np.ndarray:
    """N RLE dicts -> bool (N, H, W). An empty list decodes to (0, 0, 0)."""
    if len(rles) == 0:
        return np.zeros((0, 0, 0), bool)
    return _coco().decode(_c(rles)).transpose(2, 0, 1).astype(bool)


def decode_one(rle: RLE) -> np.ndarray:
    """One RLE -> bool (H, W)."""
    return decode([rle])[0]


def area(rles: Sequence[RLE]) -> np.ndarray:
    """(N,) mask areas in pixels, without decoding."""
    if len(rles) == 0:
        return np.zeros((0,), np.float64)
    return np.asarray(_coco().area(_c(rles)), np.float64)


def to_boxes(rles: Sequence[RLE]) -> np.ndarray:
    """(N, 4) tight xyxy boxes of the masks (an empty mask gives a zero box)."""
    if len(rles) == 0:
        return np.zeros((0, 4), np.float32)
    xywh = np.asarray(_coco().toBbox(_c(rles)), np.float32).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def iou(a: Sequence[RLE], b: Sequence[RLE]) -> np.ndarray:
    """Mask IoU matrix (N, M), as COCO computes it (no crowd)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    return np.asarray(_coco().iou(_c(a), _c(b), [0] * len(b)), np.float64).reshape(len(a), len(b))


def size_of(rles: Sequence[RLE]) -> tuple[int, int] | None:
    """(H, W) shared by all the masks, or None for an empty list; masks of different sizes are an error."""
    sizes = {(int(r["size"][0]), int(r["size"][1])) for r in rles}
    if len(sizes) > 1:
        raise ValueError(f"masks of one image must share one size, got {sorted(sizes)}")
    return next(iter(sizes)) if sizes else None


def to_polygons(mask: np.ndarray, min_area: float = 1.0) -> list[list[float]]:
    """(H, W) bool -> COCO polygons ``[[x1, y1, x2, y2, ...], ...]``, one per outer contour (holes are lost, as in
    every polygon export). Needs OpenCV (``pip install opencv-python-headless``)."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError("polygon output needs OpenCV: pip install opencv-python-headless (or write RLE)") from e
    contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        if len(c) < 3 or cv2.contourArea(c) < min_area:
            continue
        out.append([float(v) for v in c.reshape(-1, 2).astype(np.float64).ravel()])
    return out
