"""`Detections`: the one result type every task returns.

Boxes are absolute-pixel ``xyxy`` float32 arrays of shape (N, 4). Everything is numpy so results can be
pickled, saved and inspected without torch; the models convert at their boundary. Masks, when a segmenter made
them, are kept as COCO compressed RLE (`groundscope.masks`) and decoded on demand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from groundscope import masks as mask_ops

Span = tuple[int, int]


def _as_spans(spans: Iterable[Sequence[Span]] | None, n: int) -> list[list[Span]] | None:
    if spans is None:
        return None
    out = [[(int(a), int(b)) for a, b in s] for s in spans]
    if len(out) != n:
        raise ValueError(f"spans has {len(out)} entries for {n} detections")
    return out


@dataclass
class Detections:
    """Boxes found in one image.

    Attributes:
        xyxy: float32 (N, 4) boxes in pixels, (x1, y1, x2, y2).
        scores: float32 (N,) confidence in [0, 1].
        class_ids: int64 (N,) index into the caller's class list (detection), phrase index (grounding) or 0
            (referring expressions).
        labels: N strings: the class name, phrase or expression each box answers.
        spans: optional N lists of (start, end) character spans into the prompt/caption the label came from.
        masks: optional N instance masks at the image's size, stored as COCO compressed RLE dicts; pass a bool
            (N, H, W) array or RLE dicts. `mask_array()` decodes them to bool (N, H, W).
        tracker_id: optional int64 (N,) track ids, set by `groundscope.track` (one id per object across a video's
            frames); None outside tracking.
    """

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    labels: list[str] = field(default_factory=list)
    spans: list[list[Span]] | None = None
    masks: list[dict] | None = None
    tracker_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        n = len(self.xyxy)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        self.labels = [str(x) for x in self.labels]
        if not (len(self.scores) == len(self.class_ids) == len(self.labels) == n):
            raise ValueError(
                f"Detections fields disagree in length: xyxy {n}, scores {len(self.scores)}, "
                f"class_ids {len(self.class_ids)}, labels {len(self.labels)}"
            )
        self.spans = _as_spans(self.spans, n)
        if self.masks is not None:
            if isinstance(self.masks, np.ndarray):
                arr = self.masks
                if arr.ndim != 3 or arr.shape[0] != n:
                    raise ValueError(f"masks must be (N, H, W) with N = {n} detections, got shape {tuple(arr.shape)}")
                self.masks = mask_ops.encode(arr.astype(bool)) if n else []
            else:
                self.masks = [dict(m) for m in self.masks]
            if len(self.masks) != n:
                raise ValueError(f"masks has {len(self.masks)} entries for {n} detections")
            mask_ops.size_of(self.masks)
        if self.tracker_id is not None:
            self.tracker_id = np.asarray(self.tracker_id, dtype=np.int64).reshape(-1)
            if len(self.tracker_id) != n:
                raise ValueError(f"tracker_id has {len(self.tracker_id)} entries for {n} detections")

    # ------------------------------------------------------------------ masks
    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def mask_array(self) -> np.ndarray:
        """bool (N, H, W) masks, decoded from their RLE; an error when the detections carry none."""
        if self.masks is None:
            raise ValueError("these detections carry no masks; ask for them with masks=True (--masks) or "
                             "segmenter.add_masks(image, detections)")
        return mask_ops.decode(self.masks)

    def with_masks(self, masks: np.ndarray | list[dict] | None) -> "Detections":
        """A copy of these detections carrying `masks` (bool (N, H, W) or N RLE dicts; None drops them)."""
        return Detections(self.xyxy, self.scores, self.class_ids, self.labels, self.spans, masks, self.tracker_id)

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> "Detections":
        """Select by integer, slice, index array or boolean mask; always returns `Detections`."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Detections(
            xyxy=self.xyxy[idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            labels=[self.labels[i] for i in idx],
            spans=None if self.spans is None else [self.spans[i] for i in idx],
            masks=None if self.masks is None else [self.masks[i] for i in idx],
            tracker_id=None if self.tracker_id is None else self.tracker_id[idx],
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self.xyxy[i], float(self.scores[i]), int(self.class_ids[i]), self.labels[i]

    @classmethod
    def empty(cls) -> "Detections":
        return cls()

    @classmethod
    def merge(cls, items: Sequence["Detections"]) -> "Detections":
        """Concatenate detections of the same image (e.g. from several prompt chunks); masks and tracker ids are
        kept when every non-empty item carries them."""
        items = list(items)
        if not items:
            return cls.empty()
        filled = [d for d in items if len(d)]
        with_masks = bool(filled) and all(d.masks is not None for d in filled)
        if not with_masks and any(d.masks is not None for d in filled):
            raise ValueError("cannot merge detections with masks and detections without; segment them all or none")
        with_ids = bool(filled) and all(d.tracker_id is not None for d in filled)
        if not with_ids and any(d.tracker_id is not None for d in filled):
            raise ValueError("cannot merge tracked detections with untracked ones; give every item a tracker_id or none")
        with_spans = any(d.spans is not None for d in items)
        spans = None
        if with_spans:
            spans = [s for d in items for s in (d.spans if d.spans is not None else [[] for _ in range(len(d))])]
        return cls(
            xyxy=np.concatenate([d.xyxy for d in items]),
            scores=np.concatenate([d.scores for d in items]),
            class_ids=np.concatenate([d.class_ids for d in items]),
            labels=[lab for d in items for lab in d.labels],
            spans=spans,
            masks=[m for d in filled for m in d.masks] if with_masks else None,
            tracker_id=np.concatenate([d.tracker_id for d in filled]) if with_ids else None,
        )

    # ------------------------------------------------------------------ filters
    @property
    def area(self) -> np.ndarray:
        """(N,) box areas in square pixels."""
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def sort(self) -> "Detections":
        """Highest score first (stable, so equal scores keep their order)."""
        return self[np.argsort(-self.scores, kind="stable")]

    def with_threshold(self, threshold: float) -> "Detections":
        return self[self.scores >= threshold]

    def top(self, k: int) -> "Detections":
        return self.sort()[: max(int(k), 0)]

    def nms(self, iou_threshold: float = 0.5, class_agnostic: bool = False, iou_type: str = "box") -> "Detections":
        """Greedy non-maximum suppression, per class unless `class_agnostic`; result is sorted by score.

        `iou_type` "mask" compares masks instead of boxes (the detections must carry masks)."""
        if iou_type not in ("box", "mask"):
            raise ValueError(f"iou_type must be 'box' or 'mask', not {iou_type!r}")
        iou = None
        if iou_type == "mask":
            if self.masks is None:
                raise ValueError("nms(iou_type='mask') needs detections with masks")
            iou = mask_ops.iou(self.masks, self.masks)
        keep = nms_indices(self.xyxy, self.scores, None if class_agnostic else self.class_ids, iou_threshold, iou=iou)
        return self[keep]

    # ------------------------------------------------------------------ serialisation
    def to_list(self, ndigits: int | None = 2) -> list[dict[str, Any]]:
        """One dict per box: ``{"box": [x1, y1, x2, y2], "score", "label", "class_id", "span"?, "mask"?,
        "tracker_id"?}``, the mask as COCO compressed RLE."""
        out = []
        for i in range(len(self)):
            box = [float(v) for v in self.xyxy[i]]
            if ndigits is not None:
                box = [round(v, ndigits) for v in box]
            rec: dict[str, Any] = {
                "box": box,
                "score": round(float(self.scores[i]), 5) if ndigits is not None else float(self.scores[i]),
                "label": self.labels[i],
                "class_id": int(self.class_ids[i]),
            }
            if self.spans is not None:
                rec["span"] = [list(s) for s in self.spans[i]]
            if self.masks is not None:
                rec["mask"] = self.masks[i]
            if self.tracker_id is not None:
                rec["tracker_id"] = int(self.tracker_id[i])
            out.append(rec)
        return out

    @classmethod
    def from_list(cls, records: Sequence[dict[str, Any]]) -> "Detections":
        """Inverse of `to_list` (also reads the ``detections`` list of a CLI result file)."""
        try:
            has_spans = any("span" in r for r in records)
            has_masks = bool(records) and all("mask" in r for r in records)
            has_ids = bool(records) and all("tracker_id" in r for r in records)
            return cls(
                xyxy=np.array([r["box"] for r in records], np.float32).reshape(-1, 4),
                scores=[r["score"] for r in records],
                class_ids=[r.get("class_id", 0) for r in records],
                labels=[r.get("label", "") for r in records],
                spans=[[tuple(s) for s in r.get("span", [])] for r in records] if has_spans else None,
                masks=[r["mask"] for r in records] if has_masks else None,
                tracker_id=[r["tracker_id"] for r in records] if has_ids else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a detections list ({type(e).__name__}: {e}); each record needs 'box' and 'score'")

    def to_json(self) -> str:
        return json.dumps(self.to_list(ndigits=None))

    @classmethod
    def from_json(cls, text: str) -> "Detections":
        return cls.from_list(json.loads(text))

    def to_coco_results(self, image_id: int, category_ids: Sequence[int] | dict[int, int] | None = None) -> list[dict]:
        """COCO results records (``bbox`` as xywh, and ``segmentation`` as compressed RLE when the detections
        carry masks). `category_ids` maps class_id -> COCO category id (a list indexed by class_id or a dict);
        without it the class_id is used as is."""
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
            cid = int(self.class_ids[i])
            cat = cid if category_ids is None else int(category_ids[cid])
            rec = {
                "image_id": image_id,
                "category_id": cat,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(self.scores[i]),
            }
            if self.masks is not None:
                rec["segmentation"] = self.masks[i]
            out.append(rec)
        return out

    # ------------------------------------------------------------------ supervision interop
    def to_supervision(self):
        """Convert to `supervision.Detections` (labels go to ``data['class_name']``, masks to ``mask`` as bool
        (N, H, W), track ids to ``tracker_id``)."""
        try:
            import supervision as sv
        except ImportError as e:  # optional dependency
            raise ImportError("to_supervision needs the 'supervision' package: pip install supervision") from e
        return sv.Detections(
            xyxy=self.xyxy.copy(),
            confidence=self.scores.copy(),
            class_id=self.class_ids.copy(),
            mask=None if self.masks is None or not len(self) else self.mask_array(),
            tracker_id=None if self.tracker_id is None else self.tracker_id.copy(),
            data={"class_name": np.array(self.labels, dtype=object)},
        )

    @classmethod
    def from_supervision(cls, det) -> "Detections":
        n = len(det.xyxy)
        names = det.data.get("class_name") if getattr(det, "data", None) else None
        class_ids = det.class_id if det.class_id is not None else np.zeros(n, np.int64)
        return cls(
            xyxy=det.xyxy,
            scores=det.confidence if det.confidence is not None else np.ones(n, np.float32),
            class_ids=class_ids,
            labels=[str(x) for x in names] if names is not None else [str(c) for c in class_ids],
            masks=None if getattr(det, "mask", None) is None else np.asarray(det.mask, bool),
            tracker_id=getattr(det, "tracker_id", None),
        )

    def __repr__(self) -> str:
        head = ", ".join(f"{lab}:{s:.2f}" for lab, s in zip(self.labels[:5], self.scores[:5]))
        more = ", ..." if len(self) > 5 else ""
        return f"Detections(n={len(self)}, [{head}{more}])"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a (N, 4) and b (M, 4) -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_indices(
    xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray | None, iou_threshold: float,
    iou: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy NMS (what torchvision.ops.batched_nms does, which we cannot load here).

    Returns the kept indices sorted by descending score. Boxes of different classes never suppress each other
    unless `class_ids` is None. `iou` (N, N) replaces the box IoU (mask NMS passes the mask IoU).
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) == 0:
        return order.astype(np.int64)
    iou = box_iou(xyxy, xyxy) if iou is None else np.asarray(iou, np.float64)
    if class_ids is not None:
        same = np.asarray(class_ids)[:, None] == np.asarray(class_ids)[None, :]
        iou = np.where(same, iou, 0.0)
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, np.int64)


def save_detections_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a CLI result file atomically (temp file + rename), so a crash never leaves half a JSON."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
