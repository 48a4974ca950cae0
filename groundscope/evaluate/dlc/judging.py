"""What every judge shares: the `Judge` protocol (a description and a `Question` in, the reply text out),
`DlcJudgeError`, the reference's judge prompt (`build_prompt`), and `parse_choice`, which maps any judge's reply
to a choice the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from groundscope.evaluate.dlc.questions import LETTERS, Question

# The reference's judge prompt, word for word: judges were tuned and numbers published with it.
PROMPT = """Answer the multiple-choice question based on the text description of an object in an image. \
You need to follow these rules:
1. Do not output any reasoning. Do not perform correction. Please output exactly one answer from the choices \
for each question. Do not repeat the question.
2. There is no need for exact matching. Please choose the closest option based on the description.

The description is:
{description}

From the description above, please answer the following question with one of the choices:
{question}
"""


class DlcJudgeError(RuntimeError):
    """A judge that cannot answer: server unreachable or refusing, an unusable reply, a model without letters."""


class Judge(Protocol):
    """Answers one multiple-choice question from a description; returns the reply text (`parse_choice`
    maps it to a choice). ``name`` identifies the judge in reports and response caches."""

    name: str

    def reply(self, description: str, question: Question) -> str: ...


def build_prompt(description: str, question: Question) -> str:
    """The judge prompt: the description, then the question and its lettered choices."""
    lines = [question.text] + [f"{LETTERS[k]}. {text}" for k, (text, _) in enumerate(question.choices)]
    return PROMPT.format(description=description, question="\n".join(lines).strip())


def parse_choice(reply: str, choices: Sequence[str]) -> int | None:
    """Which choice a judge's reply picks (index), or ``None`` when it picks none.

    Judges answer "B", "B. The colour ...", the choice text alone, or a sentence around it. In order (the
    reference's order, so a reply maps to the same choice as there):

    1. the reply is a letter, a choice's text, or ``"<letter>. <text>"`` (case-insensitive);
    2. exactly one choice's text occurs in the reply;
    3. the reply starts with ``"<letter>."``;
    4. several choices' texts occur: the one that starts last (the final answer of a reply that restates
       choices), the longest of those starting at the same place;
    5. the reply occurs inside choices' texts: the longest such choice;
    6. the reply is one letter, or one letter and a line break.
    """
    pred = reply.strip().lower()
    if not pred:
        return None
    texts = [c.strip().lower() for c in choices]
    letters = LETTERS[: len(texts)].lower()
    for k, text in enumerate(texts):
        if pred in (text, f"{letters[k]}. {text}", letters[k]):
            return k
    found = [(k, pred.index(text), len(text)) for k, text in enumerate(texts) if text and text in pred]
    if len(found) == 1:
        return found[0][0]
    if len(pred) >= 2 and pred[1] == "." and pred[0] in letters:
        return letters.index(pred[0])
    if found:
        last = max(start for _, start, _ in found)
        return max((f for f in found if f[1] == last), key=lambda f: f[2])[0]
    inside = [(k, len(text)) for k, text in enumerate(texts) if pred in text]
    if inside:
        return max(inside, key=lambda m: m[1])[0]
    if pred[0] in letters and (len(pred) == 1 or pred[1] == "\n"):
        return letters.index(pred[0])
    return None
