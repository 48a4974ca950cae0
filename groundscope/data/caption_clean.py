"""Text cleaning for LLMDet's GroundingCap captions (pure Python, no torch).

`clean_caption` removes speculation from a detailed image caption written by a multimodal LLM. LLMDet trains
its language model to reproduce these captions word for word, so a guess ("possibly a birthday party") would
teach the detector to hallucinate; only what is stated as seen is kept.

`clean_region_phrase` turns a grounded noun phrase ("two small red circles") into LLMDet's region-caption
target ("Small red circles."), by LLMDet's own rule (``clean_phrase``).

`official_clean_caption` is LLMDet's ``remove_speculative_clauses`` itself (comma segments holding a keyword
dropped by one regular expression), for reproducing its data; `clean_caption` keeps sentences grammatical.

Speculative markers (case-insensitive, whole words): LLMDet's list (iSEE-Laboratory/LLMDet
mmdet/datasets/odvg.py ~L14-34: possibly, probable / probably, maybe, perhaps, suggest*, speculate*, assume*,
guess*, suppose*, appear*, seem*, indicate*, hint*, imply*, infer*, expect*, tends to, looks like, sounds like,
and " no " / " not " between spaces) plus groundscope's likely / unlikely, indication*, "could be", "might be",
"may be" (look / looked / looking like too). Deliberately *not* markers:

- "appearance": a noun about how something looks ("a weathered appearance") states a visible fact.
- "indicator": a noun naming an object (a turn indicator, a battery indicator light).
"""

from __future__ import annotations

import re

__all__ = ["SPECULATIVE", "clean_caption", "clean_region_phrase", "is_speculative", "official_clean_caption"]

# One alternation with word boundaries on both sides, so "appearance", "indicator", "seamless" or "maybelline"
# never match while "seemingly", "suggests" and "appeared" do.
_MARKERS = (
    r"(?:possibly|probable|probably|maybe|perhaps|(?:un)?likely"
    r"|suggest\w*"
    r"|seem\w*"
    r"|appear(?:s|ed|ing)?"
    r"|indicat(?:e|es|ed|ing|ion|ions|ive)"
    r"|impl(?:y|ies|ied|ying)"
    r"|speculat(?:e|es|ed|ing)|assum(?:e|es|ed|ing)|guess(?:es|ed|ing)?|suppos(?:e|es|ed|ing)"
    r"|hint(?:s|ed|ing)?|infer(?:s|red|ring)?|expect(?:s|ed|ing)?|tends\s+(?:not\s+)?to"
    r"|(?:look(?:s|ed|ing)?|sounds)\s+like"
    r"|(?:could|might|may)\s+be)"
)
# LLMDet's " no " / " not " carry their spaces: "no" / "not" between white space only ("Not a cloud." and
# "not," are kept, as in odvg.py).
SPECULATIVE = re.compile(rf"\b{_MARKERS}\b|(?<=\s)(?:no|not)(?=\s)", re.IGNORECASE)

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


# LLMDet's clean_phrase (mmdet/datasets/transforms/text_transformers.py ~L243-249): each prefix is tried once, in
# this order ("eigth" is the official spelling: "eight " is never stripped).
_DELETE_WORDS = ("a ", "an ", "the ", "one ", "two ", "three ", "four ", "five ", "six ", "seven ", "eigth ",
                 "nine ")


def clean_region_phrase(phrase: str) -> str:
    """LLMDet's region-caption target for a grounded phrase (its ``clean_phrase``).

    Lower-cased, ``.`` stripped from both ends, then each of "a ", "an ", "the ", "one " .. "nine " removed
    once if the phrase starts with it at that point of the list (so "the two cats" -> "cats" but "two the cats"
    -> "the cats"), then capitalised, plus ".". ``"The two small red circles"`` -> ``"Small red circles."``.
    Departure: white space around the phrase is stripped first (the official keeps it, " cat" -> " cat.").

    Raises:
        ValueError: naming the input when nothing is left (the official would train on ".").
    """
    if not isinstance(phrase, str):
        raise TypeError(f"clean_region_phrase expects a string, got {type(phrase).__name__}")
    text = phrase.strip().lower().strip(".")
    for word in _DELETE_WORDS:
        if text.startswith(word):
            text = text[len(word):]
    if not text.strip():
        raise ValueError(f"region phrase {phrase!r} is empty once articles, counts and periods are removed")
    return text.capitalize() + "."


_OFFICIAL_KEYWORDS = (
    "possibly", "probable", "probably", "maybe", "perhaps", "suggest", "suggests", "suggesting", "suggested",
    "speculate", "speculates", "speculating", "speculated", "assume", "assumes", "assuming", "assumed",
    "guess", "guesses", "guessing", "guessed", "suppose", "supposes", "supposing", "supposed",
    "appear", "appears", "appeared", "appearing", "seem", "seems", "seemed", "seeming",
    "indicate", "indicates", "indicating", "indicated", "hint", "hints", "hinting", "hinted",
    "imply", "implies", "implying", "implied", "infer", "infers", "inferring", "inferred",
    "expect", "expects", "expecting", "expected", "assuming that", "tends to", "tends not to", "seems to",
    "looks like", "sounds like", "appears to", " no ", " not ",
)
_OFFICIAL_PREPOSITIONS = {"in", "on", "at", "by", "with", "about", "against", "between", "into", "through",
                          "during", "before", "after", "above", "below", "to", "from", "up", "down", "for", "of",
                          "under", "over", "as"}
_OFFICIAL_CLAUSE = re.compile(r",?[^,]*\b(?:" + "|".join(_OFFICIAL_KEYWORDS) + r")\b[^,]*,?")


def official_clean_caption(text: str) -> str:
    """LLMDet's ``remove_speculative_clauses`` (odvg.py ~L12-81), case-sensitive as it is: sentences split after
    ".", a sentence holding a keyword as a substring loses every comma segment holding one as a word, gets a
    final "." if it lost it, and goes when nothing or only a prepositional phrase is left. LLMDet keeps the raw
    caption when this returns "" (odvg.py ~L135-136)."""
    kept = []
    for sentence in re.split(r"(?<=\.)\s+", text):
        if any(k in sentence for k in _OFFICIAL_KEYWORDS):
            cleaned = _OFFICIAL_CLAUSE.sub("", sentence).strip()
            if not cleaned.endswith("."):
                cleaned += "."
            words = cleaned.split()
            if cleaned.strip() and not (words and words[0].lower() in _OFFICIAL_PREPOSITIONS) and cleaned != ".":
                kept.append(cleaned.strip())
        else:
            kept.append(sentence.strip())
    return " ".join(kept).strip()
