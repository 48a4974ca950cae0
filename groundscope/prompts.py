"""Text prompts: class lists, captions and phrases -> tokens and positive maps.

Rules (those that produced the published MM-GDINO / LLMDet numbers):
- A class list becomes "cat. remote control. couch." (names joined by ". ", ended with "."). Each class's tokens
  are found from the tokenizer's character offsets, never by re-tokenising the name alone.
- A vocabulary too long for the model's text limit (256 tokens, special tokens included) is packed greedily, in
  the given order, into chunks that each fit; no class is split or dropped. With ``chunk_size=N`` the list is cut
  into consecutive chunks of N names instead, as mmdetection's ``chunked_size`` does for the published LVIS
  numbers (40 names a prompt; official: iSEE-Laboratory/LLMDet configs/grounding_dino_swin_t.py ~L150,
  mmdet/models/detectors/grounding_dino.py ``get_tokens_positive_and_prompts_chunked`` ~L692-734).
- A class name may not contain ".", the model's phrase delimiter: "st. bernard" would become two phrases.
  We replace such dots with spaces in the prompt (the label keeps the user's spelling).
- Duplicate names are encoded once by default, every duplicate's detections going to the first occurrence's class
  id, and a blank name is an error. ``official_names=True`` prompts every entry as the official code does: a
  duplicate under its own id (LVIS has five names that clean to a duplicate: bow, fish, octopus, pan, salmon), a
  blank name (ODinW35's ChessPieces lists "  ") as its text with no tokens of its own, so it is never detected.
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


def _build(tokenizer, text: str, entity_spans, entity_ids, labels, max_tokens: int | None,
           tokenless_ok: Sequence[bool] | None = None) -> Prompt:
    """Tokenise `text` and find each entity's tokens; an entity without tokens is an error unless its
    `tokenless_ok` entry says otherwise (a blank class name under `official_names`)."""
    input_ids, offsets = _tokenize(tokenizer, text)
    if max_tokens is not None and input_ids.shape[1] > max_tokens:
        raise PromptError(
            f"prompt is {input_ids.shape[1]} tokens, more than the model's limit of {max_tokens}: "
            f"{quoted(text, 80)}; shorten it, or split it into sentences"
        )
    token_spans = []
    tokenless_ok = tokenless_ok if tokenless_ok is not None else [False] * len(labels)
    for label, spans, ok in zip(labels, entity_spans, tokenless_ok, strict=True):
        toks = tokens_for_spans(offsets, spans)
        if not toks and not ok:
            raise PromptError(f"{quoted(label)} produces no tokens (only whitespace or characters the tokenizer drops)")
        token_spans.append(toks)
    return Prompt(text, input_ids, [list(s) for s in entity_spans], token_spans, list(entity_ids), list(labels), offsets)


def quoted(text: str, limit: int = 60) -> str:
    """`text` in quotes for a message, cut to `limit` characters with its length said (a 10,000-character class
    name must not fill the terminal)."""
    text = str(text)
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[:limit]}...' ({len(text)} characters)"


def clean_class_name(name: str) -> str:
    """The text a class contributes to the prompt: dots (the phrase delimiter) become spaces."""
    return re.sub(r"\s+", " ", name.replace(".", " ")).strip()


def _unique_classes(classes: Sequence[str], official_names: bool = False) -> tuple[list[int], list[str]]:
    """Indices and prompt texts of the first occurrence of each distinct class (of every class, blank ones
    included, with `official_names`); validates names."""
    if isinstance(classes, str):
        raise PromptError(f"classes must be a list of names, got the string {quoted(classes)}; split it first")
    if len(classes) == 0:
        raise PromptError("the class list is empty; pass at least one class name")
    seen: dict[str, int] = {}
    idx, texts = [], []
    repeats: list[tuple[int, str, int]] = []  # (index, name, index it repeats)
    for i, name in enumerate(classes):
        if not isinstance(name, str):
            raise PromptError(f"class {i} is {type(name).__name__}, not a string")
        text = clean_class_name(name)
        if not text and not official_names:
            raise PromptError(f"class {i} ({quoted(name)}) is empty; remove it from the list")
        key = text.lower()
        if key in seen and not official_names:
            repeats.append((i, name, seen[key]))
            continue
        seen.setdefault(key, i)
        idx.append(i)
        texts.append(text)
    if repeats:  # one warning for the list, not one per repeat
        i, name, first = repeats[0]
        more = f" (and {len(repeats) - 1} more repeated names)" if len(repeats) > 1 else ""
        warnings.warn(f"class {quoted(name)} (index {i}) repeats index {first}; its boxes go to index {first}{more}")
    return idx, texts


Enhancement = dict  # {"prefix": str, "name": str, "suffix": str}, every key optional


def _class_part(name: str, enh: Enhancement | None) -> tuple[str, str, str]:
    """(prefix, shown name, suffix) of one class's part of a class prompt."""
    enh = enh or {}
    return enh.get("prefix", ""), enh.get("name", name), enh.get("suffix", "")


