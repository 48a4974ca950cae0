"""Word-level check of generated image captions against a synthetic scene: does the caption name each object's
colour and shape together ("... a medium blue circle ...")?

A colour word and a shape word anywhere in the caption would credit "a red square and a blue circle" with a
red circle, so an object counts as named only when its colour is followed by its shape with at most two words
between them (size and texture: "blue checkered circle", "large dotted green circle" -> "green circle").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CaptionScore:
    """Objects named by a caption.

    Attributes:
        named: per object "colour shape", whether the caption names it.
    """

    named: dict[str, bool]

    @property
    def rate(self) -> float:
        return sum(self.named.values()) / len(self.named) if self.named else 1.0


def names_object(caption: str, colour: str, shape: str, gap: int = 2) -> bool:
    """Whether `caption` has `colour` followed by `shape` with at most `gap` words between (case-insensitive)."""
    pattern = rf"\b{re.escape(colour.lower())}\b(?:\s+[a-z-]+){{0,{gap}}}?\s+{re.escape(shape.lower())}s?\b"
    return re.search(pattern, caption.lower()) is not None


def score_caption(caption: str, categories: list[str]) -> CaptionScore:
    """`categories`: the scene's objects as "colour shape" names (repeats allowed: two red circles are two
    objects, both named when the caption names a red circle)."""
    named = {}
    for k, cat in enumerate(categories):
        colour, _, shape = cat.partition(" ")
        named[f"{k}:{cat}"] = names_object(caption, colour, shape)
    return CaptionScore(named)


def scene_categories(groundingcap_jsonl: str | Path) -> dict[str, list[str]]:
    """file name -> the "colour shape" category of each object, from a synthetic world's groundingcap.jsonl."""
    out = {}
    with open(groundingcap_jsonl, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out[rec["filename"]] = [r["category"] for r in rec["grounding"]["regions"]]
    return out
