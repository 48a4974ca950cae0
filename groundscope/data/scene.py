"""Objects of a synthetic scene and the geometry words describe them with.

A `SceneObject` is what the renderer placed and what every text (phrase, description, caption, referring
expression) is generated from, so the words and the pixels cannot disagree. Spatial words are defined on
the *visible* boxes (what an annotator sees) with margins, so every relation is clear-cut in the image:

* ``a left of b``: ``a.x2 <= b.x1`` (a's box lies entirely to the left); ``right of``, ``above``
  (``a.y2 <= b.y1``) and ``below`` likewise.
* ``largest`` / ``smallest``: the footprint side of the winner differs from every other candidate's by at
  least 20 %; ``leftmost`` / ``rightmost`` / ``topmost`` / ``bottommost``: the winner's box centre is at least
  `POSITION_MARGIN` px beyond every other candidate's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from groundscope.data.records import Box
from groundscope.data.vocab import class_name

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SUPERLATIVES: tuple[str, ...] = ("largest", "smallest", "leftmost", "rightmost", "topmost", "bottommost")
SIZE_RATIO = 1.2
POSITION_MARGIN = 16.0


@dataclass
class SceneObject:
    """One rendered object.

    Attributes:
        colour, shape, size, texture: attribute words (see `groundscope.data.vocab`).
        side: footprint side in pixels (the shape is drawn to fill a side x side square before rotation).
        box: visible extent ``(x1, y1, x2, y2)`` in pixels: the annotated box.
        full_box: extent of the whole shape, occluded parts included.
        visible: fraction of the shape's pixels that no other object covers, in (0, 1].
        hidden_by: indices (in the scene list) of objects drawn over part of this one.
    """

    colour: str
    shape: str
    size: str
    texture: str
    side: int
    box: Box
    full_box: Box
    visible: float = 1.0
    hidden_by: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return class_name(self.colour, self.shape)

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0


def relation_holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """Whether ``a <relation> b`` is clearly true (boxes separated along the relation's axis)."""
    ax1, ay1, ax2, ay2 = a.box
    bx1, by1, bx2, by2 = b.box
    if relation == "left of":
        return ax2 <= bx1
    if relation == "right of":
        return ax1 >= bx2
    if relation == "above":
        return ay2 <= by1
    if relation == "below":
        return ay1 >= by2
    raise ValueError(f"unknown relation {relation!r}")


def superlative_winners(superlative: str, objects: Sequence[SceneObject], candidates: Sequence[int]) -> list[int]:
    """Candidates that could be "the <superlative>": one index when the winner is clear, else all near-ties."""
    if not candidates:
        return []
    if superlative in ("largest", "smallest"):
        sides = {i: float(objects[i].side) for i in candidates}
        sign = 1.0 if superlative == "largest" else -1.0
        best = max(candidates, key=lambda i: sign * sides[i])
        # A rival is a near-tie unless the winner beats it by SIZE_RATIO.
        if superlative == "largest":
            return [i for i in candidates if i == best or sides[best] < SIZE_RATIO * sides[i]]
        return [i for i in candidates if i == best or sides[i] < SIZE_RATIO * sides[best]]
    axis, sign = {
        "leftmost": (0, -1.0),
        "rightmost": (0, 1.0),
        "topmost": (1, -1.0),
        "bottommost": (1, 1.0),
    }[superlative]
    pos = {i: sign * objects[i].centre[axis] for i in candidates}
    best = max(candidates, key=lambda i: pos[i])
    return [i for i in candidates if i == best or pos[best] - pos[i] < POSITION_MARGIN]


def region_words(obj: SceneObject, width: int, height: int) -> str:
    """Coarse position in the image by thirds: ``"top left"``, ``"center"``, ``"bottom"`` ..."""
    cx, cy = obj.centre
    col = "left" if cx < width / 3 else "right" if cx > 2 * width / 3 else ""
    row = "top" if cy < height / 3 else "bottom" if cy > 2 * height / 3 else ""
    if row and col:
        return f"{row} {col}"
    return row or col or "center"


def region_phrase(obj: SceneObject, width: int, height: int) -> str:
    """`region_words` with its preposition: ``"in the top left"``, ``"at the top"``, ``"on the left"``."""
    words = region_words(obj, width, height)
    if words in ("top", "bottom"):
        return f"at the {words}"
    if words in ("left", "right"):
        return f"on the {words}"
    return f"in the {words}"