def class_prompt(
    tokenizer,
    classes: Sequence[str],
    class_ids: Sequence[int] | None = None,
    max_tokens: int | None = None,
    labels: Sequence[str] | None = None,
    enhancements: Sequence[Enhancement | None] | None = None,
) -> Prompt:
    """One prompt "a. b. c." for `classes` (already unique and clean); `labels` default to the prompt texts.

    `enhancements` (one per class, or None) rewrite a class's part of the prompt as prefix + name + suffix, with
    only the name as the class's tokens: mmdetection's ``caption_prompt`` for ODinW (e.g. Packages:
    "there is a package on the porch."; official: mmdet/models/detectors/grounding_dino.py
    ``to_enhance_text_prompts`` ~L521-545).
    """
    class_ids = list(range(len(classes))) if class_ids is None else list(class_ids)
    enhancements = list(enhancements) if enhancements is not None else [None] * len(classes)
    text, spans = "", []
    for name, enh in zip(classes, enhancements, strict=True):
        prefix, shown, suffix = _class_part(name, enh)
        text += prefix
        spans.append([(len(text), len(text) + len(shown))])
        text += shown + suffix + ". "
    text = text.rstrip()  # "a. b." (the official string ends with ". "; the tokens are the same)
    blank = [not c.strip() for c in classes]  # only official_names lets a blank name through to here
    return _build(tokenizer, text, spans, class_ids, list(labels if labels is not None else classes), max_tokens,
                  tokenless_ok=blank)


