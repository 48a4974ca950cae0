"""SAM 3 as a detector: transformers' `Sam3Model` prompted with text, returning groundscope `Detections`.

SAM 3 (Segment Anything with Concepts) takes one noun phrase per forward pass and returns every instance of
that concept: up to ``num_queries`` (200 in the release) boxes, scores and masks. `Sam3Detector` gives it the
task surface of `GroundingDetector` (`detect`, `ground`, `refer`, `name`, `device`), so ``groundscope detect``,
``label``, ``eval run`` and ``serve`` run it unchanged:

- pixels come from `Sam2Processing` (the torchvision-free port of ``Sam3ImageProcessor``: square resize,
  rescale, normalise), and each image is encoded once (`Sam3Model.get_vision_features`) and reused for every
  class prompt: the (image, class) pairs of a pass index into the encoded batch;
- each distinct prompt text is encoded once per call and cached across calls (`Sam3Model.get_text_features`,
  padded to 32 tokens as ``Sam3Processor.__call__`` pads them, processing_sam3.py);
- outputs are post-processed as transformers' ``Sam3ImageProcessor.post_process_instance_segmentation`` does
  (image_processing_sam3.py; `post_process_instance_segmentation` below reproduces it and tests/
  test_sam3_detector.py holds it equal): score = sigmoid(pred_logits) * sigmoid(presence_logits), boxes are
  normalised xyxy scaled to pixels, mask probabilities (sigmoid of the logits) are resized bilinearly to the
  image and thresholded at 0.5. `detect` then keeps the top `max_detections` scores over all classes of an image
  (cut after every pass, so an image holds at most that many low-resolution masks however many classes),
  drops those under `box_threshold`, clips the boxes to the image (as groundscope's other detectors do) and
  upsamples only the kept masks, a chunk at a time, to COCO RLE;
- the Grounding DINO options `eval run`'s official protocols pass are honoured where they mean something for
  one-class-a-prompt SAM 3 (per_chunk: top-k per class; official_names: repeated names keep their ids, blank
  ones are never detected; caption_prompt: its "name" is the prompt) and accepted without effect where they
  do not (chunk_size, score_rule, rec_rule, tagger, text_threshold).

What it does not do: there is no token-level alignment, so `ground` needs explicit phrases (no phrase decoding
from a caption) and `refer` is not referring-expression top-1 (see its docstring); there is no caption head.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from groundscope import masks as mask_ops
from groundscope.detections import Detections
from groundscope.images import ImageInput, load_image
from groundscope.models.detector import _is_batch, _is_class_list, _per_image
from groundscope.models.sam2_processing import Sam2Processing
from groundscope.prompts import (REC_RULES, PromptError, _unique_classes, clean_class_name, find_phrase_spans,
                                 normalize_caption)

TEXT_LENGTH = 32  # Sam3Processor.__call__: tokenizer(text, padding="max_length", max_length=32)
TEXT_CACHE_SIZE = 512
MASK_THRESHOLD = 0.5  # post_process_instance_segmentation's default
MASK_CHUNK = 32  # masks resized to the image and encoded to RLE at a time


# ---------------------------------------------------------------------------------------------- post-processing
def scores_of(pred_logits: torch.Tensor, presence_logits: torch.Tensor | None) -> torch.Tensor:
    """(B, Q) query logits and (B, 1) presence logits -> (B, Q) scores in [0, 1].

    transformers models/sam3/image_processing_sam3.py, `Sam3ImageProcessor.post_process_instance_segmentation`
    (and `post_process_object_detection`): ``pred_logits.sigmoid() * presence_logits.sigmoid()``.
    """
    scores = pred_logits.float().sigmoid()
    if presence_logits is not None:
        scores = scores * presence_logits.float().sigmoid()
    return scores


def boxes_to_pixels(pred_boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., 4) normalised xyxy -> pixel xyxy of an image of `size` (height, width).

    image_processing_sam3.py `_scale_boxes`: multiplied by (w, h, w, h); Sam3Model already returns xyxy
    (modeling_sam3.py `Sam3Model.forward`: ``box_cxcywh_to_xyxy`` of the refined boxes).
    """
    h, w = size
    return pred_boxes.float() * torch.tensor([w, h, w, h], dtype=torch.float32, device=pred_boxes.device)


