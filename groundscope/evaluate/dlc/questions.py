"""The question model of DLC-Bench: a multiple-choice `Question` about one region (its kinds, its choice
letters and their scores), the recognition question asked before a region's own, and the English article and
plural helpers its wording needs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

QUESTION_TYPES = ("positive", "negative")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RECOGNITION = "recognition"
RECOGNISED, NOT_RECOGNISED = "correct", "incorrect"


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about a region, as qa.json stores it.

    Attributes:
        text: the question ("Which of the following is applicable to the description?").
        choices: ``(text, value)`` pairs in letter order A, B, ...; the value is the score (a number), or
            ``"correct"`` / ``"incorrect"`` for the recognition question.
        kind: ``"positive"``, ``"negative"`` or ``"recognition"`` (qa.json's ``type``).
        subtype: qa.json's optional ``subtype`` ("negative part", "salient negative", ...).
        rule: what a synthetic-world question checks, for `RuleJudge` (``{"kind": "colour", "value":
            "red"}``); ``None`` for DLC-Bench's own questions. LLM judges never see it.
    """

    text: str
    choices: tuple[tuple[str, float | str], ...]
    kind: str
    subtype: str | None = None
    rule: Mapping[str, Any] | None = None

    def as_dict(self) -> dict:
        """The qa.json entry (``rule`` only when set)."""
        out: dict[str, Any] = {"question": self.text, "choices": [[t, v] for t, v in self.choices],
                               "type": self.kind}
        if self.subtype is not None:
            out["subtype"] = self.subtype
        if self.rule is not None:
            out["rule"] = dict(self.rule)
        return out


def _article(noun: str) -> str:
    """"a" or "an" before `noun` by its sound (the common exceptions of English spelling included)."""
    word = noun.strip().lower()
    if re.match(r"(hour|honest|honou?r|heir)", word):
        return "an"
    if re.match(r"(uni|use|usu|ura|euro|eu|one|once|ubiq|ute)", word):
        return "a"
    return "an" if word[:1] in "aeiou" else "a"


_IRREGULAR_PLURALS = {"people", "children", "men", "women", "mice", "geese", "feet", "teeth", "sheep", "fish",
                      "deer", "cattle", "police", "scissors", "glasses", "pants", "trousers", "jeans", "shorts"}
_SINGULAR_S = ("ss", "us", "is", "ous", "ics")


def _is_plural(name: str) -> bool:
    """Whether the class name's head noun is plural ("pants" yes, "bus", "glass" no). The reference asks the
    `inflect` package, used here when installed; otherwise a suffix rule that agrees on ordinary nouns."""
    head = name.strip().split()[-1].lower() if name.strip() else ""
    if head == "bus":  # the reference's own exception to inflect
        return False
    try:
        import inflect  # optional: not a dependency
    except ImportError:
        if head in _IRREGULAR_PLURALS:
            return True
        return head.endswith("s") and not head.endswith(_SINGULAR_S)
    return inflect.engine().singular_noun(name) is not False


def _with_article(name: str) -> str:
    try:
        import inflect
    except ImportError:
        return f"{_article(name)} {name}"
    return inflect.engine().a(name)


def recognition_question(class_name: str, rule: Mapping[str, Any] | None = None) -> Question:
    """The question asked before a region's own: is the description about a `class_name`? (Yes / No)."""
    if _is_plural(class_name):
        text = (f"Is it likely that the objects in the description are {class_name} or objects of a similar "
                f"type? Again, It does not have to be an exact match.")
    else:
        text = (f"Is it likely that the object in the description is {_with_article(class_name)} or an object "
                f"of a similar type? Again, It does not have to be an exact match.")
    return Question(text, (("Yes", RECOGNISED), ("No", NOT_RECOGNISED)), RECOGNITION,
                    rule=rule if rule is not None else {"kind": RECOGNITION, "value": class_name})


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")
