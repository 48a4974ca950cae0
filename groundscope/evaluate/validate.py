"""Loading and checking annotation and result files before any metric code sees them.

The official evaluators fail on bad input with bare asserts (``Results do not correspond to current coco
set``), ``KeyError``s deep inside, or worse, silently: pycocotools ignores results whose category is not in
the ground truth and takes a negative-size box without complaint. Every check here raises `EvaluationInputError`,
whose message names the file, the offending record (by its position, e.g. ``annotations[12]``, and an
excerpt) and what is wrong with it.

File formats (all JSON):

* COCO ground truth: ``{"images": [{"id": int, "width", "height", "file_name", ...}],
  "annotations": [{"id": int, "image_id": int, "category_id": int, "bbox": [x, y, w, h], "area"?,
  "iscrowd"?, "segmentation"?}], "categories": [{"id": int, "name": str, ...}]}``. A missing ``area`` is
  filled with the box area ``w * h`` and a missing ``iscrowd`` with 0. LVIS adds per image
  ``neg_category_ids`` / ``not_exhaustive_category_ids`` and per category ``frequency`` in {r, c, f}.
* COCO results: a non-empty list of ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h],
  "score": float}`` (and/or ``"segmentation"``: a compressed RLE ``{"size": [h, w], "counts": str}``).
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JsonInput = str | Path | dict | list


class EvaluationInputError(ValueError):
    """A ground-truth or results file that cannot be scored as it is.

    Attributes:
        source: the file (or ``<results>`` / ``<ground truth>`` for in-memory input).
        where: the record's position, e.g. ``annotations[12]`` or ``results[3]``; empty for file-level errors.
        reason: what is wrong.
    """

    def __init__(self, source: str, reason: str, where: str = "", record: Any = None) -> None:
        self.source, self.where, self.reason = str(source), where, reason
        location = where + (" " + _excerpt(record) if record is not None else "")
        super().__init__(f"{source}: {location}: {reason}" if location else f"{source}: {reason}")


def _excerpt(record: Any, limit: int = 160) -> str:
    """A one-line JSON excerpt of a record (masks and polygons can be megabytes long)."""
    try:
        text = json.dumps(record, separators=(", ", ": "))
    except (TypeError, ValueError):
        text = repr(record)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_json(obj: JsonInput, default_name: str) -> tuple[Any, str]:
    """Parse a JSON file (or take an in-memory object) -> (data, source name for messages).

    In-memory objects are deep-copied: the evaluators add keys (``area``, ``id``, ``ignore``) to the records
    they are given, and a caller's data must come back untouched.
    """
    if isinstance(obj, (dict, list)):
        return copy.deepcopy(obj), default_name
    path = Path(obj)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise EvaluationInputError(str(path), "file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise EvaluationInputError(str(path), f"cannot be read ({type(e).__name__}: {e})") from None
    try:
        return json.loads(text), str(path)
    except json.JSONDecodeError as e:
        raise EvaluationInputError(str(path), f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None


# ---------------------------------------------------------------------------------------------- field checks
def is_number(x: Any) -> bool:
    """A finite int or float (JSON ``true`` is a bool, not a number)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def xywh_problem(bbox: Any) -> str | None:
    """Why `bbox` is not a valid COCO ``[x, y, width, height]`` box, or None when it is."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "'bbox' must be a list of 4 numbers [x, y, width, height]"
    if not all(is_number(v) for v in bbox):
        return "'bbox' holds a value that is not a finite number"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"box has negative size (width {bbox[2]}, height {bbox[3]}; 'bbox' is [x, y, width, height])"
    return None


def _rle_problem(segm: Any, image: dict | None) -> str | None:
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        return "'segmentation' of a result must be a compressed RLE {'size': [h, w], 'counts': ...}"
    size = segm["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_id(v) and v > 0 for v in size)):
        return "'segmentation.size' must be [height, width]"
    if image is not None and "height" in image and "width" in image and list(size) != [image["height"], image["width"]]:
        return f"mask size {list(size)} differs from the image's [height, width] [{image['height']}, {image['width']}]"
    return None


def _require_list(data: dict, key: str, source: str) -> list:
    if key not in data:
        raise EvaluationInputError(source, f"missing the top-level '{key}' list")
    if not isinstance(data[key], list):
        raise EvaluationInputError(source, f"top-level '{key}' must be a list, not {type(data[key]).__name__}")
    return data[key]


# ---------------------------------------------------------------------------------------------- ground truth
@dataclass
class DetectionGroundTruth:
    """A checked COCO/LVIS ground truth.

    Attributes:
        data: the COCO dict (our own copy, with ``area``/``iscrowd`` filled in).
        source: file name for messages.
        images: image id -> image record.
        categories: category id -> category record, in ascending id order.
        has_masks: every annotation carries a ``segmentation``.
    """

    data: dict
    source: str
    images: dict[int, dict] = field(default_factory=dict)
    categories: dict[int, dict] = field(default_factory=dict)
    has_masks: bool = False

    @property
    def category_ids(self) -> list[int]:
        return list(self.categories)

    def category_name(self, cat_id: int) -> str:
        return str(self.categories[cat_id].get("name", cat_id))


def check_images(images: list, source: str) -> dict[int, dict]:
    """Image id -> record; each image must be an object with a unique integer id."""
    out: dict[int, dict] = {}
    for i, img in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(img, dict):
            raise EvaluationInputError(source, "an image must be a JSON object", where, img)
        if not is_id(img.get("id")):
            raise EvaluationInputError(source, "an image needs an integer 'id'", where, img)
        if img["id"] in out:
            raise EvaluationInputError(source, f"duplicate image id {img['id']}", where, img)
        out[img["id"]] = img
    return out


def load_mdetr_file(ground_truth: JsonInput, what: str) -> tuple[dict, str, dict[int, dict]]:
    """Read an MDETR-style file (referring expressions, phrase grounding): a JSON object whose 'images' are the
    captions / expressions and whose 'annotations' are their boxes -> (data, source, {image id: image})."""
    data, source = load_json(ground_truth, "<ground truth>")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise EvaluationInputError(source, f"a {what} file is a JSON object with 'images' and 'annotations' lists")
    return data, source, check_images(data["images"], source)


def iter_annotations(data: dict, images: dict[int, dict], source: str) -> Iterator[tuple[str, dict, int]]:
    """(position, annotation, image id) of each annotation that is an object with a known image_id; anything
    else raises, naming the record."""
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise EvaluationInputError(source, "an annotation must be a JSON object", where, ann)
        image_id = ann.get("image_id")
        if not is_id(image_id) or image_id not in images:
            raise EvaluationInputError(source, f"image_id {image_id!r} is not in 'images'", where, ann)
        yield where, ann, image_id


def load_detection_ground_truth(gt: JsonInput, *, lvis: bool = False) -> DetectionGroundTruth:
    """Read and check a COCO (or, with `lvis`, LVIS) instances file.

    Raises:
        EvaluationInputError: naming the file and the first bad record.
    """
    data, source = load_json(gt, "<ground truth>")
    if not isinstance(data, dict):
        raise EvaluationInputError(source, f"a COCO ground-truth file is a JSON object, not a {type(data).__name__}")
    images = check_images(_require_list(data, "images", source), source)
    if not images:
        raise EvaluationInputError(source, "has no images")
    categories: dict[int, dict] = {}
    for i, cat in enumerate(_require_list(data, "categories", source)):
        where = f"categories[{i}]"
        if not isinstance(cat, dict) or not is_id(cat.get("id")):
            raise EvaluationInputError(source, "a category needs an integer 'id'", where, cat)
        if cat["id"] in categories:
            raise EvaluationInputError(source, f"duplicate category id {cat['id']}", where, cat)
        if lvis and cat.get("frequency") not in ("r", "c", "f"):
            raise EvaluationInputError(
                source, "an LVIS category needs 'frequency' in {r, c, f} (APr/APc/APf group by it)", where, cat
            )
        categories[cat["id"]] = cat
    if not categories:
        raise EvaluationInputError(source, "has no categories")
    if lvis:
        for i, img in enumerate(data["images"]):
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                if not isinstance(img.get(key), list):
                    raise EvaluationInputError(
                        source,
                        f"an LVIS image needs a '{key}' list (the federated protocol uses it)",
                        f"images[{i}]",
                        img,
                    )

    annotations = _require_list(data, "annotations", source)
    seen: set[int] = set()
    has_masks = bool(annotations)
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise EvaluationInputError(source, "an annotation must be a JSON object", where, ann)
        if not is_id(ann.get("id")):
            raise EvaluationInputError(source, "an annotation needs an integer 'id'", where, ann)
        if ann["id"] in seen:
            raise EvaluationInputError(source, f"duplicate annotation id {ann['id']}", where, ann)
        seen.add(ann["id"])
        if not is_id(ann.get("image_id")) or ann["image_id"] not in images:
            raise EvaluationInputError(source, f"image_id {ann.get('image_id')!r} is not in 'images'", where, ann)
        if not is_id(ann.get("category_id")) or ann["category_id"] not in categories:
            raise EvaluationInputError(
                source, f"category_id {ann.get('category_id')!r} is not in 'categories'", where, ann
            )
        problem = xywh_problem(ann.get("bbox"))
        if problem:
            raise EvaluationInputError(source, problem, where, ann)
        if "area" not in ann:
            # The area only picks the small/medium/large bucket; the box area is the usual stand-in.
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        elif not is_number(ann["area"]) or ann["area"] < 0:
            raise EvaluationInputError(source, "'area' must be a non-negative number", where, ann)
        ann.setdefault("iscrowd", 0)
        if ann["iscrowd"] not in (0, 1):
            raise EvaluationInputError(source, "'iscrowd' must be 0 or 1", where, ann)
        if not ann.get("segmentation"):
            has_masks = False
    if 0 in seen:
        # pycocotools (and faster-coco-eval, bit for bit) store the matched annotation id as the "matched" flag,
        # so a detection matched to id 0 counts as a false positive. We keep the official behaviour (published
        # numbers were computed that way) but say so.
        warnings.warn(
            f"{source}: annotation id 0 is present; the COCO evaluator treats a match to it as no match "
            "(as pycocotools does), so renumber annotation ids from 1 for an exact score",
            stacklevel=3,
        )
    ordered = dict(sorted(categories.items()))
    return DetectionGroundTruth(data=data, source=source, images=images, categories=ordered, has_masks=has_masks)


# ---------------------------------------------------------------------------------------------- results
def load_detection_results(
    results: JsonInput, gt: DetectionGroundTruth, *, need_masks: bool = False, allow_empty: bool = False
) -> tuple[list[dict], str]:
    """Read and check a COCO results list against a checked ground truth.

    `allow_empty`: an empty list is a valid answer (a model we ran found nothing: it scores 0); a results
    file handed in by a user must not be empty.

    Returns:
        (records, source). Records are our own copies.

    Raises:
        EvaluationInputError: empty list, a record that is not an object, an image or category id the ground
        truth does not have, a missing/negative/non-finite box, a non-finite score, a mask of the wrong size.
    """
    records, source = load_json(results, "<results>")
    if not (allow_empty and records == []):
        check_result_list(records, source)
    # The evaluators read the first record to decide how to read all of them (pycocotools' loadRes), so a file
    # must be consistent: boxes on all records or none, masks on all records or none.
    need_masks = need_masks or any(isinstance(r, dict) and "segmentation" in r for r in records)
    need_boxes = any(isinstance(r, dict) and "bbox" in r for r in records) or not need_masks
    for i, rec in enumerate(records):
        where = f"results[{i}]"
        if not isinstance(rec, dict):
            raise EvaluationInputError(source, "a result must be a JSON object", where, rec)
        image = gt.images.get(rec.get("image_id")) if is_id(rec.get("image_id")) else None
        if image is None:
            raise EvaluationInputError(
                source, f"image_id {rec.get('image_id')!r} is not an image of {gt.source}", where, rec
            )
        if not is_id(rec.get("category_id")) or rec["category_id"] not in gt.categories:
            raise EvaluationInputError(
                source, f"category_id {rec.get('category_id')!r} is not a category of {gt.source}", where, rec
            )
        if not is_number(rec.get("score")):
            raise EvaluationInputError(source, "'score' must be a finite number", where, rec)
        # A box is required unless the file holds mask results only (the evaluator then derives the boxes).
        if need_boxes:
            if "bbox" not in rec:
                raise EvaluationInputError(source, "other results carry a 'bbox' and this one has none", where, rec)
            problem = xywh_problem(rec["bbox"])
            if problem:
                raise EvaluationInputError(source, problem, where, rec)
        if need_masks:
            if "segmentation" not in rec:
                raise EvaluationInputError(
                    source, "no 'segmentation': mask results need a mask on every record", where, rec
                )
            problem = _rle_problem(rec["segmentation"], image)
            if problem:
                raise EvaluationInputError(source, problem, where, rec)
    return records, source


def check_result_list(records: Any, source: str) -> None:
    """A results file must be a non-empty JSON list (an empty one would score a silent 0)."""
    if not isinstance(records, list):
        raise EvaluationInputError(source, f"a results file is a JSON list of records, not a {type(records).__name__}")
    if not records:
        raise EvaluationInputError(source, "holds no results (an empty list would score 0 without saying why)")


def check_ranked_box(rec: Any, source: str, where: str) -> None:
    """Shared checks for refexp/phrase predictions: an object with a valid xywh ``bbox`` and a finite score."""
    if not isinstance(rec, dict):
        raise EvaluationInputError(source, "a result must be a JSON object", where, rec)
    problem = xywh_problem(rec.get("bbox"))
    if problem:
        raise EvaluationInputError(source, problem, where, rec)
    if not is_number(rec.get("score")):
        raise EvaluationInputError(source, "'score' must be a finite number", where, rec)


def xywh_to_xyxy(boxes: Iterable[Sequence[float]]) -> list[list[float]]:
    """COCO file boxes -> the xyxy boxes used everywhere inside groundscope."""
    return [[float(x), float(y), float(x) + float(w), float(y) + float(h)] for x, y, w, h in boxes]
