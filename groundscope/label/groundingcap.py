"""Build GroundingCap records (LLMDet's training data) from images and detailed captions.

For each ``(image, detailed caption)`` pair:

1. the caption is cleaned of speculation (`groundscope.data.caption_clean.clean_caption`); the cleaned text is
   the record's detailed caption (the ``conversations`` answer the LM learns to write);
2. the *grounding caption* is the longest run of leading cleaned sentences that fits the detector's text limit
   (``max_text_len`` tokens, special tokens included), ending in "." as the detector's prompts do. Grounding
   data in GoldG / Flickr30k style keeps each phrase inside a natural sentence, so the phrases are grounded in
   context rather than as a bare "a. b. c." list (iSEE-Laboratory/LLMDet publishes no builder script to
   follow here; this is the documented fallback);
3. spaCy's ``noun_chunks`` of the grounding caption are the phrases, as character spans into it; pronouns
   ("it", "which") and nouns that name the picture or a place in it ("the image", "the left") are skipped
   because no box answers them;
4. the detector grounds all phrases of the image in one pass (`GroundingDetector.ground` with the spans);
   boxes scoring >= ``threshold`` are kept, duplicates of one phrase are removed by NMS, and a phrase left
   without a box is left out of the regions;
5. each kept box becomes a region: ``phrase`` (the chunk's text), ``tokens_positive`` (its span in the grounding
   caption) and ``description`` = `clean_region_phrase` (LLMDet's region-caption target).

Records are written as GroundingCap JSON lines (`groundscope.data.groundingcap`), one per readable image, so
`read_groundingcap` reads them back. Unreadable images are reported by name and skipped; the rest go on.

spaCy is the optional extra ``groundscope[nlp]``; an English pipeline with a dependency parser is needed
(``en_core_web_sm`` by default).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groundscope.data.caption_clean import clean_caption, clean_region_phrase
from groundscope.data.errors import DataFormatError
from groundscope.data.groundingcap import groundingcap_entry
from groundscope.data.jsonio import iter_jsonl, load_json, write_jsonl
from groundscope.data.records import ImageRecord, Instance, Span
from groundscope.label.partial import PartialLog, partial_path

DEFAULT_SPACY_MODEL = "en_core_web_sm"
DEFAULT_THRESHOLD = 0.3
DEFAULT_NMS_IOU = 0.5
# Boxes thinner than this (pixels) after clipping to the image carry no object and would not survive the
# GroundingCap reader's x2 > x1 check once rounded to 2 decimals.
MIN_BOX_SIDE = 1.0

# Head nouns of chunks that name the picture itself or a place in it: the detector has no object to box.
NON_OBJECT_NOUNS = frozenset(
    "image images picture pictures photo photos photograph photographs scene scenes view views frame shot "
    "snapshot left right top bottom center centre middle foreground background side front corner distance "
    "setting atmosphere".split()
)


class NLPUnavailableError(RuntimeError):
    """spaCy or the requested pipeline is missing or cannot parse; the message says what to install."""


@dataclass
class CaptionItem:
    """One entry of a captions file.

    Attributes:
        image: image file name, relative to the images folder.
        caption: the detailed caption as written (before cleaning).
        line: 1-based line in the captions file (JSON lines), or the line where the key sits (JSON object).
    """

    image: str
    caption: str
    line: int | None = None


@dataclass
class BuildSummary:
    """What a build did.

    Attributes:
        images: entries in the captions file.
        written: records written (readable images with something left after cleaning).
        phrases_found: noun phrases extracted from the written records' grounding captions.
        phrases_grounded: phrases that kept at least one box.
        boxes: regions written (one per kept box).
        skipped: ``(image name, reason)`` for every entry not written.
        unreadable: how many of ``skipped`` were images that could not be read.
        skipped_unreadable: per entry of ``skipped``, whether it was an unreadable image.
    """

    images: int = 0
    written: int = 0
    phrases_found: int = 0
    phrases_grounded: int = 0
    boxes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unreadable: int = 0
    skipped_unreadable: list[bool] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- captions file


def _key_line(text: str, key: str) -> int | None:
    """1-based line of ``"key":`` in a JSON object's text (JSON parsers give no positions for values)."""
    m = re.search(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:", text)
    if m is None:
        m = re.search(re.escape(json.dumps(key)) + r"\s*:", text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def _check_caption(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{what} must be a non-empty string, got {value!r}")
    return value


def read_caption_file(path: str | Path) -> list[CaptionItem]:
    """Read ``(image, caption)`` pairs.

    Two layouts are accepted:

    - JSON lines, one ``{"image": "name.jpg", "caption": "..."}`` per line (blank lines skipped);
    - one JSON object ``{"name.jpg": "caption", ...}`` (on one line or pretty-printed).

    The layout is told by the first non-blank line: a complete JSON object with an ``"image"`` key starts JSON
    lines; anything else is read as one JSON document.

    Raises:
        DataFormatError: naming the file and 1-based line of the first malformed entry.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError("file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"cannot read: {e}", path) from None
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    if first is None:
        raise DataFormatError("no captions: the file is empty", path)
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and "image" in head:
        return _read_jsonl_captions(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(
            'expected JSON lines {"image": ..., "caption": ...} or one object {"name.jpg": "caption", ...}, '
            f"got a JSON {type(data).__name__}", path, line=1)
    items = []
    for name, caption in data.items():
        line = _key_line(text, name)
        try:
            items.append(CaptionItem(name, _check_caption(caption, f"caption of {name!r}"), line))
        except DataFormatError as e:
            raise e.located(path, line=line) from None
    if not items:
        raise DataFormatError("no captions: the JSON object is empty", path, line=1)
    return items


def _read_jsonl_captions(path: Path) -> list[CaptionItem]:
    items = []
    for line, raw in iter_jsonl(path):
        try:
            if isinstance(raw, DataFormatError):
                raise raw
            if not isinstance(raw, dict):
                raise DataFormatError(f'expected an object {{"image": ..., "caption": ...}}, got {raw!r:.60}')
            missing = [k for k in ("image", "caption") if k not in raw]
            if missing:
                raise DataFormatError(f"entry is missing key(s) {missing}")
            image = raw["image"]
            if not isinstance(image, str) or not image.strip():
                raise DataFormatError(f"image must be a non-empty file name, got {image!r}")
            items.append(CaptionItem(image, _check_caption(raw["caption"], "caption"), line))
        except DataFormatError as e:
            raise (e if e.path else e.located(path, line=line)) from None
    return items


# ----------------------------------------------------------------------------------------------- spaCy


def load_spacy(name: str = DEFAULT_SPACY_MODEL):
    """Load the spaCy pipeline ``name`` (a package name or a pipeline directory) for noun chunks.

    NER and the lemmatizer are left out: noun chunks need only the tagger and parser.

    Raises:
        NLPUnavailableError: spaCy is not installed (fix: ``pip install 'groundscope[nlp]'``) or the pipeline is
            not (fix: ``python -m spacy download NAME``).
    """
    try:
        import spacy
    except ImportError:
        raise NLPUnavailableError(
            "noun-phrase extraction needs spaCy, which is not installed; install it with: "
            "pip install 'groundscope[nlp]'"
        ) from None
    try:
        return spacy.load(name, exclude=["ner", "lemmatizer"])
    except OSError as e:
        raise NLPUnavailableError(
            f"spaCy pipeline '{name}' is not installed ({str(e).splitlines()[0]}); install it with: "
            f"python -m spacy download {name}  (or pass another installed English pipeline or a pipeline "
            "directory, e.g. --spacy-model PATH)"
        ) from None


def _pipeline_name(nlp) -> str:
    meta = getattr(nlp, "meta", {}) or {}
    return f"{meta.get('lang', '?')}_{meta.get('name', 'pipeline')}"


def noun_phrases(nlp, text: str, skip_nouns: Iterable[str] = NON_OBJECT_NOUNS) -> list[tuple[str, Span]]:
    """Noun phrases of ``text`` from spaCy's ``noun_chunks``, as ``(phrase, (start, end))`` character spans.

    Chunks headed by a pronoun ("it", "which", "them") or by a noun in ``skip_nouns`` (compared lower-cased;
    default `NON_OBJECT_NOUNS`) are dropped; so is a repeated span. Order: as in the text.

    Args:
        nlp: a loaded spaCy ``Language`` whose pipeline sets dependency arcs and part-of-speech tags.
        text: the caption; spans index it (end exclusive), so ``text[start:end] == phrase``.
    Raises:
        NLPUnavailableError: the pipeline has no dependency parse, or its language has no noun-chunk rules.
    """
    doc = nlp(text)
    if len(doc) and not doc.has_annotation("DEP"):
        raise NLPUnavailableError(
            f"spaCy pipeline '{_pipeline_name(nlp)}' sets no dependency parse, which noun_chunks needs; "
            f"use an English pipeline with a parser, e.g. python -m spacy download {DEFAULT_SPACY_MODEL}"
        )
    try:
        chunks = list(doc.noun_chunks)
    except NotImplementedError:
        raise NLPUnavailableError(
            f"spaCy pipeline '{_pipeline_name(nlp)}' has no noun-chunk rules for its language; use an English "
            f"pipeline such as {DEFAULT_SPACY_MODEL}"
        ) from None
    skip = {w.lower() for w in skip_nouns}
    out: list[tuple[str, Span]] = []
    seen: set[Span] = set()
    for chunk in chunks:
        if chunk.root.pos_ == "PRON" or chunk.root.lower_ in skip:
            continue
        span = (chunk.start_char, chunk.end_char)
        # A chunk must hold a letter or digit: the detector's tokenizer gives nothing to score otherwise.
        if span in seen or not any(ch.isalnum() for ch in chunk.text):
            continue
        seen.add(span)
        out.append((chunk.text, span))
    return out


# ----------------------------------------------------------------------------------------------- captions


def _prompt_text(text: str) -> str:
    """The text exactly as the detector's prompt builder will see it (stripped, ending in ".")."""
    text = text.strip()
    return text if text.endswith(".") else text + "."


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def fit_caption(tokenizer, caption: str, max_tokens: int) -> str:
    """The longest run of leading sentences of ``caption`` that the detector can read at once.

    Args:
        tokenizer: the detector's tokenizer (``GroundingDetector.tokenizer``).
        caption: cleaned caption, sentences separated by single spaces.
        max_tokens: the detector's ``max_text_len`` (special tokens included).
    Returns:
        Text ending in "."; a first sentence longer than the limit is cut at the last whole word that fits.
    """

    def fits(text: str) -> bool:
        return len(tokenizer(text)["input_ids"]) <= max_tokens

    whole = _prompt_text(caption)
    if fits(whole):
        return whole
    sentences = _SENTENCE_END.split(caption.strip())
    best = ""
    for k in range(1, len(sentences) + 1):
        candidate = _prompt_text(" ".join(sentences[:k]))
        if not fits(candidate):
            break
        best = candidate
    if best:
        return best
    # Even the first sentence is too long: binary search the number of leading words that fit.
    words = sentences[0].split(" ")
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(_prompt_text(" ".join(words[:mid]).rstrip(",;:"))):
            lo = mid
        else:
            hi = mid - 1
    return _prompt_text(" ".join(words[:lo]).rstrip(",;:")) if lo else ""


# ----------------------------------------------------------------------------------------------- grounding


@dataclass
class _Pending:
    item: CaptionItem
    image: Any  # RGB PIL image
    filename: str
    caption: str  # cleaned detailed caption
    grounding: str  # grounding caption (prompt text)
    phrases: list[tuple[str, Span]]


def _regions(dets, phrases: Sequence[tuple[str, Span]], nms_iou: float | None) -> list[Instance]:
    """Detections of one image (class_ids = phrase index) -> one `Instance` per kept box, by phrase then score."""
    if nms_iou is not None and len(dets):
        dets = dets.nms(nms_iou)
    out: list[tuple[int, float, Instance]] = []
    for (x1, y1, x2, y2), score, pid, _label in dets:
        if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
            continue
        phrase, span = phrases[pid]
        inst = Instance(bbox=(float(x1), float(y1), float(x2), float(y2)), phrase=phrase, tokens_positive=[span],
                        description=clean_region_phrase(phrase))
        out.append((pid, -score, inst))
    out.sort(key=lambda t: (t[0], t[1]))
    return [inst for _, _, inst in out]


def _ground_batch(detector, batch: list[_Pending], threshold: float, batch_size: int) -> list:
    """`Detections` per pending image; a prompt the detector refuses fails that image alone."""
    from groundscope.prompts import PromptError

    def call(items: list[_Pending]) -> list:
        return detector.ground(
            [p.image for p in items], [p.grounding for p in items],
            [[span for _, span in p.phrases] for p in items],
            box_threshold=threshold, batch_size=batch_size,
        )

    try:
        return call(batch)
    except PromptError as e:
        if len(batch) == 1:
            return [e]
    results = []
    for p in batch:
        try:
            results.append(call([p])[0])
        except PromptError as e:
            results.append(e)
    return results


def build_records(
    items: Sequence[CaptionItem],
    images_dir: str | Path,
    detector,
    nlp,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    nms_iou: float | None = DEFAULT_NMS_IOU,
    filename_root: str | Path | None = None,
    batch_size: int = 4,
    summary: BuildSummary | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[ImageRecord]:
    """Yield one GroundingCap `ImageRecord` per usable ``(image, caption)`` item, in input order.

    Args:
        items: the pairs (`read_caption_file`).
        images_dir: folder the items' image names are relative to.
        detector: a `GroundingDetector` (`groundscope.load_detector`).
        nlp: a spaCy ``Language`` or a pipeline name for `load_spacy`.
        threshold: minimum box score kept (inclusive).
        nms_iou: per-phrase NMS IoU for duplicate boxes; ``None`` keeps them all.
        filename_root: write ``ImageRecord.filename`` relative to this folder (the output file's folder, so
            readers that resolve names against it find the images); ``None`` keeps the names as given.
        batch_size: images per ``ground`` call (and (image, prompt) pairs per forward pass).
        summary: filled in as records are produced (pass one to read the counts after iterating).
        on_skip: called with ``(image name, reason)`` for each skipped item, as it happens.
        progress: called as ``progress(done, total)`` after each item.
    Yields:
        `ImageRecord` with ``caption`` (grounding caption), ``long_caption`` (cleaned detailed caption),
        height/width of the image as loaded (EXIF-rotated), and one `Instance` per kept box.
    """
    from groundscope.images import ImageLoadError, load_image

    if isinstance(nlp, str):
        nlp = load_spacy(nlp)
    summary = summary if summary is not None else BuildSummary()
    summary.images += len(items)
    images_dir = Path(images_dir)
    done = 0

    def skip(name: str, reason: str, unreadable: bool = False) -> None:
        summary.skipped.append((name, reason))
        summary.skipped_unreadable.append(unreadable)
        summary.unreadable += int(unreadable)
        if on_skip is not None:
            on_skip(name, reason)

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, len(items))

    def finish(p: _Pending, instances: list[Instance]) -> ImageRecord:
        summary.written += 1
        summary.phrases_found += len(p.phrases)
        summary.phrases_grounded += len({inst.tokens_positive[0] for inst in instances})
        summary.boxes += len(instances)
        return ImageRecord(filename=p.filename, height=p.image.height, width=p.image.width, instances=instances,
                           caption=p.grounding, long_caption=p.caption)

    def flush(batch: list[_Pending]) -> Iterator[ImageRecord]:
        ready = [p for p in batch if p.phrases]
        results = iter(_ground_batch(detector, ready, threshold, batch_size) if ready else [])
        for p in batch:
            if not p.phrases:
                yield finish(p, [])  # still a caption sample for the LM loss
                continue
            dets = next(results)
            if isinstance(dets, Exception):
                skip(p.item.image, str(dets))
                continue
            yield finish(p, _regions(dets, p.phrases, nms_iou))
        tick(len(batch))

    batch: list[_Pending] = []
    for item in items:
        path = images_dir / item.image
        cleaned = clean_caption(item.caption)
        if not cleaned:
            skip(item.image, "nothing is left of the caption once speculation is removed")
            tick()
            continue
        try:
            image = load_image(path)
        except ImageLoadError as e:
            skip(item.image, str(e), unreadable=True)
            tick()
            continue
        grounding = fit_caption(detector.tokenizer, cleaned, detector.max_text_len)
        if not grounding:
            skip(item.image, f"the caption's first word alone exceeds the detector's {detector.max_text_len} tokens")
            tick()
            continue
        filename = (Path(os.path.relpath(path, filename_root)).as_posix() if filename_root is not None
                    else item.image)
        batch.append(_Pending(item, image, filename, cleaned, grounding, noun_phrases(nlp, grounding)))
        if len(batch) >= batch_size:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)


class GroundingCapLog(PartialLog):
    """``OUT.partial.jsonl`` of a GroundingCap build: a header with the settings that decide the records, then
    one line per finished chunk of `batch_size` consecutive captions-file entries (``items``: "index:image" of
    each, ``records``: its GroundingCap entries, ``skipped``: [image, reason, unreadable] of the others,
    ``counts``: its phrases found, phrases grounded and boxes)."""

    header_key = "groundscope_groundingcap"
    chunk_keys = ("items", "records", "skipped", "counts")
    chunk_key = "items"
    defaults_added_later: dict = {}
    command = "groundingcap"


@dataclass(frozen=True)
class BuildSettings:
    """What decides a GroundingCap build's records (a resume log from other settings is refused)."""

    captions_sha256: str
    images: str
    model: str
    threshold: float
    nms_iou: float | None
    nlp: str
    batch_size: int
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def captions_digest(items: Sequence[CaptionItem]) -> str:
    """SHA-256 of the entries (names and captions, in order): a resume log is only trusted for the same ones."""
    import hashlib

    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.image, it.caption], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def build_groundingcap(
    captions: str | Path | Sequence[CaptionItem],
    images_dir: str | Path,
    detector,
    out: str | Path,
    *,
    nlp: Any = DEFAULT_SPACY_MODEL,
    threshold: float = DEFAULT_THRESHOLD,
    nms_iou: float | None = DEFAULT_NMS_IOU,
    batch_size: int = 4,
    precision: str = "fp32",
    on_skip: Callable[[str, str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuildSummary:
    """Write GroundingCap JSON lines for ``(image, caption)`` pairs; see the module doc for the steps.

    Resumable: each chunk of `batch_size` consecutive entries is appended, fsync'ed, to ``OUT.partial.jsonl``
    as soon as it is built (`GroundingCapLog`); a rerun with the same entries and settings keeps the finished
    chunks and builds only the rest (a log from other settings is refused: `LabelError`). The chunks are the same
    whether or not the run was interrupted, so the output is the same bytes. ``out`` is written at the end,
    atomically, in input order, and the log removed.

    Args:
        captions: a captions file (`read_caption_file`) or the pairs themselves.
        images_dir: folder the image names are relative to.
        detector: a `GroundingDetector` or anything `groundscope.load_detector` takes.
        out: the ``.jsonl`` to write (the same bytes `write_groundingcap` writes for the records); file names
            inside are relative to ``out``'s folder.
        nlp: a spaCy ``Language`` or pipeline name.
        precision: the detector's precision, recorded in the resume log's settings.
        threshold, nms_iou, batch_size, on_skip, progress: as for `build_records`; `on_skip` also hears the
            skips of chunks read back from the log.
    Returns:
        The `BuildSummary` of all entries (resumed chunks included).
    Raises:
        DataFormatError: a malformed captions file (file and line named).
        NLPUnavailableError: spaCy or the pipeline is missing.
        LabelError: a resume log from other settings, or a damaged one.
    """
    items = read_caption_file(captions) if isinstance(captions, (str, Path)) else list(captions)
    nlp_name = nlp if isinstance(nlp, str) else str(getattr(nlp, "path", None) or getattr(nlp, "meta", {}).get(
        "name", "spacy"))
    if isinstance(nlp, str):
        nlp = load_spacy(nlp)
    if isinstance(detector, (str, Path)):
        from groundscope.models.loading import load_detector

        detector = load_detector(detector)
    out = Path(out)
    settings = BuildSettings(captions_digest(items), str(Path(images_dir).resolve()), str(detector.name),
                             float(threshold), None if nms_iou is None else float(nms_iou), nlp_name,
                             int(batch_size), precision)
    summary = BuildSummary(images=len(items))
    chunks: list[dict[str, Any]] = []
    with GroundingCapLog(partial_path(out), settings) as log:
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
            key = [f"{start + j}:{it.image}" for j, it in enumerate(part)]
            chunk = log.done.get(tuple(key))
            if chunk is None:
                done = BuildSummary()
                records = list(build_records(part, images_dir, detector, nlp, threshold=threshold, nms_iou=nms_iou,
                                             filename_root=out.parent, batch_size=batch_size, summary=done))
                # each skip with whether its image was unreadable (those decide the exit code)
                skipped = [[name, reason, flag] for (name, reason), flag in zip(done.skipped, done.skipped_unreadable)]
                chunk = {"items": key, "records": [groundingcap_entry(r) for r in records], "skipped": skipped,
                         "counts": [done.phrases_found, done.phrases_grounded, done.boxes]}
                log.append(chunk)
            for name, reason, unreadable in chunk["skipped"]:
                summary.skipped.append((name, reason))
                summary.unreadable += int(unreadable)
                if on_skip is not None:
                    on_skip(name, reason)
            summary.written += len(chunk["records"])
            found, grounded, boxes = chunk["counts"]
            summary.phrases_found += found
            summary.phrases_grounded += grounded
            summary.boxes += boxes
            chunks.append(chunk)
            if progress is not None:
                progress(min(start + batch_size, len(items)), len(items))
        write_jsonl(out, (entry for chunk in chunks for entry in chunk["records"]))
        log.remove()
    return summary
