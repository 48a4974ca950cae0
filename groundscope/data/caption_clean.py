"""Text cleaning for LLMDet's GroundingCap captions (pure Python, no torch).

`clean_caption` removes speculation from a detailed image caption written by a multimodal LLM. LLMDet trains
its language model to reproduce these captions word for word, so a guess ("possibly a birthday party") would
teach the detector to hallucinate; only what is stated as seen is kept.

`clean_region_phrase` turns a grounded noun phrase ("two small red circles") into LLMDet's region-caption
target ("Small red circles.").

Speculative markers (case-insensitive, whole words): possibly, probably, maybe, perhaps, likely / unlikely,
suggest*, seem*, appear / appears / appeared / appearing, indicate* / indication*, imply / implies / implied /
implying, "looks like" (look / looked / looking like), "could be", "might be", "may be".
Deliberately *not* markers:

- "appearance": a noun about how something looks ("a weathered appearance") states a visible fact.
- "indicator": a noun naming an object (a turn indicator, a battery indicator light).
"""

from __future__ import annotations

import re

__all__ = ["SPECULATIVE", "clean_caption", "clean_region_phrase", "is_speculative"]

# One alternation with word boundaries on both sides, so "appearance", "indicator", "seamless" or "maybelline"
# never match while "seemingly", "suggests" and "appeared" do.
_MARKERS = (
    r"(?:possibly|probably|maybe|perhaps|(?:un)?likely"
    r"|suggest\w*"
    r"|seem\w*"
    r"|appear(?:s|ed|ing)?"
    r"|indicat(?:e|es|ed|ing|ion|ions|ive)"
    r"|impl(?:y|ies|ied|ying)"
    r"|look(?:s|ed|ing)?\s+like"
    r"|(?:could|might|may)\s+be)"
)
SPECULATIVE = re.compile(rf"\b{_MARKERS}\b", re.IGNORECASE)

# A comma segment that *opens* with one of these is a parenthetical hedge about what precedes it
# ("a dog, likely a golden retriever, lies ..."; "a sign, which appears to be handwritten, ..."): dropping the
# segment leaves a true, grammatical sentence.
_HEDGE_OPENER = re.compile(
    r"^\s*(?:(?:possibly|probably|maybe|perhaps|likely)\b"
    rf"|(?:which|who|that)\s+(?:\w+\s+)?{_MARKERS}\b)",
    re.IGNORECASE,
)
# A segment that starts like this continues a list or a coordination: the comma before it must stay.
_CONTINUES = re.compile(r"^\s*(?:and|or|but|nor|with|while|as well as)\b", re.IGNORECASE)
# An introductory phrase is no clause of its own: "In the background, possibly a hill rises." must not become
# "In the background."; when only such an opener would be left, the whole clause goes.
_INTRO = re.compile(
    r"^\s*(?:in|on|at|behind|near|next to|to|under|above|below|beside|besides|along|across|from|inside|outside|"
    r"within|throughout|around|beyond|overall|additionally|however|also|furthermore|moreover)\b",
    re.IGNORECASE,
)

# Sentence ends: . ! ? (optionally followed by a closing quote or bracket) then whitespace, or a line break.
# Abbreviations such as "Dr." are rare in image captions; splitting there at worst drops a shorter unit.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\s*\n\s*")
_TERMINAL = re.compile(r"[.!?][\"')\]]?$")
_SPACE = re.compile(r"\s+")


def is_speculative(text: str) -> bool:
    """True when ``text`` holds one of the speculative markers (see the module doc)."""
    return SPECULATIVE.search(text) is not None


def _clean_clause(clause: str) -> str:
    """One independent clause (no ';' inside) -> the clause without its speculation, or "" to drop it.

    Comma segments after the first that open with a hedge are parentheticals and go alone (with the comma
    pair that delimits them, unless the next segment continues a list); speculation anywhere else means the
    clause's own claim is a guess, so the whole clause goes.
    """
    if not is_speculative(clause):
        return clause
    segments = clause.split(",")
    kept: list[str] = [segments[0]]
    dropped_last = False
    for seg in segments[1:]:
        if is_speculative(seg) and _HEDGE_OPENER.match(seg):
            dropped_last = True
            continue
        if dropped_last and not _CONTINUES.match(seg):
            # "A dog, likely a retriever, lies here" -> "A dog lies here": no comma between subject and verb.
            kept[-1] = kept[-1].rstrip() + " " + seg.lstrip()
        else:
            kept.append(seg)
        dropped_last = False
    result = ",".join(kept)
    if is_speculative(result) or (len(kept) == 1 and len(segments) > 1 and _INTRO.match(result)):
        return ""
    return result


