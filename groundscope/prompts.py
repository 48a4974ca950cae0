"""Text prompts: class lists, captions and phrases -> tokens and positive maps.

Rules (those that produced the published MM-GDINO / LLMDet numbers):
- A class list becomes "cat. remote control. couch." (names joined by ". ", ended with "."). Each class's tokens
  are found from the tokenizer's character offsets, never by re-tokenising the name alone.
- A vocabulary too long for the model's text limit (256 tokens, special tokens included) is packed greedily, in
  the given order, into chunks that each fit; no class is split or dropped.
- A class name may not contain ".", the model's phrase delimiter: "st. bernard" would become two phrases.
  We replace such dots with spaces in the prompt (the label keeps the user's spelling).
- Duplicate names are encoded once; every duplicate's detections go to the first occurrence's class id.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch

Span = tuple[int, int]


class PromptError(ValueError):
    """A prompt cannot be built; the message names the offending input and the fix."""


@dataclass
class Prompt:
    """One model input text and the entities (classes or phrases) whose tokens it holds.

    Attributes:
        text: the caption fed to the tokenizer.
        input_ids: (1, T) token ids, special tokens included.
        entity_spans: per entity, its character spans in `text`.
        token_spans: per entity, the token indices covering its character spans.
        entity_ids: per entity, the id reported to the user (class index in the user's list, phrase index).
        labels: per entity, the name reported to the user.
        offsets: (T, 2) character offsets of each token ((0, 0) for special tokens).
    """

    text: str
    input_ids: torch.Tensor
    entity_spans: list[list[Span]]
    token_spans: list[list[int]]
    entity_ids: list[int]
    labels: list[str]
    offsets: list[Span] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def positive_map(self, length: int | None = None, normalize: bool = True) -> torch.Tensor:
        """(num_entities, length) map of each entity's tokens; rows sum to 1 when `normalize`
        (so `sigmoid(logits) @ map.T` is the mean over the entity's tokens)."""
        length = self.num_tokens if length is None else length
        pm = torch.zeros((len(self.token_spans), length), dtype=torch.float32)
        for i, toks in enumerate(self.token_spans):
            pm[i, toks] = 1.0
        if normalize:
            pm = pm / pm.sum(-1, keepdim=True).clamp(min=1.0)
        return pm


def _tokenize(tokenizer, text: str) -> tuple[torch.Tensor, list[Span]]:
    enc = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    offsets = [tuple(int(v) for v in o) for o in enc["offset_mapping"][0].tolist()]
    return enc["input_ids"], offsets


def tokens_for_spans(offsets: Sequence[Span], spans: Sequence[Span]) -> list[int]:
    """Indices of the tokens whose character range overlaps any of `spans` (special tokens have (0, 0))."""
    out = []
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        if any(a < e and b > s for s, e in spans):
            out.append(t)
    return out


def _build(tokenizer, text: str, entity_spans, entity_ids, labels, max_tokens: int | None) -> Prompt:
    input_ids, offsets = _tokenize(tokenizer, text)
    if max_tokens is not None and input_ids.shape[1] > max_tokens:
        raise PromptError(
            f"prompt is {input_ids.shape[1]} tokens, more than the model's limit of {max_tokens}: "
            f"'{text[:80]}{'...' if len(text) > 80 else ''}'; shorten it, or split it into sentences"
        )
    token_spans = []
    for label, spans in zip(labels, entity_spans):
        toks = tokens_for_spans(offsets, spans)
        if not toks:
            raise PromptError(f"'{label}' produces no tokens (only whitespace or characters the tokenizer drops)")
        token_spans.append(toks)
    return Prompt(text, input_ids, [list(s) for s in entity_spans], token_spans, list(entity_ids), list(labels), offsets)


def clean_class_name(name: str) -> str:
    """The text a class contributes to the prompt: dots (the phrase delimiter) become spaces."""
    return re.sub(r"\s+", " ", name.replace(".", " ")).strip()


def _unique_classes(classes: Sequence[str]) -> tuple[list[int], list[str]]:
    """Indices and prompt texts of the first occurrence of each distinct class; validates names."""
    if isinstance(classes, str):
        raise PromptError(f"classes must be a list of names, got the string '{classes}'; split it first")
    if len(classes) == 0:
        raise PromptError("the class list is empty; pass at least one class name")
    seen: dict[str, int] = {}
    idx, texts = [], []
    for i, name in enumerate(classes):
        if not isinstance(name, str):
            raise PromptError(f"class {i} is {type(name).__name__}, not a string")
        text = clean_class_name(name)
        if not text:
            raise PromptError(f"class {i} ('{name}') is empty; remove it from the list")
        key = text.lower()
        if key in seen:
            warnings.warn(f"class '{name}' (index {i}) repeats index {seen[key]}; its boxes go to index {seen[key]}")
            continue
        seen[key] = i
        idx.append(i)
        texts.append(text)
    return idx, texts


def class_prompt(
    tokenizer,
    classes: Sequence[str],
    class_ids: Sequence[int] | None = None,
    max_tokens: int | None = None,
    labels: Sequence[str] | None = None,
) -> Prompt:
    """One prompt "a. b. c." for `classes` (already unique and clean); `labels` default to the prompt texts."""
    class_ids = list(range(len(classes))) if class_ids is None else list(class_ids)
    parts, spans = [], []
    pos = 0
    for name in classes:
        spans.append([(pos, pos + len(name))])
        parts.append(name + ".")
        pos += len(name) + 2  # name + ". "
    text = " ".join(parts)
    return _build(tokenizer, text, spans, class_ids, list(labels if labels is not None else classes), max_tokens)


def chunk_classes(tokenizer, classes: Sequence[str], max_tokens: int = 256) -> list[Prompt]:
    """Pack `classes` greedily, in order, into prompts of at most `max_tokens` tokens.

    Entity ids are indices into `classes` (the user's list), so ids stay global across chunks.
    Raises PromptError if one class alone does not fit.
    """
    idx, texts = _unique_classes(classes)
    # BERT's basic tokenizer splits on whitespace and punctuation, so "a. b." tokenises to tokens(a) + [.] +
    # tokens(b) + [.]: per-class counts add up exactly. The built prompt is re-checked against the limit.
    counts = [len(tokenizer(t + ".", add_special_tokens=False)["input_ids"]) for t in texts]
    budget = max_tokens - 2  # [CLS] ... [SEP]
    chunks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for j, c in enumerate(counts):
        if c > budget:
            raise PromptError(
                f"class '{classes[idx[j]]}' alone is {c} tokens, over the model's {max_tokens}-token text limit; "
                "shorten the name"
            )
        if used + c > budget and current:
            chunks.append(current)
            current, used = [], 0
        current.append(j)
        used += c
    if current:
        chunks.append(current)
    return [
        class_prompt(
            tokenizer, [texts[j] for j in ch], [idx[j] for j in ch], max_tokens, labels=[classes[idx[j]] for j in ch]
        )
        for ch in chunks
    ]


def normalize_caption(caption: str) -> str:
    """Strip and end with "." (as the reference demo does), so the last phrase closes like all the others."""
    if not isinstance(caption, str) or not caption.strip():
        raise PromptError("the caption is empty; pass the sentence whose phrases should be found")
    caption = caption.strip()
    return caption if caption.endswith(".") else caption + "."


def find_phrase_spans(caption: str, phrases: Sequence[str | Span | Sequence[Span]]) -> list[list[Span]]:
    """Character spans of each phrase in `caption`.

    A phrase is a string (found case-insensitively, at its first occurrence not already taken by an earlier
    phrase, then at its first occurrence), a (start, end) span, or a list of spans.
    """
    low = caption.lower()
    taken: list[Span] = []
    out: list[list[Span]] = []
    for k, ph in enumerate(phrases):
        if isinstance(ph, str):
            needle = ph.strip().lower()
            if not needle:
                raise PromptError(f"phrase {k} is empty")
            starts = [m.start() for m in re.finditer(re.escape(needle), low)]
            if not starts:
                raise PromptError(f"phrase '{ph}' does not occur in the caption '{caption}'")
            free = [s for s in starts if not any(s < e and s + len(needle) > b for b, e in taken)]
            s = (free or starts)[0]
            span = [(s, s + len(needle))]
        else:
            items = [ph] if len(ph) == 2 and all(isinstance(v, int) for v in ph) else list(ph)
            span = []
            for item in items:
                s, e = int(item[0]), int(item[1])
                if not (0 <= s < e <= len(caption)):
                    raise PromptError(f"phrase span {item} is outside the caption (length {len(caption)})")
                span.append((s, e))
        taken.extend(span)
        out.append(span)
    return out


def phrase_prompt(tokenizer, caption: str, phrases: Sequence, max_tokens: int | None = None) -> Prompt:
    """A grounding prompt: the caption itself, with one entity per phrase."""
    text = normalize_caption(caption)
    spans = find_phrase_spans(text, phrases)
    labels = [text[sp[0][0] : sp[-1][1]] for sp in spans]
    return _build(tokenizer, text, spans, list(range(len(spans))), labels, max_tokens)


def caption_prompt(tokenizer, caption: str, max_tokens: int | None = None) -> Prompt:
    """A caption with no entities yet: its phrases are read off the token scores (the reference demo's rule)."""
    return _build(tokenizer, normalize_caption(caption), [], [], [], max_tokens)


def expression_prompt(tokenizer, expression: str, max_tokens: int | None = None) -> Prompt:
    """A referring-expression prompt: the whole expression is the one positive entity."""
    text = normalize_caption(expression)
    body = expression.strip().rstrip(".").rstrip()
    if not body:
        raise PromptError(f"the expression '{expression}' is empty; pass the words that single out one object")
    return _build(tokenizer, text, [[(0, len(body))]], [0], [body], max_tokens)
