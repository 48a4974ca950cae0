"""Phrase grounding (Flickr30k Entities): Recall@1, @5, @10 of phrases, ANY-BOX protocol by default.

Ground truth, MDETR-style COCO file: one ``images`` entry per caption (sentence), its annotations are the boxes,
each tagged with the phrase(s) it belongs to and the phrase's character spans in the caption::

    {"images": [{"id": 0, "file_name": "1000092795.jpg", "caption": "Two young guys with shaggy hair ...",
                 "width": 500, "height": 333, ...}],
     "annotations": [{"id": 1, "image_id": 0, "bbox": [x, y, w, h], "phrase_ids": 0,
                      "tokens_positive": [[0, 14]]}, ...]}

``phrase_ids`` is an int or a list of ints (a box shared by several phrases). The spans a model is prompted
with come from the image's ``tokens_positive_eval`` when it has one, as MDETR's
``final_flickr_separateGT_*.json`` and mmdetection's ``Flickr30kDataset`` lay it out and as both official
evaluations prompt: entry i holds the spans of the phrase with the i-th smallest phrase id (official:
mmdet/datasets/flickr30k.py ~L45-46; ashkamath/mdetr datasets/coco.py ~L40-42). Only without it does the first
annotation's ``tokens_positive`` give a phrase's spans: an annotation's ``tokens_positive`` can hold the spans of
every mention that shares the box, not just this phrase's. A phrase is evaluated when it has at least one box.

Predictions: a list of ranked boxes per (caption, phrase)::

    [{"image_id": 0, "phrase_id": 0, "bbox": [x, y, w, h], "score": 0.88}, ...]

A phrase is recalled at k when one of its k highest-scoring boxes overlaps

* ``any_box`` (default; GLIP, MM-Grounding-DINO, MDETR's ANY-BOX): any one of the phrase's ground-truth boxes,
* ``merged`` (MDETR's MERGED-BOXES): the smallest box enclosing all of the phrase's ground-truth boxes,

at IoU >= 0.5 (continuous coordinates, no +1). ``R@-1`` is the upper bound both official evaluators report: the
phrase is recalled by any of its predicted boxes (mmdet/evaluation/metrics/flickr30k_metric.py ~L67, ~L147-150);
`groundscope eval run` keeps every box of a phrase among the image's 300 for it. A phrase without predictions
counts as missed; equal scores keep their file order.
Output: ``{"R@1": .., "R@5": .., "R@10": .., "R@-1": .., "num_phrases": N}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from groundscope.evaluate.refexp import hits_at_k, load_ranked_results
from groundscope.evaluate.validate import (
    EvaluationInputError,
    JsonInput,
    is_id,
    iter_annotations,
    load_mdetr_file,
    xywh_problem,
    xywh_to_xyxy,
)

PROTOCOLS = ("any_box", "merged")


@dataclass
class Phrase:
    """One phrase of a caption.

    Attributes:
        phrase_id: its id in the file.
        spans: [start, end) character spans in the caption (empty when the file gives none).
        text: the caption text of the spans, joined by spaces.
        boxes: ground-truth boxes, xyxy pixels.
    """

    phrase_id: int
    spans: list[tuple[int, int]] = field(default_factory=list)
    text: str = ""
    boxes: list[list[float]] = field(default_factory=list)


@dataclass
class GroundedCaption:
    """A caption with its phrases, sorted by phrase id; `image` is the whole ``images`` record."""

    image_id: int
    caption: str
    phrases: list[Phrase]
    image: dict


def _spans(value, caption: str) -> list[tuple[int, int]] | None:
    """Validated [start, end) spans, or None when `value` is not a list of in-range spans."""
    if not isinstance(value, list):
        return None
    out = []
    for span in value:
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(is_id(v) for v in span)):
            return None
        start, end = span
        if not 0 <= start < end <= len(caption):
            return None
        out.append((start, end))
    return out


def load_phrase_ground_truth(ground_truth: JsonInput) -> tuple[list[GroundedCaption], str]:
    """Read and check a phrase grounding file -> (captions in file order, source)."""
    data, source, images = load_mdetr_file(ground_truth, "phrase grounding")
    for i, img in enumerate(data["images"]):
        if not isinstance(img.get("caption"), str):
            raise EvaluationInputError(source, "a caption entry needs a 'caption' string", f"images[{i}]", img)
    phrases: dict[int, dict[int, Phrase]] = {img_id: {} for img_id in images}
    for where, ann, image_id in iter_annotations(data, images, source):
        ids = ann.get("phrase_ids")
        ids = [ids] if is_id(ids) else ids
        if not isinstance(ids, list) or not ids or not all(is_id(p) for p in ids):
            raise EvaluationInputError(
                source, "'phrase_ids' must be an integer or a non-empty list of integers", where, ann
            )
        problem = xywh_problem(ann.get("bbox"))
        if problem:
            raise EvaluationInputError(source, problem, where, ann)
        caption = images[image_id]["caption"]
        spans: list[tuple[int, int]] = []
        if "tokens_positive" in ann:
            spans = _spans(ann["tokens_positive"], caption)
            if spans is None:
                raise EvaluationInputError(
                    source,
                    "'tokens_positive' must be a list of [start, end) spans inside the caption "
                    f"({len(caption)} characters)",
                    where,
                    ann,
                )
        box = xywh_to_xyxy([ann["bbox"]])[0]
        for pid in ids:
            phrase = phrases[image_id].setdefault(pid, Phrase(pid))
            phrase.boxes.append(box)
            if spans and not phrase.spans:
                phrase.spans = spans
                phrase.text = " ".join(caption[a:b] for a, b in spans)
    out = []
    for i, img in enumerate(data["images"]):
        ordered = [phrases[img["id"]][p] for p in sorted(phrases[img["id"]])]
        _spans_from_image(ordered, img, source, f"images[{i}]")
        out.append(GroundedCaption(img["id"], img["caption"], ordered, img))
    if not any(c.phrases for c in out):
        raise EvaluationInputError(source, "has no phrase with a ground-truth box: nothing to evaluate")
    return out, source


def _spans_from_image(phrases: list[Phrase], img: dict, source: str, where: str) -> None:
    """Set every phrase's spans from the image's ``tokens_positive_eval`` when it has one (MDETR / mmdetection
    layout: entry i holds the spans of the phrase with the i-th smallest phrase id)."""
    spans_list = img.get("tokens_positive_eval")
    if spans_list is None:
        return
    if not isinstance(spans_list, list) or len(spans_list) != len(phrases):
        raise EvaluationInputError(
            source,
            f"'tokens_positive_eval' must list the spans of each of the {len(phrases)} phrases with boxes",
            where,
            img,
        )
    for phrase, value in zip(phrases, spans_list, strict=True):
        spans = _spans(value, img["caption"])
        if spans is None or not spans:
            raise EvaluationInputError(
                source, "'tokens_positive_eval' holds an entry that is not a list of [start, end) spans", where, img
            )
        phrase.spans = spans
        phrase.text = " ".join(img["caption"][a:b] for a, b in spans)


def merge_boxes(boxes: Sequence[Sequence[float]]) -> list[float]:
    """Smallest xyxy box enclosing all `boxes` (MDETR's MERGED-BOXES ground truth)."""
    return [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]


def evaluate_phrase(
    ground_truth: JsonInput,
    predictions: JsonInput,
    *,
    ks: Sequence[int] = (1, 5, 10, -1),
    iou_threshold: float = 0.5,
    protocol: str = "any_box",
) -> dict:
    """Recall@k of ranked phrase boxes (see the module docstring for formats and protocols).

    Raises:
        EvaluationInputError: bad files, naming the file and the record.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    if any(k <= 0 and k != -1 for k in ks):
        raise ValueError(f"every k must be positive (or -1 for all boxes), got {list(ks)}")
    captions, gt_source = load_phrase_ground_truth(ground_truth)
    known = {(c.image_id, p.phrase_id) for c in captions for p in c.phrases}
    ranked = load_ranked_results(predictions, known, ("image_id", "phrase_id"), gt_source)
    recalled = {k: 0 for k in ks}
    total = 0
    for c in captions:
        for p in c.phrases:
            targets = [merge_boxes(p.boxes)] if protocol == "merged" else p.boxes
            boxes = [b for _, b in ranked.get((c.image_id, p.phrase_id), [])]
            for k, hit in hits_at_k(boxes, targets, ks, iou_threshold).items():
                recalled[k] += hit
            total += 1
    out: dict = {f"R@{k}": recalled[k] / total for k in ks}
    out["num_phrases"] = total
    return out