def _clean_sentence(sentence: str) -> str:
    m = _TERMINAL.search(sentence)
    body, end = (sentence[: m.start()], m.group()) if m else (sentence, "")
    # Clauses joined by ';' are independent: each can go on its own and the rest still reads as a sentence.
    clauses = [c.strip() for c in body.split(";")]
    kept = [c for c in (_clean_clause(c) for c in clauses) if c.strip()]
    if not kept:
        return ""
    text = "; ".join(_SPACE.sub(" ", c).strip() for c in kept)
    if kept[0] is not clauses[0]:
        text = text[:1].upper() + text[1:]  # a later clause now opens the sentence
    return text + end


def clean_caption(text: str) -> str:
    """Remove speculative sentences and clauses from a detailed image caption.

    Granularity, chosen so the output stays grammatical:

    - A sentence without a marker is kept verbatim (whitespace normalised).
    - Clauses separated by ``;`` are independent sentences in all but punctuation: only the speculative ones go.
    - A comma-delimited *parenthetical* hedge after the first segment ("a dog, likely a golden retriever, lies
      on the grass"; "a mug, which appears to be empty, ...") goes alone, because what remains is both
      grammatical and certain ("a dog lies on the grass").
    - Any other speculation (the clause's main claim: "The man is possibly a chef", "It appears to be dusk,
      with long shadows") drops the whole clause. Dropping only the comma segment holding the marker would
      leave fragments ("with long shadows.") or, worse, turn a guess into a statement ("Possibly, the man is
      a chef" -> "the man is a chef").

    Args:
        text: the caption, one or more sentences, possibly with line breaks.
    Returns:
        The cleaned caption: kept sentences joined by single spaces, runs of whitespace collapsed, "" when
        nothing certain is left.
    """
    if not isinstance(text, str):
        raise TypeError(f"clean_caption expects a string, got {type(text).__name__}")
    sentences = (s for s in _SENTENCE_SPLIT.split(text.strip()) if s and s.strip())
    kept = (_clean_sentence(_SPACE.sub(" ", s).strip()) for s in sentences)
    return " ".join(s for s in kept if s)


_NUMBER_WORDS = "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve"
# Leading articles and counts, one at a time (applied until nothing changes: "the two cats" -> "cats").
_LEADING = re.compile(rf"^(?:a|an|the|\d+(?:[.,]\d+)*|{_NUMBER_WORDS})(?:\s+|$)")
# Sentence punctuation only: a closing bracket or quote is part of the phrase ("the cat (left)").
_TRAILING_PUNCT = re.compile(r"[\s.,;:!?\u2026]+$")


def clean_region_phrase(phrase: str) -> str:
    """LLMDet's region-caption target for a grounded phrase.

    Lower-cased; leading articles (a, an, the) and counts (digits, "one" .. "twelve") stripped repeatedly;
    whitespace collapsed; trailing sentence punctuation replaced by exactly one "."; first letter capitalised.
    ``"The two small red circles!"`` -> ``"Small red circles."``.

    Raises:
        ValueError: naming the input when it is empty or holds nothing but articles, counts and punctuation.
    """
    if not isinstance(phrase, str):
        raise TypeError(f"clean_region_phrase expects a string, got {type(phrase).__name__}")
    text = _TRAILING_PUNCT.sub("", _SPACE.sub(" ", phrase.lower()).strip())
    while True:
        stripped = _LEADING.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    text = _TRAILING_PUNCT.sub("", text).strip()
    if not text:
        raise ValueError(f"region phrase {phrase!r} is empty once articles, counts and punctuation are removed")
    return text[:1].upper() + text[1:] + "."
