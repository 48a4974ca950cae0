"""Text about a synthetic scene: short phrases, region descriptions, grounding captions, image captions.

All of it is derived from the `SceneObject` list, so every attribute and relation stated is true of the
pixels. Examples for one scene::

    short phrase      "small striped blue square"
    description       "A small blue square with a striped pattern, in the top left of the image. It is left
                       of the large green star and above the red circle. It is partly hidden behind the
                       large green star."
    grounding caption "a small striped blue square, a large green star and a medium red circle."
    image caption     "A 480 by 360 image of three objects on a light gray mottled background. In the top
                       left there is a small blue square with a striped pattern, left of the large green
                       star, partly hidden behind the large green star. ... From left to right: the small
                       blue square, the large green star and the medium red circle. ..."
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from groundscope.data.records import Span
from groundscope.data.scene import RELATIONS, SceneObject, region_phrase, relation_holds, superlative_winners

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def short_phrase(o: SceneObject) -> str:
    """``"small striped blue square"`` (the texture word is left out for plain objects)."""
    words = [o.size, None if o.texture == "plain" else o.texture, o.colour, o.shape]
    return " ".join(w for w in words if w)


def _the(o: SceneObject) -> str:
    return f"the {o.size} {o.colour} {o.shape}"


def _texture_words(o: SceneObject) -> str:
    return "a plain fill" if o.texture == "plain" else f"a {o.texture} pattern"


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _distance(a: SceneObject, b: SceneObject) -> float:
    (ax, ay), (bx, by) = a.centre, b.centre
    return math.hypot(ax - bx, ay - by)


def _relation_to(a: SceneObject, b: SceneObject) -> str:
    """The clearest relation word from a to b; "next to" when the boxes overlap on both axes."""
    held = [r for r in RELATIONS if relation_holds(r, a, b)]
    return held[0] if held else "next to"


def neighbours(index: int, objects: Sequence[SceneObject], k: int = 2) -> list[int]:
    """Indices of the ``k`` objects whose centres are nearest to ``objects[index]``."""
    others = [j for j in range(len(objects)) if j != index]
    return sorted(others, key=lambda j: (_distance(objects[index], objects[j]), j))[:k]


def _covers(index: int, objects: Sequence[SceneObject]) -> list[int]:
    return [j for j, o in enumerate(objects) if index in o.hidden_by]


def describe(index: int, objects: Sequence[SceneObject], width: int, height: int) -> str:
    """Detailed description of one object: its attributes, where it is, its neighbours and occlusions."""
    o = objects[index]
    parts = [f"A {o.size} {o.colour} {o.shape} with {_texture_words(o)}, {region_phrase(o, width, height)} "
             f"of the image."]
    rel = [f"{_relation_to(o, objects[j])} {_the(objects[j])}" for j in neighbours(index, objects)]
    if rel:
        parts.append(f"It is {_join(rel)}.")
    if o.hidden_by:
        parts.append(f"It is partly hidden behind {_join([_the(objects[j]) for j in o.hidden_by])}.")
    covered = _covers(index, objects)
    if covered:
        parts.append(f"It partly covers {_join([_the(objects[j]) for j in covered])}.")
    if len(objects) == 1:
        parts.append("It is the only object in the image.")
    return " ".join(parts)


def left_to_right(objects: Sequence[SceneObject]) -> list[int]:
    return sorted(range(len(objects)), key=lambda i: (objects[i].centre[0], objects[i].centre[1], i))


def grounding_caption(objects: Sequence[SceneObject]) -> tuple[str, list[list[Span]]]:
    """``"a small blue square, a large green star and a red circle."`` listing objects left to right.

    Returns the caption and, per object (in the input order), the span of its short phrase.
    """
    order = left_to_right(objects)
    spans: list[list[Span]] = [[] for _ in objects]
    text = ""
    for rank, i in enumerate(order):
        if rank:
            text += " and " if rank == len(order) - 1 else ", "
        text += "a "
        phrase = short_phrase(objects[i])
        spans[i] = [(len(text), len(text) + len(phrase))]
        text += phrase
    return text + ".", spans


def image_caption(objects: Sequence[SceneObject], width: int, height: int, background: str) -> str:
    """GroundingCap-style detailed caption: every object with all its attributes and relative positions."""
    n = len(objects)
    noun = "object" if n == 1 else "objects"
    count = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    sentences = [f"A {width} by {height} image of {count} {noun} on a {background} background."]
    # Reading order: by rows of thirds, then left to right.
    reading = sorted(range(n), key=lambda i: (int(objects[i].centre[1] * 3 // height), objects[i].centre[0], i))
    for i in reading:
        o = objects[i]
        where = region_phrase(o, width, height)
        clauses = [f"{where[0].upper()}{where[1:]} there is a {o.size} {o.colour} {o.shape} with "
                   f"{_texture_words(o)}"]
        near = neighbours(i, objects, k=1)
        if near:
            clauses.append(f"{_relation_to(o, objects[near[0]])} {_the(objects[near[0]])}")
        if o.hidden_by:
            clauses.append(f"partly hidden behind {_join([_the(objects[j]) for j in o.hidden_by])}")
        sentences.append(", ".join(clauses) + ".")
    if n >= 2:
        sentences.append(f"From left to right: {_join([_the(objects[i]) for i in left_to_right(objects)])}.")
        # Superlatives only when clear-cut (same margins as the referring expressions use).
        for superlative, word in (("topmost", "highest"), ("bottommost", "lowest"), ("largest", "biggest")):
            winners = superlative_winners(superlative, objects, list(range(n)))
            if len(winners) == 1:
                sentences.append(f"The {word} is {_the(objects[winners[0]])}.")
    return " ".join(sentences)
