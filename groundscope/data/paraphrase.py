"""Word paraphrases for training prompts: ``"red circle"`` becomes ``"scarlet circle"`` some of the time.

A paraphrase table is a JSON object ``{"word": ["alternative", ...], ...}`` (``groundscope synth --split train``
writes the synthetic world's colour table to ``paraphrases.json``; any table of the same shape works, e.g.
WordNet synonyms of a dataset's class words). `paraphrase` replaces each whole word of a prompt text that has
alternatives, independently with probability `prob`, by one of them drawn uniformly; other words, spacing and
punctuation stay as they were.

Why: a detector trained on one name per attribute learns that token, and a new word for the same thing
(``"crimson"``) scores like an unknown word. Spreading the supervision over several names aims to make the
detector read the text encoder's meaning instead. How far that goes depends on the encoder: on the synthetic
world with the nano's 3 frozen MiniLM layers it raised synonyms AP50 from 0.133 to 0.193 and cost base AP50
(``benchmarks/results/nano_stage2.md``; ``benchmarks/synonym_probe.py`` measures the encoder's side).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


class ParaphraseError(ValueError):
    """A paraphrase table that cannot be read; the message names the file and what to fix."""


def load_paraphrases(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read and check a paraphrase table -> {lower-case word: alternatives}.

    Raises:
        ParaphraseError: missing file, invalid JSON, or an entry that is not a word mapped to a list of
            non-empty strings.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ParaphraseError(f"paraphrase table '{path}' does not exist (data.paraphrases names it)") from e
    except json.JSONDecodeError as e:
        raise ParaphraseError(f"paraphrase table '{path}' is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or not raw:
        raise ParaphraseError(f"paraphrase table '{path}' must be a non-empty JSON object "
                              '{"word": ["alternative", ...]}')
    table: dict[str, tuple[str, ...]] = {}
    for word, alts in raw.items():
        if not isinstance(word, str) or not _WORD.fullmatch(word.strip()):
            raise ParaphraseError(f"paraphrase table '{path}': key {word!r} is not a single word")
        if (not isinstance(alts, list) or not alts
                or not all(isinstance(a, str) and a.strip() for a in alts)):
            raise ParaphraseError(f"paraphrase table '{path}': {word!r} must map to a non-empty list of "
                                  f"strings, got {alts!r}")
        table[word.strip().lower()] = tuple(a.strip() for a in alts)
    return table


def paraphrase(text: str, table: dict[str, tuple[str, ...]], rng: np.random.Generator, prob: float) -> str:
    """`text` with each word that `table` knows replaced, with probability `prob`, by a random alternative.

    Draws from `rng` once per known word (and once more per replacement), none for other words, so a text
    without known words leaves the generator where it was.
    """
    if prob <= 0 or not table:
        return text

    def swap(m: re.Match) -> str:
        alts = table.get(m.group(0).lower())
        if alts is None or rng.random() >= prob:
            return m.group(0)
        return alts[int(rng.integers(len(alts)))]

    return _WORD.sub(swap, text)