def masks_to_image(mask_logits: torch.Tensor, size: tuple[int, int],
                   mask_threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """(N, h', w') mask logits -> bool (N, H, W) at the image's `size` (height, width).

    image_processing_sam3.py `post_process_instance_segmentation`: the sigmoid of the logits is resized with
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` to the target size, then ``> mask_threshold``.
    Each mask is resized on its own, so resizing a subset gives that subset of resizing all.
    """
    h, w = size
    if len(mask_logits) == 0:
        return torch.zeros((0, h, w), dtype=torch.bool)
    probs = mask_logits.float().sigmoid()
    up = F.interpolate(probs[None], size=(int(h), int(w)), mode="bilinear", align_corners=False)[0]
    return up > mask_threshold


def post_process_instance_segmentation(outputs, threshold: float = 0.3, mask_threshold: float = MASK_THRESHOLD,
                                       target_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict]:
    """What transformers' ``Sam3Processor.post_process_instance_segmentation`` returns (it forwards to
    ``Sam3ImageProcessor.post_process_instance_segmentation``, image_processing_sam3.py, whose module imports
    torchvision), without torchvision.

    Args:
        outputs: `Sam3ImageSegmentationOutput` with pred_logits (B, Q), pred_boxes (B, Q, 4) normalised xyxy,
            pred_masks (B, Q, h', w') logits, presence_logits (B, 1) or None.
        threshold: scores strictly above it are kept.
        mask_threshold: mask probabilities strictly above it are on.
        target_sizes: B (height, width); None keeps normalised boxes and the masks' own size.
    Returns:
        per image {"scores": (N,), "boxes": (N, 4) xyxy, "masks": long (N, H, W) of 0/1}.
    """
    scores = scores_of(outputs.pred_logits, outputs.presence_logits)
    if target_sizes is not None and len(target_sizes) != len(scores):
        raise ValueError(f"{len(target_sizes)} target sizes for {len(scores)} images; pass one per image")
    results = []
    for i in range(len(scores)):
        keep = scores[i] > threshold
        boxes = outputs.pred_boxes[i][keep].float()
        logits = outputs.pred_masks[i][keep]
        if target_sizes is not None:
            size = tuple(int(v) for v in target_sizes[i])
            boxes = boxes_to_pixels(boxes, size)
        else:
            size = tuple(logits.shape[-2:])
        masks = masks_to_image(logits, size, mask_threshold)
        results.append({"scores": scores[i][keep], "boxes": boxes, "masks": masks.to(torch.long)})
    return results


# ---------------------------------------------------------------------------------------------- the detector
class Sam3Detector:
    """A loaded SAM 3 image model (transformers `Sam3Model`) with the `GroundingDetector` task surface.

    Build one with `groundscope.load_detector("sam3")` or a folder whose config model_type is sam3 / sam3_video.
    Task methods take one image or a list; with a list they return one `Detections` per image, in order. Every
    result carries SAM 3's own masks unless `masks=False`.
    """

    predicts_masks = True  # its results carry its own masks: --masks keeps them unless a segmenter is named

    def __init__(self, model, tokenizer, processing: Sam2Processing, name: str = "sam3",
                 path: str | Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processing = processing
        self.name = name
        self.path = Path(path) if path is not None else None
        self.max_text_len = TEXT_LENGTH
        self.segmenter = None  # a promptable segmenter loaded for `segmenter=` (re-segments the boxes)
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return f"Sam3Detector({self.name!r}, device={self.device}, dtype={self.dtype})"

    # ------------------------------------------------------------------ public tasks
    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str] | Sequence[Sequence[str]],
        *,
        box_threshold: float = 0.0,
        max_detections: int = 300,
        nms_iou: float | None = None,
        batch_size: int = 4,
        per_chunk: bool = False,
        official_names: bool = False,
        caption_prompt: dict | None = None,
        masks: bool = True,
        mask_threshold: float = MASK_THRESHOLD,
        segmenter=None,
        **options: Any,
    ) -> Detections | list[Detections]:
        """Open-vocabulary detection and instance segmentation: each class name is a text prompt of its own.

        Args:
            images: one image or a list (paths, PIL images or arrays).
            classes: class names shared by all images, or one list per image. `class_ids` index these lists.
                A name that repeats an earlier one (case and dots aside) is prompted once, its boxes under the
                first one's id, as `GroundingDetector.detect` merges them.
            box_threshold: minimum score kept (after the top-k). SAM 3's own demos keep scores above 0.5,
                transformers' post-processing above 0.3.
            max_detections: top-k (query, class) pairs per image over all its classes; with `per_chunk`, per class.
            nms_iou: class-wise box NMS at this IoU when given (SAM 3's pipeline uses none).
            batch_size: (image, class) pairs per forward pass, and images per vision-encoder pass.
            per_chunk: keep the top `max_detections` of every class and concatenate them class by class (the
                LVIS protocol's chunked prediction, a chunk being one class here).
            official_names: as `GroundingDetector.detect`: a repeated name keeps its own class id (prompted again,
                from the text cache), a blank one is never detected instead of an error.
            caption_prompt: per class name, ODinW's {"prefix", "name", "suffix"}: SAM 3 is prompted with the
                "name" (a noun phrase); prefix and suffix, sentence context for Grounding DINO, are not sent.
            masks: keep SAM 3's masks (True) or drop them to save memory (False).
            mask_threshold: probability above which a mask pixel is on.
            segmenter: a `Segmenter` or segmenter name to re-segment the boxes with instead of SAM 3's masks.
            options: `chunk_size` (any: SAM 3 prompts every class alone, so grouping changes nothing) and
                `score_rule` ("mean" / "max": a query has one score, not one per token) are accepted and have
                no effect; anything else is a TypeError.
        Returns:
            `Detections` (a list for a list of images) sorted by score (class by class with `per_chunk`), boxes
            clipped to the image.
        """
        _accept(options, "detect", score_rule=("mean", "max"), chunk_size=None)
        batch = _is_batch(images)
        imgs = list(images) if batch else [images]
        per_image = _per_image(classes, len(imgs), "class lists", _is_class_list)
        enh = caption_prompt or {}
        cache: dict[tuple[str, ...], list] = {}
        prompts = []
        for cl in per_image:
            key = tuple(cl)
            if key not in cache:
                idx, texts = _unique_classes(cl, official_names)
                items = [(i, cl[i], clean_class_name((enh.get(cl[i]) or {}).get("name", text)), None)
                         for i, text in zip(idx, texts)]
                cache[key] = [it for it in items if it[2]]  # a blank name (official_names) is never detected
            prompts.append(cache[key])
        dets = self._run(imgs, prompts, max_detections, box_threshold, batch_size, masks, mask_threshold,
                         per_prompt=per_chunk)
        if nms_iou is not None:
            dets = [d.nms(nms_iou) for d in dets]
        dets = self._resegment(imgs, dets, segmenter, masks)
        return dets if batch else dets[0]

    def ground(
        self,
        images: ImageInput | Sequence[ImageInput],
        captions: str | Sequence[str],
        phrases: Sequence | None = None,
        *,
        box_threshold: float = 0.0,
        max_detections: int = 300,
        batch_size: int = 4,
        masks: bool = True,
        mask_threshold: float = MASK_THRESHOLD,
        segmenter=None,
        **options: Any,
    ) -> Detections | list[Detections]:
        """Phrase grounding by prompting each given phrase on its own.

        SAM 3 has no token-level alignment with a caption, so the caption is not encoded: each phrase (a string
        found in the caption, or (start, end) character spans, as `GroundingDetector.ground` takes them) is a
        text prompt, and its detections carry the phrase's characters in the caption as their span. Without
        `phrases` it raises `PromptError` (no phrase decoding from tokens). `text_threshold` (it only decodes
        phrases) and `score_rule` are accepted and have no effect.

        Returns:
            `Detections` whose labels are phrases, class_ids phrase indices and spans the phrase's characters;
            the top `max_detections` over all phrases.
        """
        _accept(options, "ground", score_rule=("mean", "max"), text_threshold=None)
        batch = _is_batch(images)
        imgs = list(images) if batch else [images]
        caps = _per_image(captions, len(imgs), "captions", lambda v: isinstance(v, str))
        if phrases is None:
            phr: list = [None] * len(imgs)
        elif batch and not isinstance(captions, str):
            phr = _per_image(phrases, len(imgs), "phrase lists", lambda v: False)
        else:
            phr = [phrases] * len(imgs)
        prompts = []
        for cap, ph in zip(caps, phr):
            if ph is None or len(ph) == 0:
                raise PromptError("SAM 3 grounds explicit phrases only (it cannot read phrases off a caption's "
                                  "tokens); pass phrases=[...] (--phrase, or the phrase form field of /v1/ground) "
                                  "naming the caption's phrases")
            text = normalize_caption(cap)
            items = []
            for k, sp in enumerate(find_phrase_spans(text, ph)):
                label = text[sp[0][0] : sp[-1][1]]
                items.append((k, label, _prompt_text(label, f"phrase {k}"), sp))
            prompts.append(items)
        dets = self._run(imgs, prompts, max_detections, box_threshold, batch_size, masks, mask_threshold)
        dets = self._resegment(imgs, dets, segmenter, masks)
        return dets if batch else dets[0]

    def refer(
        self,
        images: ImageInput | Sequence[ImageInput],
        expressions: str | Sequence[str],
        *,
        top_k: int = 1,
        batch_size: int = 4,
        masks: bool = True,
        mask_threshold: float = MASK_THRESHOLD,
        segmenter=None,
        **options: Any,
    ) -> Detections | list[Detections]:
        """The expression as one text prompt; the `top_k` highest-scoring instances.

        This is not the referring-expression (REC) top-1 of Grounding DINO / MM-GDINO / LLMDet, which score
        boxes against the expression's tokens to single out one object: SAM 3 is a concept segmenter and
        returns every instance matching the phrase, so "the cat on the left" may score both cats alike and the
        top-1 is simply its most confident cat. Expect REC accuracy well below that of a grounding model on
        relational expressions. `rec_rule` (any of prompts.REC_RULES) and `tagger` pick the tokens that score a
        box in Grounding DINO; SAM 3 scores the whole text, so they are accepted and have no effect.

        Returns:
            `Detections` of at most `top_k` boxes, class_id 0, the expression as label and as span.
        """
        _accept(options, "refer", rec_rule=REC_RULES, tagger=None)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        batch = _is_batch(images)
        imgs = list(images) if batch else [images]
        exprs = _per_image(expressions, len(imgs), "expressions", lambda v: isinstance(v, str))
        prompts = [[(0, e.strip(), _prompt_text(e, "the expression"), [(0, len(e.strip()))])] for e in exprs]
        dets = self._run(imgs, prompts, top_k, 0.0, batch_size, masks, mask_threshold)
        dets = self._resegment(imgs, dets, segmenter, masks)
        return dets if batch else dets[0]

    def caption(self, image: ImageInput, boxes=None, **_: Any):
        """Not supported: SAM 3 has no caption head (raises `CaptionerError`)."""
        self._require_caption_head()

    def _require_caption_head(self):
        from groundscope.models.captioner import CaptionerError

        raise CaptionerError(f"model '{self.name}' is SAM 3, which cannot caption (it has no language head); "
                             "caption with an LLMDet model folder that has a caption_head/")

    def clear_cache(self) -> None:
        """Forget cached text encodings; call it after changing the weights."""
        self._text_cache.clear()

    # ------------------------------------------------------------------ engine
    def encode_images(self, pixel_values: torch.Tensor):
        """(B, 3, S, S) pixels -> `Sam3VisionEncoderOutput` (fpn_hidden_states / fpn_position_encoding: per level
        (B, C, h_l, w_l)); `Sam3Model.get_vision_features`."""
        return self.model.get_vision_features(pixel_values=pixel_values.to(self.device, self.dtype))

    def text_features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt texts -> (features (T, 32, D), attention mask (T, 32)), each text encoded once and cached (LRU).

        The tokens are what ``Sam3Processor.__call__`` makes (padding="max_length", max_length=32; longer texts
        are truncated to 32 tokens, where transformers' processor would fail); the features are
        ``Sam3Model.get_text_features(...).pooler_output`` (the projected last hidden state).
        """
        # Safe from several threads (the server's streams): each OrderedDict call is atomic, and an entry
        # another thread evicts in between is encoded again.
        found = {t: self._text_cache.get(t) for t in dict.fromkeys(texts)}
        missing = [t for t, v in found.items() if v is None]
        if missing:
            enc = self.tokenizer(missing, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                                 return_tensors="pt")
            ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            feats = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            for k, t in enumerate(missing):
                found[t] = self._text_cache[t] = (feats[k], mask[k])
        for t in found:
            try:
                self._text_cache.move_to_end(t)
            except KeyError:
                pass
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            try:
                self._text_cache.popitem(last=False)
            except KeyError:
                break
        return torch.stack([found[t][0] for t in texts]), torch.stack([found[t][1] for t in texts])

    @torch.inference_mode()
    def _run(self, images, prompts, max_detections: int, box_threshold: float, batch_size: int, masks: bool,
             mask_threshold: float, per_prompt: bool = False) -> list[Detections]:
        """Every image's prompts -> one `Detections` per image.

        `prompts[i]` is a list of (class id, label, prompt text, spans or None). Images are encoded `batch_size`
        at a time; their (image, prompt) pairs run `batch_size` per pass on the encoded features. After each pass
        an image keeps only the candidates that can still make its final top `max_detections` (`_Best`), so
        memory holds at most that many low-resolution masks an image, however many classes are asked.
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        results: list[Detections] = []
        for s in range(0, len(images), batch_size):
            pils = [load_image(im) for im in images[s : s + batch_size]]
            vision = self.encode_images(self.processing.pixel_values(pils))
            best = [_Best((im.height, im.width), max_detections, box_threshold, masks, mask_threshold, per_prompt)
                    for im in pils]
            pairs = [(row, pos, p) for row, ps in enumerate(prompts[s : s + batch_size]) for pos, p in enumerate(ps)]
            for b in range(0, len(pairs), batch_size):
                chunk = pairs[b : b + batch_size]
                rows = torch.tensor([r for r, _, _ in chunk], device=self.device)
                feats, mask = self.text_features([p[2] for _, _, p in chunk])
                out = self.model(vision_embeds=_select(vision, rows), attention_mask=mask,
                                 text_embeds=BaseModelOutputWithPooling(pooler_output=feats))
                scores = scores_of(out.pred_logits, out.presence_logits).cpu()
                for k, (row, pos, p) in enumerate(chunk):
                    best[row].add(pos, p, scores[k], out.pred_boxes[k], out.pred_masks[k] if masks else None)
            results += [b.detections() for b in best]
        return results

    def _resegment(self, images, dets: list[Detections], segmenter, masks: bool) -> list[Detections]:
        """With a `segmenter` (and masks on), each image's boxes re-segmented by it (detect, then segment)."""
        if segmenter is None or not masks:
            return dets
        from groundscope.models.segmenter import segment_detections

        return segment_detections(self, images, dets, segmenter)


class _Best:
    """One image's best candidates over its prompts, kept as they come.

    The result equals a stable descending sort of all (prompt, query) scores in prompt order, cut to `k` and to
    scores >= `threshold`: a candidate of that result is in the top `k` of every subset holding it, so each
    prompt's queries are merged into the kept set (ordered by their flat index prompt * Q + query, so a stable
    sort breaks ties as the global one does) and cut to `k` again. With `per_prompt`, each prompt's top `k` is
    final at once and the prompts' results are concatenated in order.
    """

    def __init__(self, size, k: int, threshold: float, masks: bool, mask_threshold: float, per_prompt: bool):
        self.size, self.k, self.threshold = size, k, threshold
        self.masks, self.mask_threshold, self.per_prompt = masks, mask_threshold, per_prompt
        self.flat = torch.zeros(0, dtype=torch.long)
        self.scores = torch.zeros(0)
        self.boxes = torch.zeros((0, 4))
        self.logits: torch.Tensor | None = None
        self.meta: list[tuple] = []  # the prompt of each kept candidate
        self.parts: list[Detections] = []  # per_prompt: the prompts' finished results

    def add(self, pos: int, prompt: tuple, scores: torch.Tensor, boxes: torch.Tensor, logits: torch.Tensor | None):
        """One prompt's (Q,) scores, (Q, 4) normalised xyxy boxes and (Q, h', w') mask logits (or None)."""
        q = len(scores)
        order = torch.argsort(scores, descending=True, stable=True)[: self.k]
        order = order[scores[order] >= self.threshold]
        if not self.per_prompt:
            order = torch.sort(order).values  # by query index: flat indices ascending, for the merge below
        part_boxes = boxes[order.to(boxes.device)].float().cpu()
        part_logits = None if logits is None else logits[order.to(logits.device)].float().cpu()
        if self.per_prompt:
            self.parts.append(self._finish(scores[order], part_boxes, part_logits, [prompt] * len(order)))
            return
        flat = torch.cat([self.flat, pos * q + order])
        cand_scores = torch.cat([self.scores, scores[order]])
        keep = torch.argsort(cand_scores, descending=True, stable=True)[: self.k]
        keep = torch.sort(keep).values  # back in flat-index order for the next merge
        meta = self.meta + [prompt] * len(order)
        self.flat, self.scores = flat[keep], cand_scores[keep]
        self.boxes = torch.cat([self.boxes, part_boxes])[keep]
        if part_logits is not None:
            self.logits = part_logits[keep] if self.logits is None else torch.cat([self.logits, part_logits])[keep]
        self.meta = [meta[i] for i in keep.tolist()]

    def detections(self) -> Detections:
        if self.per_prompt:
            merged = Detections.merge(self.parts)
            if len(merged) == 0:  # merge drops the masks of empty parts
                return self._finish(self.scores, self.boxes, None, [])
            return merged
        order = torch.argsort(self.scores, descending=True, stable=True)
        logits = None if self.logits is None else self.logits[order]
        return self._finish(self.scores[order], self.boxes[order], logits, [self.meta[i] for i in order.tolist()])

    def _finish(self, scores, boxes, logits, meta) -> Detections:
        """Sorted candidates -> `Detections`: pixel boxes clipped to the image, masks at its size as RLE."""
        h, w = self.size
        xyxy = boxes_to_pixels(boxes.reshape(-1, 4), self.size)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        rles = None
        if self.masks:
            rles = []
            for c in range(0, len(meta), MASK_CHUNK):  # bounded memory: full-size masks a chunk at a time
                rles += mask_ops.encode(masks_to_image(logits[c : c + MASK_CHUNK], self.size,
                                                       self.mask_threshold).numpy())
        with_spans = bool(meta) and meta[0][3] is not None
        return Detections(xyxy=xyxy.numpy(), scores=scores.numpy(), class_ids=[m[0] for m in meta],
                          labels=[m[1] for m in meta], spans=[m[3] for m in meta] if with_spans else None,
                          masks=rles)


def _prompt_text(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"{what} is empty; SAM 3 needs a noun phrase to look for")
    return text.strip()


def _accept(options: dict, task: str, **allowed) -> None:
    """Grounding DINO options with no SAM 3 counterpart: accepted (no effect) when valid, else an error naming
    the option. `allowed` maps an option to its valid values (None: any)."""
    for key, value in options.items():
        if key not in allowed:
            raise TypeError(f"Sam3Detector.{task}() got an unexpected keyword argument '{key}'")
        valid = allowed[key]
        if valid is not None and value not in valid:
            raise ValueError(f"{key} must be one of {', '.join(map(str, valid))}, not {value!r}")


def _select(vision, rows: torch.Tensor):
    """The encoded images' features at `rows` (one row per (image, prompt) pair): every per-image tensor of the
    `Sam3VisionEncoderOutput` indexed along its batch dimension."""
    kwargs = {}
    for key, value in vision.items():
        if isinstance(value, torch.Tensor):
            kwargs[key] = value.index_select(0, rows)
        elif isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
            kwargs[key] = tuple(v.index_select(0, rows) for v in value)
    return type(vision)(**kwargs)


def load_sam3_detector(local: str, display: str, config, device="cpu", dtype: torch.dtype | None = None,
                       precision: str = "fp32") -> Sam3Detector:
    """A `Sam3Detector` from a folder holding a SAM 3 checkpoint (`config`: its AutoConfig, model_type sam3 or
    sam3_video; the video checkpoint's image detector is its ``detector_config`` and ``detector_model.*``
    weights, which `Sam3Model` loads as transformers does: modeling_sam3.py `Sam3Model.__init__`).

    `precision` "bf16" runs weights and activations in bfloat16 (scores and masks post-processed in fp32).
    """
    from transformers import AutoTokenizer, Sam3Model

    from groundscope.models.hub import ModelLoadError

    if precision == "bf16":
        dtype = torch.bfloat16
    detector_config = getattr(config, "detector_config", None) if config.model_type == "sam3_video" else config
    if detector_config is None:
        raise ModelLoadError(f"model '{display}': its sam3_video config in {local} has no detector_config; pass "
                             "the facebook/sam3 folder as released")
    try:
        model = Sam3Model.from_pretrained(local, config=detector_config, dtype=dtype or torch.float32)
    except Exception as e:
        raise ModelLoadError(f"model '{display}': SAM 3 weights in {local} do not load "
                             f"({type(e).__name__}: {e})") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(local)
    except Exception as e:
        raise ModelLoadError(
            f"model '{display}': no usable tokenizer in {local} ({type(e).__name__}: {e}); save SAM 3's CLIP "
            "tokenizer next to the weights (tokenizer.save_pretrained(dir))") from e
    vocab = int(model.config.text_config.vocab_size)
    if len(tokenizer) > vocab:
        raise ModelLoadError(f"model '{display}': its tokenizer has {len(tokenizer)} tokens, more than the text "
                             f"encoder's vocab_size {vocab}; save the tokenizer the model was trained with")
    try:
        processing = Sam2Processing.from_folder(local)
    except Exception as e:
        raise ModelLoadError(f"model '{display}': its preprocessor_config.json in {local} does not read "
                             f"({type(e).__name__}: {e}); save the processor next to the weights") from e
    model.to(device).eval()
    return Sam3Detector(model, tokenizer, processing, name=display, path=local)
