"""GroundingCap JSON-lines (LLMDet's GroundingCap-1M): ODVG grounding record + a long image caption.

One JSON object per line: an ODVG grounding record (see `groundscope.data.odvg`) plus a LLaVA-style
``conversations`` list whose ``gpt`` turn is the detailed image-level caption::

    {"filename": "images/000000.png", "height": 360, "width": 480,
     "grounding": {"caption": "a small red circle and a blue star.",
                   "regions": [{"bbox": [x1, y1, x2, y2], "phrase": "small red circle",
                                "tokens_positive": [[2, 18]], "description": "..."}]},
     "conversations": [{"from": "human", "value": "<image>\\nDescribe the image in detail."},
                       {"from": "gpt", "value": "A 480 by 360 image of two objects ..."}]}

Region ``description`` (optional) is the region-level caption LLMDet's region loss asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundscope.data.errors import DataFormatError
from groundscope.data.jsonio import iter_jsonl, parse_records, write_jsonl
from groundscope.data.odvg import assign_labels_from_categories, grounding_entry, parse_grounding
from groundscope.data.records import Dataset, ImageRecord, require

PROMPT = "<image>\nDescribe the image in detail."


def parse_groundingcap(raw: Any) -> ImageRecord:
    """One GroundingCap record -> `ImageRecord` with ``long_caption`` set."""
    image = parse_grounding(raw)
    require(raw, ("conversations",))
    conv = raw["conversations"]
    if not isinstance(conv, list) or not conv:
        raise DataFormatError("conversations must be a non-empty list of {from, value} turns")
    answers = []
    for turn in conv:
        require(turn, ("from", "value"), "conversation turn")
        if not isinstance(turn["value"], str):
            raise DataFormatError(f"conversation value must be a string, got {turn['value']!r}")
        if turn["from"] == "gpt":
            answers.append(turn["value"])
    if not answers:
        raise DataFormatError("conversations has no 'gpt' turn holding the long caption")
    image.long_caption = "\n".join(answers)
    return image


def read_groundingcap(path: str | Path, skip_invalid: bool = False) -> Dataset:
    """Read a GroundingCap ``.jsonl``; errors name the file and 1-based line (or are counted when skipping)."""
    path = Path(path)
    images, skipped = parse_records(iter_jsonl(path), parse_groundingcap,
                                    lambda e, line: e.located(path, line=line), skip_invalid)
    dataset = Dataset(images=images, skipped=skipped)
    assign_labels_from_categories(dataset)
    return dataset


def groundingcap_entry(image: ImageRecord, categories: list[str] = ()) -> dict:
    """The GroundingCap record of ``image``. Without a ``long_caption`` the grounding caption stands in,
    because the format needs one and a plain detection source (COCO) has nothing longer."""
    entry = grounding_entry(image, categories)
    long_caption = image.long_caption if image.long_caption is not None else entry["grounding"]["caption"]
    entry["conversations"] = [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": long_caption}]
    return entry


def write_groundingcap(path: str | Path, dataset: Dataset) -> Path:
    return write_jsonl(path, (groundingcap_entry(im, dataset.categories) for im in dataset.images))
