"""Referring expression comprehension (RefCOCO, RefCOCO+, RefCOCOg): Precision@1, @5, @10 at IoU >= 0.5.

Ground truth, MDETR format (``final_refcoco_val.json`` and friends): a COCO-like file where every ``images``
entry is one referring expression and owns exactly one annotation, the target::

    {"images": [{"id": 0, "file_name": "COCO_train2014_000000581857.jpg", "caption": "the lady with the blue shirt",
                 "original_img_id": 581857, "width": 640, "height": 427, ...}],
     "annotations": [{"id": 1, "image_id": 0, "bbox": [x, y, w, h], "category_id": 1, ...}],
     "categories": [...]}                                    # categories are optional and unused

Results: a COCO results list, several boxes per expression (``image_id``), ranked by ``score``::

    [{"image_id": 0, "bbox": [x, y, w, h], "score": 0.93}, {"image_id": 0, "bbox": [...], "score": 0.41}, ...]

An expression is correct at k when any of its k highest-scoring boxes overlaps the target at IoU >= 0.5
(``overlap="iou"``: mmdetection's ``RefExpMetric``, which produced the MM-Grounding-DINO and LLMDet tables;
official: mmdet/evaluation/metrics/refexp_metric.py ~L69-72). MDETR's evaluator counts a hit at
**generalized** IoU >= 0.5 (``overlap="giou"``; official: ashkamath/mdetr datasets/refexp.py ~L72-74); GIoU is
never above IoU, so it is the stricter rule. Overlaps are on continuous coordinates (no +1). Boxes with equal
scores keep their file order. An expression without any predicted box counts as wrong.

Output: ``{"P@1": .., "P@5": .., "P@10": .., "num_expressions": N}``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from groundscope.detections import box_iou
from groundscope.evaluate.validate import (
    EvaluationInputError,
    JsonInput,
    check_ranked_box,
    check_result_list,
    is_id,
    iter_annotations,
    load_json,
    load_mdetr_file,
    xywh_problem,
    xywh_to_xyxy,
)


@dataclass
class ReferringExpression:
    """One expression of a RefCOCO-style split.

    Attributes:
        image_id: the ``images`` entry id (one per expression, not the COCO image id).
        expression: the referring text (``caption``).
        box: target box, xyxy pixels.
        image: the whole ``images`` record (``file_name``, ``original_img_id``, ...).
    """

    image_id: int
    expression: str
    box: list[float]
    image: dict


def load_refexp_ground_truth(ground_truth: JsonInput) -> tuple[list[ReferringExpression], str]:
    """Read and check an MDETR-format referring expression file -> (expressions in file order, source)."""
    data, source, images = load_mdetr_file(ground_truth, "referring expression")
    if not images:
        raise EvaluationInputError(source, "has no expressions ('images' is empty)")
    targets: dict[int, list[float]] = {}
    for where, ann, image_id in iter_annotations(data, images, source):
        if image_id in targets:
            raise EvaluationInputError(
                source, f"expression {image_id} has a second annotation; the format has exactly one target", where, ann
            )
        problem = xywh_problem(ann.get("bbox"))
        if problem:
            raise EvaluationInputError(source, problem, where, ann)
        targets[image_id] = xywh_to_xyxy([ann["bbox"]])[0]
    out = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img.get("caption"), str) or not img["caption"].strip():
            raise EvaluationInputError(source, "an expression needs a non-empty 'caption'", f"images[{i}]", img)
        if img["id"] not in targets:
            raise EvaluationInputError(source, "this expression has no target annotation", f"images[{i}]", img)
        out.append(ReferringExpression(img["id"], img["caption"], targets[img["id"]], img))
    return out, source


def load_ranked_results(
    results: JsonInput, known: set, key: tuple[str, ...], gt_source: str
) -> dict[tuple, list[tuple[float, list[float]]]]:
    """Group ranked box results by `key` fields, best score first -> {key values: [(score, xyxy), ...]}.

    `known` holds the valid key tuples; a record naming another one is an error.
    """
    records, source = load_json(results, "<results>")
    check_result_list(records, source)
    groups: dict[tuple, list[tuple[float, list[float]]]] = defaultdict(list)
    for i, rec in enumerate(records):
        where = f"results[{i}]"
        check_ranked_box(rec, source, where)
        values = tuple(rec.get(k) for k in key)
        if not all(is_id(v) for v in values) or values not in known:
            names = ", ".join(f"{k} {v!r}" for k, v in zip(key, values, strict=True))
            raise EvaluationInputError(source, f"{names} is not in {gt_source}", where, rec)
        groups[values].append((float(rec["score"]), xywh_to_xyxy([rec["bbox"]])[0]))
    for boxes in groups.values():
        boxes.sort(key=lambda sb: sb[0], reverse=True)  # stable: ties keep file order
    return groups


OVERLAPS = ("iou", "giou")


def generalized_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """GIoU matrix of xyxy boxes a (N, 4) and b (M, 4) -> (N, M): IoU - (hull - union) / hull."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iou = box_iou(a, b)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    union = area_a[:, None] + area_b[None, :] - wh[..., 0] * wh[..., 1]
    hull_wh = np.clip(np.maximum(a[:, None, 2:], b[None, :, 2:]) - np.minimum(a[:, None, :2], b[None, :, :2]), 0, None)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return iou - np.where(hull > 0, (hull - union) / np.where(hull > 0, hull, 1), 0.0)


