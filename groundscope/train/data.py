"""Training data: annotation records -> (image tensor, prompt, target) samples and padded batches.

Records come from the `groundscope.data` readers (COCO, ODVG detection/grounding, GroundingCap). Each record
is used in one of two modes:

* **detection** (COCO, ODVG detection): the prompt is a class list built by `groundscope.prompts.class_prompt`,
  the same code inference uses. Following MM-Grounding-DINO's ``RandomSamplingNegPos``: the image's positive
  classes are shuffled and kept while they fit the token budget (boxes of a class that does not fit are
  dropped); then with probability `full_negative_prob` up to `num_negatives` random other classes of the
  label map are added, otherwise a uniformly random number between 1 and that; negatives are added while
  they fit; the whole list is shuffled. A class name "a/b" (Objects365 style) is one of its alternatives,
  chosen at random each time.
* **expression** (RefCOCO-style referring expressions, MDETR ``final_refexp`` files): the prompt is the
  expression and the whole expression is the one entity of its target box, exactly as
  `GroundingDetector.refer` prompts at inference (`groundscope.prompts.expression_prompt`).
* **grounding** (ODVG grounding, GroundingCap): the prompt is the caption with one entity per distinct
  ``tokens_positive`` span set (`groundscope.prompts.phrase_prompt`). Optionally `grounding_negatives`
  phrases of other images are appended (". phrase." each) as entities without boxes; MM-GDINO adds none.
  A caption over the token limit is cut at a token boundary and the regions past the cut are dropped.

Augmentation: a random shortest edge from `scales` (longest edge capped at `max_size`, the reference resize),
and a horizontal flip with probability `flip_prob` for detection records only: flipping would make "the cup
left of the plate" false. With `flip_expressions`, referring expressions are flipped too and their
left/right words swapped ("leftmost" <-> "rightmost"), as MDETR flips its captions. With a paraphrase table (`groundscope.data.paraphrase`), words of class names and
referring expressions are swapped for alternatives with probability `paraphrase_prob`.

Every random choice of sample ``i`` in epoch ``e`` comes from its own ``numpy`` generator seeded with
``(seed, e, i)``, so a sample is the same whichever worker loads it and a resumed run sees the same data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from groundscope.data import Dataset as RecordSet
from groundscope.data import ImageRecord, read_any
from groundscope.data.convert import dataset_from_refexps, infer_format
from groundscope.data.paraphrase import paraphrase
from groundscope.evaluate.run import prompt_name
from groundscope.images import load_image, preprocess
from groundscope.prompts import Prompt, PromptError, class_prompt, clean_class_name, expression_prompt, phrase_prompt
from groundscope.box_ops import xyxy_to_cxcywh
from groundscope.train.distributed import shard
from groundscope.train.targets import Target

MODES = ("auto", "detection", "grounding", "expression")
FORMATS = ("coco", "odvg", "groundingcap", "refexp")
MIN_BOX_SIDE = 1.0  # px in the original image; thinner boxes have no extent to regress


class TrainDataError(ValueError):
    """Training data cannot be used; the message names the file and the fix."""


@dataclass
class Sample:
    """One training pair.

    Attributes:
        pixel_values: (3, H, W) float32, normalised, at the sampled scale.
        prompt: the text prompt (input_ids (1, T)).
        target: boxes (N, 4) normalised cxcywh and token maps (N, max_text_len).
        index: position of the record in the dataset.
        flipped: whether the image was mirrored.
        phrases: per target box, the prompt text that names it (class name, phrase or expression); LLMDet's
            region-caption target.
        long_caption: the record's detailed image caption (GroundingCap), or None.
    """

    pixel_values: torch.Tensor
    prompt: Prompt
    target: Target
    index: int
    flipped: bool = False
    phrases: list[str] = field(default_factory=list)
    long_caption: str | None = None


@dataclass
class Batch:
    """Samples padded to one size.

    Attributes:
        pixel_values: (B, 3, H, W), zero-padded at the right and bottom.
        pixel_mask: (B, H, W) long, 1 on real pixels.
        prompts: B prompts.
        targets: B targets (boxes normalised to each image's own unpadded size, as DETR does).
        indices: dataset positions of the samples.
        phrases: per sample, the text naming each target box.
        long_captions: per sample, the detailed caption, or None (none in the record, or the image was mirrored
            and the caption's "left" / "right" would lie).
        flipped: per sample, whether the image was mirrored.
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    prompts: list[Prompt]
    targets: list[Target]
    indices: list[int] = field(default_factory=list)
    phrases: list[list[str]] = field(default_factory=list)
    long_captions: list[str | None] = field(default_factory=list)
    flipped: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


_MIRROR = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_MIRROR_WORD = re.compile(r"\b(" + "|".join(_MIRROR) + r")\b", re.IGNORECASE)


def mirror_words(text: str) -> str:
    """`text` as it reads for the horizontally flipped image: "left" <-> "right", "leftmost" <-> "rightmost"
    (whole words, any case; a capitalised word stays capitalised)."""

    def swap(m: re.Match) -> str:
        word = _MIRROR[m.group(0).lower()]
        return word.capitalize() if m.group(0)[0].isupper() else word

    return _MIRROR_WORD.sub(swap, text)


def entity_text(prompt: Prompt, entity: int) -> str:
    """The words of the prompt that name `entity` (its character spans joined); the label when it has none."""
    spans = prompt.entity_spans[entity] if entity < len(prompt.entity_spans) else []
    text = " ".join(prompt.text[a:b].strip() for a, b in spans).strip()
    return text or prompt.labels[entity]


def collate(samples: Sequence[Sample]) -> Batch:
    """Pad images to the batch's largest height and width and record the valid area in a pixel mask."""
    h = max(s.pixel_values.shape[1] for s in samples)
    w = max(s.pixel_values.shape[2] for s in samples)
    pixels = torch.zeros((len(samples), 3, h, w), dtype=samples[0].pixel_values.dtype)
    mask = torch.zeros((len(samples), h, w), dtype=torch.long)
    for i, s in enumerate(samples):
        _, sh, sw = s.pixel_values.shape
        pixels[i, :, :sh, :sw] = s.pixel_values
        mask[i, :sh, :sw] = 1
    return Batch(pixels, mask, [s.prompt for s in samples], [s.target for s in samples], [s.index for s in samples],
                 [s.phrases for s in samples], [None if s.flipped else s.long_caption for s in samples],
                 [s.flipped for s in samples])


def load_records(path: str | Path, fmt: str = "auto", label_map: str | Path | None = None) -> tuple[RecordSet, str]:
    """Read a COCO / ODVG / GroundingCap / refexp file -> (records, format); `fmt` "auto" infers it from the file.

    Referring expressions become one record per expression (caption = the expression, one box)."""
    path = Path(path)
    if not path.exists():
        raise TrainDataError(f"training data '{path}' does not exist")
    if fmt == "auto":
        fmt = infer_format(path)
    if fmt not in FORMATS:
        raise TrainDataError(f"'{path}' is {fmt!r} data; training reads {', '.join(FORMATS)} files")
    data = read_any(path, fmt, label_map=label_map)
    if fmt == "refexp":
        data = dataset_from_refexps(data, per_expression=True)
    return data, fmt


def check_images_exist(records: RecordSet, image_root: str | Path, source: str | Path) -> None:
    """Refuse, before the first step, a data file whose records name images that are not on disk: every missing
    one is listed (the first 10), so a run does not stop hours in at the first.

    Raises:
        TrainDataError: naming the data file, the image folder and the missing files.
    """
    root = Path(image_root)
    missing = [r.filename for r in records.images if not (root / r.filename).is_file()]
    if not missing:
        return
    listed = "\n".join(f"  {name}" for name in missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    raise TrainDataError(f"'{source}': {len(missing)} of its {len(records.images)} images are not in '{root}':\n"
                         f"{listed}{more}\nput them there, set data.train's image_root to their folder, or remove "
                         "their records")


def _token_count(tokenizer, text: str, cache: dict[str, int]) -> int:
    """Tokens `text` + "." adds to a class prompt (BERT splits on punctuation, so counts add up)."""
    n = cache.get(text)
    if n is None:
        n = len(tokenizer(text + ".", add_special_tokens=False)["input_ids"])
        cache[text] = n
    return n


class GroundingTrainDataset(torch.utils.data.Dataset):
    """Records -> `Sample`s (see the module docstring for the prompt and augmentation rules).

    Args:
        records: the records (`groundscope.data.Dataset`).
        tokenizer: the detector's (fast) tokenizer.
        max_text_len: the model's text limit (256 for the published checkpoints).
        image_root: folder the records' file names are relative to.
        scales: shortest-edge choices of the random resize.
        max_size: longest-edge cap.
        flip_prob: probability of a horizontal flip (detection records only).
        num_negatives: most negative classes per detection prompt (MM-GDINO: 85).
        full_negative_prob: probability of sampling `num_negatives` rather than a random count.
        grounding_negatives: phrases of other images appended to a grounding caption.
        mode: "auto" (refexp files: expression; COCO and records without a caption: detection; else grounding),
            "detection", "grounding" or "expression".
        source_format: the file format the records came from (it decides what "auto" means).
        seed: base of every per-sample generator.
        index_offset: added to the index in the generator seed (distinct streams for pooled datasets).
        paraphrases: {word: alternatives} (`groundscope.data.paraphrase`) swapped into class names and
            referring expressions (not into grounding captions, whose phrase spans are character offsets).
        paraphrase_prob: probability of swapping each known word.
        flip_expressions: flip referring-expression records too (with probability `flip_prob`), swapping the
            expression's left/right words (`mirror_words`).
    """

    def __init__(
        self,
        records: RecordSet,
        tokenizer,
        max_text_len: int,
        image_root: str | Path,
        scales: Sequence[int],
        max_size: int,
        *,
        flip_prob: float = 0.5,
        num_negatives: int = 85,
        full_negative_prob: float = 0.5,
        grounding_negatives: int = 0,
        mode: str = "auto",
        source_format: str = "odvg",
        seed: int = 0,
        index_offset: int = 0,
        paraphrases: dict[str, tuple[str, ...]] | None = None,
        paraphrase_prob: float = 0.0,
        flip_expressions: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not scales:
            raise ValueError("scales must list at least one shortest edge")
        self.records = records
        self.tokenizer = tokenizer
        self.max_text_len = int(max_text_len)
        self.image_root = Path(image_root)
        self.scales = [int(s) for s in scales]
        self.max_size = int(max_size)
        self.flip_prob = flip_prob
        self.num_negatives = num_negatives
        self.full_negative_prob = full_negative_prob
        self.grounding_negatives = grounding_negatives
        self.seed = seed
        self.index_offset = int(index_offset)
        self.paraphrases = paraphrases or {}
        self.paraphrase_prob = float(paraphrase_prob)
        self.flip_expressions = bool(flip_expressions)
        self.epoch = 0
        self._counts: dict[str, int] = {}
        # record -> class names to put in its detection prompt without boxes (set by the RKD trainer)
        self.unboxed_names: Callable[[ImageRecord], list[str]] | None = None
        self.modes = [self._mode_of(r, mode, source_format) for r in records.images]
        if any(m == "detection" for m in self.modes) and not records.categories:
            raise TrainDataError("detection records need class names (a label map or COCO categories)")
        # Phrases available as grounding negatives: every distinct phrase of the grounding records.
        self._phrase_pool = sorted(
            {
                inst.phrase.strip()
                for r, m in zip(records.images, self.modes)
                if m == "grounding"
                for inst in r.instances
                if inst.phrase and inst.phrase.strip()
            }
        )

    @staticmethod
    def _mode_of(record: ImageRecord, mode: str, fmt: str) -> str:
        if mode != "auto":
            return mode
        if fmt == "refexp":
            return "expression"
        has_spans = record.caption is not None and any(i.tokens_positive for i in record.instances)
        if fmt == "coco" or not has_spans:
            return "detection"
        return "grounding"

    def __len__(self) -> int:
        return len(self.records.images)

    def set_epoch(self, epoch: int) -> None:
        """Samples of a new epoch get new random choices (set before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.index_offset + index])

    # ------------------------------------------------------------------ sample
    def __getitem__(self, index: int) -> Sample:
        record = self.records.images[index]
        rng = self.rng(index)
        image = load_image(self.image_root / record.filename)
        width, height = image.size
        if (record.width, record.height) != (width, height):
            # Boxes are in the annotated size; an image re-saved at another size would misplace them all.
            hint = (" (width and height swapped: the file has an EXIF rotation, which groundscope applies; "
                    "save the image without it or annotate the rotated image)"
                    if (record.height, record.width) == (width, height) else "; fix the record or the image")
            raise TrainDataError(
                f"image '{record.filename}' is {width}x{height} but its record says "
                f"{record.width}x{record.height}{hint}"
            )
        mode = self.modes[index]
        boxes = np.asarray([i.bbox for i in record.instances], dtype=np.float64).reshape(-1, 4)
        flippable = mode == "detection" or (mode == "expression" and self.flip_expressions)
        flipped = flippable and rng.random() < self.flip_prob
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        if mode == "detection":
            prompt, keep, entity = self._detection_prompt(record, rng)
        elif mode == "expression":
            prompt, keep, entity = self._expression_prompt(record, rng, flipped)
        else:
            prompt, keep, entity = self._grounding_prompt(record, rng)
        boxes = boxes[keep]
        # Clip to the image and drop boxes without extent (they carry no regression signal).
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        ok = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
        boxes, entity = boxes[ok], np.asarray(entity, dtype=np.int64)[ok]

        shortest = self.scales[int(rng.integers(len(self.scales)))]
        pixel_values = preprocess(image, shortest, self.max_size).pixel_values
        # Normalised coordinates do not depend on the resize: divide by the original size.
        scale = np.asarray([width, height, width, height], dtype=np.float64)
        norm = torch.as_tensor(boxes / scale, dtype=torch.float32)
        token_map = torch.zeros((len(entity), self.max_text_len), dtype=torch.bool)
        for row, e in enumerate(entity):
            token_map[row, prompt.token_spans[e]] = True
        target = Target(xyxy_to_cxcywh(norm), token_map, torch.as_tensor(entity, dtype=torch.long))
        phrases = [entity_text(prompt, int(e)) for e in entity]
        return Sample(pixel_values, prompt, target, index, bool(flipped), phrases, record.long_caption)

    def _class_text(self, label: int, rng: np.random.Generator) -> str:
        name = self.records.categories[label]
        if "/" in name:
            options = [p.strip() for p in name.split("/") if p.strip()]
            if options:
                name = options[int(rng.integers(len(options)))]
        return paraphrase(clean_class_name(prompt_name(name)), self.paraphrases, rng, self.paraphrase_prob)

    def _detection_prompt(self, record: ImageRecord, rng: np.random.Generator) -> tuple[Prompt, list[int], list[int]]:
        """Class prompt with shuffled positives and sampled negatives -> (prompt, kept boxes, box entities)."""
        budget = self.max_text_len - 2  # [CLS] and [SEP]
        labels = [i.label for i in record.instances]
        if any(lab is None for lab in labels):
            raise TrainDataError(f"'{record.filename}': a detection record has an instance without a class label")
        positives = sorted(set(labels))
        rng.shuffle(positives)
        texts: dict[str, int] = {}  # prompt text (lower case) -> entity slot, shared by same-named classes
        names: list[str] = []
        label_slot: dict[int, int] = {}
        used = 0
        for lab in positives:
            text = self._class_text(lab, rng)
            key = text.lower()
            if key in texts:
                label_slot[lab] = texts[key]
                continue
            n = _token_count(self.tokenizer, text, self._counts)
            if used + n > budget:
                continue  # this class's boxes are dropped: it does not fit (mmdet drops them too)
            used += n
            texts[key] = len(names)
            label_slot[lab] = len(names)
            names.append(text)
        # Names without boxes in this image (RKD's image-level labels, supervised through pseudo-boxes; the
        # trainer keeps them out of the box loss). No random draws here, so other prompts stay as they were.
        for name in (self.unboxed_names(record) if self.unboxed_names is not None else []):
            text = clean_class_name(prompt_name(name))
            if text.lower() in texts:
                continue
            n = _token_count(self.tokenizer, text, self._counts)
            if used + n > budget:
                continue
            used += n
            texts[text.lower()] = len(names)
            names.append(text)

        n_classes = len(self.records.categories)
        full = min(self.num_negatives, n_classes)
        if full > 0:
            count = full if rng.random() < self.full_negative_prob else int(rng.integers(full)) + 1
            for lab in rng.choice(n_classes, size=count, replace=False):
                if int(lab) in label_slot:
                    continue
                text = self._class_text(int(lab), rng)
                if text.lower() in texts:
                    continue
                n = _token_count(self.tokenizer, text, self._counts)
                if used + n > budget:
                    break
                used += n
                texts[text.lower()] = len(names)
                names.append(text)

        order = rng.permutation(len(names))
        slot_of_position = {int(old): new for new, old in enumerate(order)}
        try:
            prompt = class_prompt(
                self.tokenizer, [names[int(o)] for o in order], list(range(len(names))), self.max_text_len
            )
        except PromptError as e:
            raise TrainDataError(f"'{record.filename}': {e}") from e
        keep = [k for k, lab in enumerate(labels) if lab in label_slot]
        entity = [slot_of_position[label_slot[labels[k]]] for k in keep]
        return prompt, keep, entity

    def _expression_prompt(self, record: ImageRecord, rng: np.random.Generator,
                           flipped: bool = False) -> tuple[Prompt, list[int], list[int]]:
        """The expression is the prompt and, whole, the entity of every box of the record (normally one)."""
        if not record.caption or not record.caption.strip():
            raise TrainDataError(f"'{record.filename}': a referring-expression record needs its expression")
        text = mirror_words(record.caption) if flipped else record.caption
        text = paraphrase(text, self.paraphrases, rng, self.paraphrase_prob)
        try:
            prompt = expression_prompt(self.tokenizer, text, self.max_text_len)
        except PromptError as e:
            raise TrainDataError(f"'{record.filename}': {e}") from e
        return prompt, list(range(len(record.instances))), [0] * len(record.instances)

    def _grounding_prompt(self, record: ImageRecord, rng: np.random.Generator) -> tuple[Prompt, list[int], list[int]]:
        """Caption prompt, one entity per distinct span set -> (prompt, kept boxes, box entities)."""
        caption = record.caption
        if not caption or not caption.strip():
            raise TrainDataError(f"'{record.filename}': a grounding record needs a caption")
        # normalize_caption strips leading white space: shift the spans with it.
        shift = len(caption) - len(caption.lstrip())
        caption = caption.strip()
        spans_per_box = []
        for inst in record.instances:
            spans = [(a - shift, b - shift) for a, b in inst.tokens_positive]
            if not spans and inst.phrase:
                at = caption.lower().find(inst.phrase.strip().lower())
                if at >= 0:
                    spans = [(at, at + len(inst.phrase.strip()))]
            spans_per_box.append(tuple(sorted((max(a, 0), min(b, len(caption))) for a, b in spans if b > a)))
        caption, limit = self._fit_caption(caption)
        entities: dict[tuple, int] = {}
        keep, entity = [], []
        for k, spans in enumerate(spans_per_box):
            if not spans or spans[-1][1] > limit:
                continue  # no text names this box, or the text was cut off
            if spans not in entities:
                entities[spans] = len(entities)
            keep.append(k)
            entity.append(entities[spans])
        phrases = [list(s) for s in entities]
        text = caption if caption.endswith(".") else caption + "."
        if self.grounding_negatives > 0 and self._phrase_pool:
            own = {caption[a:b].lower() for s in entities for a, b in s}
            extra = self._negative_phrases(rng, own, text)
            for phrase in extra:
                start = len(text) + 1
                text = f"{text} {phrase}."
                phrases.append([(start, start + len(phrase))])
        # With no phrase at all the prompt still trains: every query learns "none of these tokens".
        try:
            prompt = phrase_prompt(self.tokenizer, text, phrases, self.max_text_len)
        except PromptError as e:
            raise TrainDataError(f"'{record.filename}': {e}") from e
        return prompt, keep, entity

    def _negative_phrases(self, rng: np.random.Generator, own: set[str], text: str) -> list[str]:
        used = len(self.tokenizer(text)["input_ids"])
        out = []
        for j in rng.choice(len(self._phrase_pool), size=min(self.grounding_negatives * 3, len(self._phrase_pool)),
                            replace=False):
            phrase = clean_class_name(self._phrase_pool[int(j)])
            if not phrase or phrase.lower() in own or any(phrase.lower() == p.lower() for p in out):
                continue
            n = _token_count(self.tokenizer, phrase, self._counts)
            if used + n > self.max_text_len:
                break
            used += n
            out.append(phrase)
            if len(out) == self.grounding_negatives:
                break
        return out

    def _fit_caption(self, caption: str) -> tuple[str, int]:
        """Cut a caption over the token limit at a token boundary -> (caption, last usable character)."""
        enc = self.tokenizer(caption, return_offsets_mapping=True, add_special_tokens=False)
        # Room for [CLS], [SEP] and the "." normalisation may append.
        room = self.max_text_len - 3
        if len(enc["input_ids"]) <= room:
            return caption, len(caption)
        cut = int(enc["offset_mapping"][room - 1][1])
        return caption[:cut], cut


class PooledDataset(torch.utils.data.Dataset):
    """Several `GroundingTrainDataset`s (e.g. ODVG detection + grounding files) as one index space.

    Each part keeps its own label map for negatives; part k's samples are seeded with the global index.
    """

    def __init__(self, parts: Sequence[GroundingTrainDataset]):
        if not parts:
            raise ValueError("no datasets to pool")
        self.parts = list(parts)
        self.starts = []
        n = 0
        for p in self.parts:
            if p.index_offset != n:
                raise ValueError(f"part index_offset {p.index_offset} != its start {n} in the pool")
            self.starts.append(n)
            n += len(p)
        self.total = n

    def __len__(self) -> int:
        return self.total

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.total:
            raise IndexError(index)
        k = max(i for i, s in enumerate(self.starts) if s <= index)
        sample = self.parts[k][index - self.starts[k]]
        sample.index = index
        return sample


@dataclass
class EpochBatches:
    """The order of one epoch: a seeded permutation cut into batches.

    Attributes:
        batches: lists of dataset indices (the last one may be short).
    """

    batches: list[list[int]]

    @classmethod
    def make(cls, n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
             min_batch: int = 1) -> "EpochBatches":
        """`min_batch`: a last batch with fewer items is dropped (N training processes need one item each)."""
        order = np.random.default_rng([seed, epoch, 7]).permutation(n) if shuffle else np.arange(n)
        batches = [order[s : s + batch_size].tolist() for s in range(0, n, batch_size)]
        if batches and len(batches[-1]) < min_batch:
            batches.pop()
        return cls(batches)


def batches_per_epoch(n: int, batch_size: int, min_batch: int = 1) -> int:
    """Batches of `batch_size` in `n` items, a last shorter one counted when it holds `min_batch` items."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest and rest >= min_batch else 0)


def item_generator(seed: int, epoch: int, index: int, stream: int) -> torch.Generator:
    """A torch generator that is a function of (seed, epoch, dataset index, stream) only: randomness drawn per
    item in the training step (denoising noise) stays the same whichever batch or process the item lands in."""
    state = np.random.SeedSequence([seed, epoch, index, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Yields the batches of `epoch` from batch `start` on (the data position saved in checkpoints).

    With `world_size` processes, `batch_size` is per process: the epoch is cut into global batches of
    batch_size x world_size (a last one with fewer items than processes dropped), `start` counts global
    batches, and process `rank` gets its slice of each (`groundscope.train.distributed.shard`).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        batches = EpochBatches.make(n, batch_size * world_size, seed, epoch, shuffle, min_batch=world_size).batches
        self.batches = [shard(b, rank, world_size) for b in batches[start:]]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
