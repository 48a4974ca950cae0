"""Referring expressions of the synthetic world: structure, text, parsing, resolution and generation.

Grammar (every generated expression follows it, and `parse` reads it back)::

    expression := noun_phrase [relation noun_phrase]
    noun_phrase := "the" [superlative] [size] [texture] [colour] (shape | "object")
    relation    := "left of" | "right of" | "above" | "below"
    superlative := "largest" | "smallest" | "leftmost" | "rightmost" | "topmost" | "bottommost"

e.g. ``"the small blue square left of the green star"``, ``"the largest red circle"``, ``"the medium
heart"``. `resolve` gives the indices of the objects an expression can denote (geometry words as defined
in `groundscope.data.scene`); `generate` only returns expressions whose resolution is exactly the target,
so uniqueness holds by construction and is checked again by the tests through ``parse`` + ``resolve`` on
the written annotations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from groundscope.data.records import Span
from groundscope.data.scene import RELATIONS, SUPERLATIVES, SceneObject, relation_holds, superlative_winners
from groundscope.data.vocab import COLOUR_NAMES, SHAPES, SIZE_NAMES, TEXTURES


@dataclass(frozen=True)
class Desc:
    """A noun phrase: the attributes it names (``None`` = not mentioned) and an optional superlative."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    texture: str | None = None
    superlative: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.shape is None or obj.shape == self.shape)
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size == self.size)
            and (self.texture is None or obj.texture == self.texture)
        )

    def text(self) -> str:
        words = ["the", self.superlative, self.size, self.texture, self.colour, self.shape or "object"]
        return " ".join(w for w in words if w)


@dataclass(frozen=True)
class Expression:
    target: Desc
    relation: str | None = None
    anchor: Desc | None = None

    def render(self) -> tuple[str, Span]:
        """The text and the span of the target's noun phrase in it."""
        head = self.target.text()
        if self.relation is None:
            return head, (0, len(head))
        assert self.anchor is not None
        return f"{head} {self.relation} {self.anchor.text()}", (0, len(head))


# ----------------------------------------------------------------------------------------------- parsing


def _parse_desc(words: list[str], pos: int, text: str) -> tuple[Desc, int]:
    if pos >= len(words) or words[pos] != "the":
        raise ValueError(f"expected 'the' at word {pos} of {text!r}")
    pos += 1
    slots: dict[str, str] = {}
    for key, options in (("superlative", SUPERLATIVES), ("size", SIZE_NAMES), ("texture", TEXTURES),
                         ("colour", COLOUR_NAMES)):
        if pos < len(words) and words[pos] in options:
            slots[key] = words[pos]
            pos += 1
    if pos < len(words) and (words[pos] in SHAPES or words[pos] == "object"):
        shape = None if words[pos] == "object" else words[pos]
        return Desc(shape=shape, **slots), pos + 1
    raise ValueError(f"expected a shape or 'object' at word {pos} of {text!r}")


def parse(text: str) -> Expression:
    """Read an expression written by `Expression.render`; raises ValueError on anything else."""
    words = text.strip().split()
    target, pos = _parse_desc(words, 0, text)
    if pos == len(words):
        return Expression(target)
    for relation in RELATIONS:
        rel_words = relation.split()
        if words[pos : pos + len(rel_words)] == rel_words:
            anchor, end = _parse_desc(words, pos + len(rel_words), text)
            if end != len(words):
                raise ValueError(f"unexpected words after the anchor in {text!r}")
            return Expression(target, relation, anchor)
    raise ValueError(f"expected a relation at word {pos} of {text!r}")


# ----------------------------------------------------------------------------------------------- resolution


def _resolve_desc(desc: Desc, objects: Sequence[SceneObject], exclude: int | None = None,
                  keep=lambda i: True) -> list[int]:
    cands = [i for i, o in enumerate(objects) if i != exclude and desc.matches(o) and keep(i)]
    if desc.superlative:
        cands = superlative_winners(desc.superlative, objects, cands)
    return cands


