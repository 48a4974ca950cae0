"""`RuleJudge`: the synthetic world's questions (those with a ``rule``) answered by exact words, no language
model. The object's own attributes are read from the description's *subject* (`description_subject`): its
first sentence up to the first relation word ("left of", "above", "behind" ...), because the rest of a
description names the neighbours' colours and shapes ("It is left of the large green star")."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from groundscope.data.scene import RELATIONS
from groundscope.data.vocab import COLOUR_NAMES, SHAPES, SIZE_NAMES, TEXTURES
from groundscope.evaluate.dlc.judging import DlcJudgeError
from groundscope.evaluate.dlc.questions import LETTERS, NOT_RECOGNISED, RECOGNISED, RECOGNITION, Question, plural

RELATION_WORDS = (*RELATIONS, "next to")
_SUBJECT_END = re.compile(r"\b(?:left of|right of|above|below|next to|behind|covers|covering|near|beside|"
                          r"under|over|on top of)\b")
_ATTRIBUTES = {"colour": COLOUR_NAMES, "shape": SHAPES, "size": SIZE_NAMES, "pattern": TEXTURES}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def description_subject(description: str) -> str:
    """The part of a description about the object itself: the first sentence, cut at the first relation
    word. ``"A small blue square with a striped pattern, in the top left. It is left of the green star."``
    -> ``"a small blue square with a striped pattern, in the top left"``."""
    first = re.split(r"[.!?\n]", description.strip().lower(), maxsplit=1)[0]
    cut = _SUBJECT_END.search(first)
    return first[: cut.start()] if cut else first


def _has_shape(words: Sequence[str], shape: str) -> bool:
    return shape in words or plural(shape) in words


def _stated(words: Sequence[str], attribute: str) -> list[str]:
    if attribute == "shape":
        return [s for s in SHAPES if _has_shape(words, s)]
    return [v for v in _ATTRIBUTES[attribute] if v in words]


def stated_relations(description: str, target: Mapping[str, str]) -> list[str]:
    """Relation words the description puts before a phrase naming `target` ("left of the large green star",
    "above a green star"); a phrase with a different size word names another object and is skipped."""
    sizes = "|".join(SIZE_NAMES)
    pattern = (rf"\b({'|'.join(RELATION_WORDS)})\s+(?:the|a|an)\s+((?:[a-z-]+\s+){{0,2}}?)"
               rf"{re.escape(target['colour'])}\s+{re.escape(target['shape'])}\b")
    out = []
    for m in re.finditer(pattern, description.lower()):
        size = re.search(rf"\b({sizes})\b", m.group(2))
        if size is None or size.group(1) == target["size"]:
            out.append(m.group(1))
    return out


class RuleJudge:
    """Answers the synthetic world's questions (those with a ``rule``) by exact words, no language model.

    The object's attributes are the vocabulary words in the description's subject (`description_subject`):

    * colour / shape / size / pattern: the right word stated -> the 1 choice; another word of that attribute
      but not the right one -> -1; none -> 0.5 ("not mentioned, but the object is"); an empty description
      -> 0 ("the object is not mentioned"). Shapes count in the plural too; only canonical words count
      (no synonyms: "crimson" is not "red").
    * relation: a relation word before a phrase naming the target (`stated_relations`): one that holds -> 1,
      only directional ones that do not hold -> -1, none or only "next to" -> 0.5.
    * wrong colour (negative): the claimed colour in the subject -> -1, else 1; empty description -> 0.
    * absent shape (negative): the shape (or its plural) anywhere in the description -> -1, else 1.
    * recognition: the region's shape in the subject -> Yes, else No.

    The reply is the chosen choice as ``"<letter>. <text>"``.
    """

    name = "rules"

    def outcome(self, description: str, question: Question) -> float | str:
        """The value of the choice the rules pick."""
        rule = question.rule
        if rule is None:
            raise DlcJudgeError("RuleJudge answers only the synthetic world's questions (entries with a 'rule'); "
                                "judge DLC-Bench's own questions with --judge-url or --judge-local")
        kind = rule["kind"]
        subject = _words(description_subject(description))
        empty = not _words(description)
        if kind == RECOGNITION:
            return RECOGNISED if _has_shape(subject, rule["value"]) else NOT_RECOGNISED
        if kind in _ATTRIBUTES:
            stated = _stated(subject, kind)
            if rule["value"] in stated:
                return 1
            if stated:
                return -1
            return 0 if empty else 0.5
        if kind == "relation":
            stated = stated_relations(description, rule["target"])
            if any(r in rule["holds"] for r in stated):
                return 1
            if any(r in RELATIONS for r in stated):
                return -1
            return 0 if empty else 0.5
        if kind == "wrong colour":
            if empty:
                return 0
            return -1 if rule["value"] in subject else 1
        if kind == "absent shape":
            return -1 if _has_shape(_words(description), rule["value"]) else 1
        raise DlcJudgeError(f"RuleJudge has no rule of kind {kind!r}; known: recognition, "
                            f"{', '.join(_ATTRIBUTES)}, relation, wrong colour, absent shape")

    def reply(self, description: str, question: Question) -> str:
        value = self.outcome(description, question)
        for k, (text, v) in enumerate(question.choices):
            if v == value:
                return f"{LETTERS[k]}. {text}"
        raise DlcJudgeError(f"question {question.text!r} ({question.subtype}) has no choice worth {value!r}")
