"""LLMDet's referring-expression rule: a box is scored on the expression's subject, its first noun phrase.

The official code (iSEE-Laboratory/LLMDet mmdet/models/detectors/grounding_dino.py ``get_rec_phrase``
~L204-241, used at ~L640-651 when a dataset gives ``tokens_positive = -1``):

1. the expression gets ". " appended unless it ends with "." (the text the detector reads);
2. NLTK tokenises and POS-tags it and chunks it with the grammar ``NP: {<DT>?<JJ>*<NN|NNS>}``;
3. the subject is the first NP chunk whose text (lower-cased) is not an English stopword; with none, the whole text;
4. every occurrence of the subject in the text (``re.finditer``) becomes its own entity; with none, one entity
   spanning the text but its last character.

Boxes are then ranked by the mean token probability over an entity, as for class prompts. NLTK is optional here
(``pip install nltk`` and its data: ``python -m nltk.downloader punkt punkt_tab averaged_perceptron_tagger
averaged_perceptron_tagger_eng stopwords``); the chunker below is NLTK's ``RegexpParser`` rule for this one
grammar (a left-to-right, non-overlapping, greedy match over the tag sequence), so a caller may pass its own tags.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Sequence

Tagged = Sequence[tuple[str, str]]
# The grammar <DT>?<JJ>*<NN|NNS> as a regex over the tag string "<DT><JJ><NN>...", the way NLTK compiles it.
_NP = re.compile(r"(<DT>)?(<JJ>)*(<(NN|NNS)>)")


class RecSubjectError(RuntimeError):
    """The LLMDet rule needs NLTK and its data; the message says how to install them or which rule to use instead."""


def llmdet_text(expression: str) -> str:
    """The text the official code prompts with: ". " appended unless the expression ends with "."."""
    return expression if expression.endswith(".") else expression + ". "


def first_noun_phrase(tagged: Tagged, stopwords: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The first chunk of the grammar whose words, joined by spaces and lower-cased, are not a stopword."""
    tags = "".join(f"<{t}>" for _, t in tagged)
    # map a character offset in `tags` back to the index of the word it starts
    starts, pos = {}, 0
    for i, (_, t) in enumerate(tagged):
        starts[pos] = i
        pos += len(t) + 2
    for m in _NP.finditer(tags):
        a, b = starts[m.start()], starts.get(m.end(), len(tagged))
        subject = " ".join(w for w, _ in tagged[a:b])
        if subject.lower() not in stopwords:
            return subject
    return None


def subject_spans(text: str, subject: str | None) -> list[tuple[int, int]]:
    """Character spans of the entities the boxes are scored on (one per occurrence of the subject)."""
    subject = text if subject is None else subject
    try:
        spans = [m.span() for m in re.finditer(subject, text)]  # the official code searches the phrase as a regex
    except re.error:  # a phrase that is no valid regex: the official code would stop here; search it literally
        spans = [m.span() for m in re.finditer(re.escape(subject), text)]
    spans = [s for s in spans if s[1] > s[0]]
    return spans or [(0, len(text) - 1)]


@lru_cache(maxsize=1)  # loaded once, not per expression (a failure is not cached: it raises)
def nltk_tagger() -> tuple[Callable[[str], Tagged], frozenset[str]]:
    """NLTK's word tokeniser + POS tagger and its English stopwords, or a RecSubjectError saying what to install."""
    fix = ("install NLTK and its data (pip install nltk && python -m nltk.downloader punkt punkt_tab "
           "averaged_perceptron_tagger averaged_perceptron_tagger_eng stopwords), or choose another rule with "
           "--rec-rule mmgdino or --rec-rule mean")
    try:
        import nltk
        from nltk.corpus import stopwords
    except ImportError:
        raise RecSubjectError(f"the LLMDet referring rule needs NLTK, which is not installed; {fix}") from None
    try:
        words = frozenset(stopwords.words("english"))
        nltk.pos_tag(nltk.word_tokenize("a test."))
    except LookupError as e:
        raise RecSubjectError(f"the LLMDet referring rule needs NLTK data that is missing ({e}); {fix}") from None
    return (lambda text: nltk.pos_tag(nltk.word_tokenize(text))), words