def resolve(expr: Expression, objects: Sequence[SceneObject]) -> list[int]:
    """Indices of the objects ``expr`` may denote; exactly one index means the expression is unambiguous.

    With a relation, the anchor must itself resolve to exactly one object (else nothing is denoted); the
    relation filters the candidates before any superlative picks among them.
    """
    if expr.relation is None:
        return _resolve_desc(expr.target, objects)
    assert expr.anchor is not None
    anchors = _resolve_desc(expr.anchor, objects)
    if len(anchors) != 1:
        return []
    a = anchors[0]
    return _resolve_desc(expr.target, objects, exclude=a,
                         keep=lambda i: relation_holds(expr.relation, objects[i], objects[a]))


# ----------------------------------------------------------------------------------------------- generation


def _unique_name(index: int, objects: Sequence[SceneObject]) -> Desc | None:
    """Shortest plain description that picks out ``objects[index]`` alone (for use as an anchor)."""
    o = objects[index]
    for desc in (Desc(shape=o.shape), Desc(shape=o.shape, colour=o.colour)):
        if _resolve_desc(desc, objects) == [index]:
            return desc
    return None


def candidates(index: int, objects: Sequence[SceneObject]) -> dict[str, list[Expression]]:
    """All unambiguous expressions for ``objects[index]``, grouped by what they use.

    Groups: ``attribute`` (colour/shape), ``detailed`` (adds size or texture), ``superlative`` and
    ``relation``. Superlatives are only offered when the noun phrase without them is ambiguous (so they are
    needed). Relations are offered then too, and also after the full class name ("the red circle left of
    the green star"), RefCOCO-style, so relation words are common in the data even where the class alone
    would do; the target's noun phrase is always the first one.
    """
    o = objects[index]
    groups: dict[str, list[Expression]] = {"attribute": [], "detailed": [], "superlative": [], "relation": []}

    def add(group: str, expr: Expression) -> None:
        if resolve(expr, objects) == [index]:
            groups[group].append(expr)

    full, shape_only = Desc(shape=o.shape, colour=o.colour), Desc(shape=o.shape)
    for d in (full, shape_only, Desc(colour=o.colour)):
        add("attribute", Expression(d))
    for d in (Desc(shape=o.shape, colour=o.colour, size=o.size),
              Desc(shape=o.shape, colour=o.colour, texture=o.texture), Desc(shape=o.shape, size=o.size)):
        add("detailed", Expression(d))
    for d in (full, shape_only):
        ambiguous = len(_resolve_desc(d, objects)) >= 2
        if ambiguous:
            for sup in SUPERLATIVES:
                add("superlative", Expression(Desc(shape=d.shape, colour=d.colour, superlative=sup)))
        if not ambiguous and d is not full:
            continue
        for a in range(len(objects)):
            anchor = _unique_name(a, objects) if a != index else None
            if anchor is None:
                continue
            for relation in RELATIONS:
                if relation_holds(relation, o, objects[a]):
                    add("relation", Expression(d, relation, anchor))
    return groups


# Relations get more weight: they are the hardest words to learn and the rarest to be available.
GROUP_WEIGHTS = {"attribute": 1.0, "detailed": 1.0, "superlative": 1.0, "relation": 1.5}


def generate(index: int, objects: Sequence[SceneObject], rng: np.random.Generator) -> Expression | None:
    """One unambiguous expression for ``objects[index]``: a non-empty group drawn by `GROUP_WEIGHTS`, then a
    uniformly random member; ``None`` when nothing in the grammar singles the object out (e.g. two
    same-looking objects whose boxes overlap on both axes)."""
    groups = {name: exprs for name, exprs in candidates(index, objects).items() if exprs}
    if not groups:
        return None
    names = list(groups)
    weights = np.array([GROUP_WEIGHTS[name] for name in names])
    group = groups[names[int(rng.choice(len(names), p=weights / weights.sum()))]]
    return group[int(rng.integers(len(group)))]