def hits_at_k(
    pred_xyxy: Sequence[Sequence[float]],
    gt_xyxy: Sequence[Sequence[float]],
    ks: Sequence[int],
    iou_threshold: float,
    overlap: str = "iou",
) -> dict[int, bool]:
    """Whether any of the first k ranked predictions reaches `iou_threshold` with any ground-truth box, per k.

    A k of -1 means every prediction (the upper bound that mmdetection's Flickr30k metric reports as R@-1)."""
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {OVERLAPS}, not {overlap!r}")
    if len(pred_xyxy) == 0 or len(gt_xyxy) == 0:
        return {k: False for k in ks}
    fn = box_iou if overlap == "iou" else generalized_box_iou
    best = fn(np.asarray(pred_xyxy), np.asarray(gt_xyxy)).max(axis=1)  # (P,) best overlap of each prediction
    return {k: bool(((best if k == -1 else best[:k]) >= iou_threshold).any()) for k in ks}


def evaluate_refexp(
    ground_truth: JsonInput,
    results: JsonInput,
    *,
    ks: Sequence[int] = (1, 5, 10),
    iou_threshold: float = 0.5,
    overlap: str = "iou",
) -> dict:
    """Precision@k of ranked box results on one RefCOCO/RefCOCO+/RefCOCOg split (see the module docstring).

    `overlap` is "iou" (mmdetection) or "giou" (MDETR); the output then carries ``"overlap": "giou"``.

    Raises:
        EvaluationInputError: bad files, naming the file and the record.
    """
    if any(k <= 0 for k in ks):
        raise ValueError(f"every k must be positive, got {list(ks)}")
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {OVERLAPS}, not {overlap!r}")
    expressions, gt_source = load_refexp_ground_truth(ground_truth)
    ranked = load_ranked_results(results, {(e.image_id,) for e in expressions}, ("image_id",), gt_source)
    correct = {k: 0 for k in ks}
    for e in expressions:
        boxes = [b for _, b in ranked.get((e.image_id,), [])]
        for k, hit in hits_at_k(boxes, [e.box], ks, iou_threshold, overlap).items():
            correct[k] += hit
    n = len(expressions)
    out: dict = {f"P@{k}": correct[k] / n for k in ks}
    out["num_expressions"] = n
    if overlap != "iou":
        out["overlap"] = overlap
    return out