def chunk_classes(
    tokenizer,
    classes: Sequence[str],
    max_tokens: int = 256,
    *,
    chunk_size: int | None = None,
    official_names: bool = False,
    caption_prompt: dict[str, Enhancement] | None = None,
) -> list[Prompt]:
    """Split `classes` into prompts that each fit in `max_tokens` tokens.

    `caption_prompt` maps a class name (as given, or as cleaned for the prompt) to its prefix / name / suffix
    (see `class_prompt`).

    Without `chunk_size` the names are packed greedily, in order, as many per prompt as fit (fewest forward passes).
    With `chunk_size` every prompt holds the next `chunk_size` names (the last one fewer), mmdetection's
    ``chunked_size`` rule; a chunk over the token limit is an error (the official code truncates it with a warning
    and loses the names past the limit).

    Entity ids are indices into `classes` (the user's list), so ids stay global across chunks.
    Raises PromptError if one class alone (or one chunk of `chunk_size`) does not fit.
    """
    if chunk_size is not None and chunk_size < 1:
        raise PromptError(f"chunk_size must be a positive number of class names, not {chunk_size}")
    idx, texts = _unique_classes(classes, official_names)
    caption_prompt = caption_prompt or {}
    enh = [caption_prompt.get(classes[i], caption_prompt.get(t)) for i, t in zip(idx, texts)]

    def build(ch: list[int]) -> Prompt:
        return class_prompt(tokenizer, [texts[j] for j in ch], [idx[j] for j in ch], max_tokens,
                            labels=[classes[idx[j]] for j in ch], enhancements=[enh[j] for j in ch])

    budget = max_tokens - 2  # [CLS] ... [SEP]
    if chunk_size is not None:
        chunks = [list(range(s, min(s + chunk_size, len(texts)))) for s in range(0, len(texts), chunk_size)]
        prompts = []
        for ch in chunks:
            try:
                prompts.append(build(ch))
            except PromptError as e:
                raise PromptError(
                    f"the chunk of {len(ch)} class names starting at '{classes[idx[ch[0]]]}' does not fit: {e}; "
                    "pass a smaller chunk_size (--chunk-size)"
                ) from None
        return prompts
    # BERT's basic tokenizer splits on whitespace and punctuation, so "a. b." tokenises to tokens(a) + [.] +
    # tokens(b) + [.]: per-class counts add up exactly. The built prompt is re-checked against the limit.
    counts = [len(tokenizer("".join(_class_part(t, e)) + ".", add_special_tokens=False)["input_ids"])
              for t, e in zip(texts, enh)]
    chunks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for j, c in enumerate(counts):
        if c > budget:
            raise PromptError(
                f"class {quoted(classes[idx[j]])} alone is {c} tokens, over the model's {max_tokens}-token text limit; "
                "shorten the name"
            )
        if used + c > budget and current:
            chunks.append(current)
            current, used = [], 0
        current.append(j)
        used += c
    if current:
        chunks.append(current)
    return [build(ch) for ch in chunks]


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
                raise PromptError(f"phrase {quoted(ph)} does not occur in the caption {quoted(caption, 120)}")
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


REC_RULES = ("mean", "mmgdino", "llmdet")


def rec_prompt(tokenizer, expression: str, rule: str = "mean", max_tokens: int | None = None, tagger=None) -> Prompt:
    """A referring-expression prompt whose entities score the boxes by `rule`:

    * ``mean``: groundscope's rule, the mean probability over the whole expression's tokens (`expression_prompt`).
    * ``mmgdino``: MM-Grounding-DINO's, the best probability over every token of the text, special tokens and
      "." included (mmdetection passes ``tokens_positive=-1``, the head then takes ``cls_score.sigmoid().max(-1)``;
      official: mmdet/models/detectors/grounding_dino.py ~L209-213, mmdet/models/dense_heads/grounding_dino_head.py
      ~L495-500). Its one entity holds all the tokens; score it with ``score_rule="max"``.
    * ``llmdet``: LLMDet's, the mean over the tokens of the expression's first noun phrase, one entity per
      occurrence (`groundscope.rec_subject`); `tagger` is ``(tag_fn, stopwords)``, NLTK's by default.
    """
    if rule not in REC_RULES:
        raise PromptError(f"rec rule must be one of {', '.join(REC_RULES)}, not {rule!r}")
    if rule == "mean":
        return expression_prompt(tokenizer, expression, max_tokens)
    if not isinstance(expression, str) or not expression.strip():
        raise PromptError(f"the expression '{expression}' is empty; pass the words that single out one object")
    from groundscope import rec_subject

    text = rec_subject.llmdet_text(expression)
    if rule == "mmgdino":
        prompt = _build(tokenizer, text, [[(0, len(text.rstrip()))]], [0], [expression.strip()], max_tokens)
        prompt.token_spans = [list(range(prompt.num_tokens))]
        return prompt
    tag, stopwords = tagger if tagger is not None else rec_subject.nltk_tagger()
    subject = rec_subject.first_noun_phrase(tag(text), stopwords)
    spans = rec_subject.subject_spans(text, subject)
    return _build(tokenizer, text, [[s] for s in spans], [0] * len(spans), [text[a:b] for a, b in spans], max_tokens)
