"""Format-neutral annotation records that every reader returns and every writer takes.

One `ImageRecord` per image holds its `Instance` list; the formats differ only in which fields they keep:

=============  ======================================================================================
COCO           boxes (xywh on disk), category ids/names, plus optional phrase/description/attributes
ODVG detection boxes, integer labels, category names (+ a ``label_map`` file ``{"0": "red circle"}``)
ODVG grounding caption + regions (box, phrase, ``tokens_positive`` character spans into the caption)
GroundingCap   ODVG grounding + a ``conversations`` long caption (LLMDet's GroundingCap-1M)
RefCOCO/MDETR  one expression and one target box per entry (`RefExp`), see `groundscope.data.refexp`
=============  ======================================================================================

Boxes are absolute-pixel ``(x1, y1, x2, y2)`` floats everywhere in Python; COCO's xywh exists only on disk.
Spans are ``(start, end)`` character offsets, end exclusive, into ``ImageRecord.caption`` (or
``RefExp.expression``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from groundscope.data.errors import DataFormatError

Box = tuple[float, float, float, float]
Span = tuple[int, int]


@dataclass
class Instance:
    """One annotated object.

    Attributes:
        bbox: ``(x1, y1, x2, y2)`` in pixels.
        label: index into the dataset's ``categories`` (ODVG label), or ``None`` when only a phrase is known.
        category: class name (``"red circle"``), or ``None`` for pure grounding regions.
        phrase: short phrase naming this object in the image caption (``"small striped red circle"``).
        tokens_positive: spans of ``phrase`` inside ``ImageRecord.caption``.
        description: detailed region description (several attributes and surroundings).
        attributes: free-form extra facts (the synthetic world stores colour/shape/size/texture here).
        id: annotation id (COCO ``id``), kept so round trips preserve it.
    """

    bbox: Box
    label: int | None = None
    category: str | None = None
    phrase: str | None = None
    tokens_positive: list[Span] = field(default_factory=list)
    description: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass
class ImageRecord:
    """One image and everything annotated on it.

    Attributes:
        filename: image path relative to the dataset root (the annotation file's folder).
        height, width: image size in pixels.
        instances: the annotated objects.
        image_id: COCO image id (``None`` if the source had none; writers number images 1..N then).
        caption: grounding caption the instances' ``tokens_positive`` point into.
        long_caption: detailed image-level caption (GroundingCap ``conversations`` answer, COCO ``caption``).
    """

    filename: str
    height: int
    width: int
    instances: list[Instance] = field(default_factory=list)
    image_id: int | None = None
    caption: str | None = None
    long_caption: str | None = None


@dataclass
class Dataset:
    """A list of images plus the detection vocabulary.

    Attributes:
        images: the image records, in file order.
        categories: class names; ``Instance.label`` indexes this list.
        category_ids: the integer id each category had in its source file (COCO ``category_id`` / ODVG
            ``label``), kept so ids survive conversions both ways; ``None`` means the defaults: COCO ids
            ``label + 1`` (COCO counts from 1) and ODVG labels ``label`` (mmdet's ``{"0": ...}`` maps).
        skipped: records a reader dropped because they were malformed (``skip_invalid=True``).
    """

    images: list[ImageRecord] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    category_ids: list[int] | None = None
    skipped: int = 0

    def category_id(self, label: int) -> int:
        """COCO category id of ``label``."""
        return self.category_ids[label] if self.category_ids is not None else label + 1

    def odvg_label(self, label: int) -> int:
        """ODVG integer label of ``label``."""
        return self.category_ids[label] if self.category_ids is not None else label


@dataclass
class RefExp:
    """One referring expression with exactly one target (an MDETR ``final_refexp`` image entry + its box).

    Attributes:
        expression: the text (``"the small blue square left of the green star"``).
        bbox: target box ``(x1, y1, x2, y2)`` in pixels.
        filename, height, width: the image the expression is about.
        image_id: id of the underlying image (MDETR ``original_img_id``).
        tokens_positive: spans of the target's head phrase inside ``expression``.
        category: target class name, if known.
        id: id of this expression entry (MDETR image-entry ``id``), kept across round trips.
        ann_id: id of the target annotation in the image's COCO file, if known.
    """

    expression: str
    bbox: Box
    filename: str
    height: int
    width: int
    image_id: int
    tokens_positive: list[Span] = field(default_factory=list)
    category: str | None = None
    id: int | None = None
    ann_id: int | None = None


@dataclass
class RefExpSet:
    """Referring expressions plus the category list (MDETR files carry COCO categories)."""

    refs: list[RefExp] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    skipped: int = 0


# ----------------------------------------------------------------------------------------------- validation
# Validators raise an unlocated DataFormatError; the readers add file and line/index.


def require(record: Any, keys: Sequence[str], what: str = "record") -> None:
    """Fail unless ``record`` is a dict holding every key in ``keys``."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{what} must be a JSON object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataFormatError(f"{what} is missing required key(s) {missing}")


def _finite4(value: Any, what: str) -> list[float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise DataFormatError(f"{what} must be 4 finite numbers, got {value!r}")
    return [float(v) for v in value]


def check_xyxy(value: Any, what: str = "bbox") -> Box:
    """Parse an ``[x1, y1, x2, y2]`` box; requires x2 > x1 and y2 > y1."""
    x1, y1, x2, y2 = _finite4(value, what)
    if not (x2 > x1 and y2 > y1):
        raise DataFormatError(f"{what} {value!r} is not [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
    return (x1, y1, x2, y2)


def check_xywh(value: Any, what: str = "bbox") -> Box:
    """Parse a COCO ``[x, y, w, h]`` box (w, h > 0) and return it as xyxy."""
    x, y, w, h = _finite4(value, what)
    if not (w > 0 and h > 0):
        raise DataFormatError(f"{what} {value!r} is not COCO [x, y, w, h] with w > 0 and h > 0")
    return (x, y, x + w, y + h)


def check_spans(value: Any, text: str, what: str = "tokens_positive") -> list[Span]:
    """Parse ``[[start, end], ...]`` character spans that must lie inside ``text`` with start < end."""
    if not isinstance(value, (list, tuple)):
        raise DataFormatError(f"{what} must be a list of [start, end] pairs, got {value!r}")
    spans: list[Span] = []
    for span in value:
        if (
            not isinstance(span, (list, tuple))
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            raise DataFormatError(f"{what} entry {span!r} is not an integer [start, end] pair")
        start, end = span
        if not (0 <= start < end <= len(text)):
            raise DataFormatError(f"{what} span {list(span)} is outside the caption (length {len(text)})")
        spans.append((start, end))
    return spans


def check_size(record: dict, keys: tuple[str, str] = ("height", "width")) -> tuple[int, int]:
    """Positive integer image height and width."""
    out = []
    for key in keys:
        v = record[key]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise DataFormatError(f"{key} must be a positive integer, got {v!r}")
        out.append(v)
    return out[0], out[1]


def check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataFormatError(f"{what} must be a string, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------- helpers


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def clean_number(v: float) -> int | float:
    """Whole floats as ints and the rest rounded to 2 decimals, so files are short and byte-stable."""
    r = round(float(v), 2)
    return int(r) if r == int(r) else r


def clean_box(box: Sequence[float]) -> list[int | float]:
    return [clean_number(v) for v in box]


def build_caption(phrases: Sequence[str], sep: str = ". ", end: str = ".") -> tuple[str, list[Span]]:
    """Join phrases GLIP-style (``"red circle. blue square."``) and return the caption and each phrase's span.

    Used to give grounding formats a caption when the source (COCO, ODVG detection) has only class names.
    """
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    for i, phrase in enumerate(phrases):
        if i:
            parts.append(sep)
            pos += len(sep)
        spans.append((pos, pos + len(phrase)))
        parts.append(phrase)
        pos += len(phrase)
    return "".join(parts) + (end if phrases else ""), spans
