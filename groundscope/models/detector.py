"""`GroundingDetector`: the three tasks (detect, ground, refer) over batches of images.

Per call, images are preprocessed and grouped by their resized size; each group's backbone runs once per image
however many prompt chunks there are; each distinct prompt's text encoding is computed once and cached across
calls; (image, prompt) pairs are fused and decoded in padded batches of `batch_size`. Images of different sizes
are never padded together: the Swin backbone has no padding mask, so padding would change the features of the
smaller image, and a batch must give the same boxes as one image at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from groundscope.detections import Detections
from groundscope.images import LONGEST_EDGE, SHORTEST_EDGE, ImageInput, PreparedImage, load_image, preprocess
from groundscope.models import staged
from groundscope.postprocess import Candidates, decoded_phrases, merge_candidates, to_detections, topk_pairs
from groundscope.prompts import (Prompt, PromptError, caption_prompt, chunk_classes, phrase_prompt, quoted,
                                 rec_prompt)

TEXT_CACHE_SIZE = 512
# On a CPU a forward pass holds at most this many image tokens (an 800x1333 image has 22,223 over its four
# levels), however large `batch_size`: batching large images buys little on a CPU and holds every pair's
# activations at once. Grounding-DINO-T, bf16, the 1230 LVIS names (16 prompt chunks), 2 threads
# (`python benchmarks/bench_chunk_batch.py`): 1 chunk per pass 30.3 s and 2.07 GB peak RSS, 2 per pass 29.0 s and
# 2.46 GB, 4 per pass 28.0 s and 3.43 GB. Small images (nano's 256x416: ~2,200 tokens) still batch up to
# `batch_size`.
CPU_TOKENS_PER_PASS = 24_576


def _is_batch(images: Any) -> bool:
    return isinstance(images, (list, tuple))


def _per_image(value: Any, n: int, what: str, is_item: Callable[[Any], bool]) -> list:
    """Broadcast one prompt to n images, or check a per-image list has n entries."""
    if is_item(value):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise PromptError(f"{len(value)} {what} for {n} images; pass one for all or one per image")
    return value


def _is_class_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)


def _check_classes(classes: Any) -> None:
    """A class argument that is neither a list of names nor one list per image gets a `PromptError` that says
    what it is (instead of being taken for that many per-image lists)."""
    if isinstance(classes, str):
        raise PromptError(f"classes is one string, {quoted(classes)}; pass a list of class names, e.g. "
                          f"{[c.strip() for c in classes.split(',') if c.strip()][:3]!r}")
    if not isinstance(classes, (list, tuple)):
        raise PromptError(f"classes is of type {type(classes).__name__}; pass a list of class names")
    if any(isinstance(c, str) for c in classes):  # one list: every entry must be a name
        for i, c in enumerate(classes):
            if not isinstance(c, str):
                raise PromptError(f"class {i} is {c!r} (of type {type(c).__name__}), not a name; pass class names as "
                                  "strings")
        return
    for k, lst in enumerate(classes):  # one list per image
        if not isinstance(lst, (list, tuple)):
            raise PromptError(f"classes[{k}] is of type {type(lst).__name__}; pass a list of class names, or one list "
                              "per image")
        for i, c in enumerate(lst):
            if not isinstance(c, str):
                raise PromptError(f"class {i} of image {k} is {c!r} (of type {type(c).__name__}), not a name; pass "
                                  "class names as strings")


class GroundingDetector:
    """A loaded Grounding DINO / MM-GDINO / LLMDet model and its tokenizer.

    Build one with `groundscope.load_detector`. All task methods take one image or a list; with a list they
    return a list of `Detections`, one per image, in order.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        name: str = "model",
        image_size: tuple[int, int] = (SHORTEST_EDGE, LONGEST_EDGE),
        path: str | Path | None = None,
    ):
        """`image_size` is (shortest edge, longest edge) of the resize; the published checkpoints use (800, 1333).
        `path` is the folder the model was loaded from (a trained caption head lives in its ``caption_head/``)."""
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = Path(path) if path is not None else None
        self.caption_head = None  # LLMDet's caption head (groundscope.models.captioner), loaded on first caption
        # RKD's head (groundscope.models.rkd_head.RkdScorer), loaded with a model saved with one: `detect` then
        # combines its class scores with the grounding scores
        self.rkd = None
        # The promptable segmenter `masks=True` uses (groundscope.models.segmenter), loaded on first use: the
        # `segmenter` argument, else this attribute, else `default_segmenter(name)`.
        self.segmenter = None
        self.image_size = tuple(int(v) for v in image_size)
        self.max_text_len = int(model.config.max_text_len)
        self._text_cache: OrderedDict[tuple[int, ...], staged.TextFeatures] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return f"GroundingDetector({self.name!r}, {type(self.model).__name__}, device={self.device})"

    # ------------------------------------------------------------------ public tasks
    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str] | Sequence[Sequence[str]],
        *,
        box_threshold: float = 0.0,
        max_detections: int = 300,
        nms_iou: float | None = None,
        score_rule: str = "mean",
        batch_size: int = 4,
        chunk_size: int | None = None,
        per_chunk: bool = False,
        official_names: bool = False,
        caption_prompt: dict | None = None,
        masks: bool = False,
        segmenter=None,
        slices=None,
        overlap: float = 0.2,
        full_image: bool = True,
        merge: str = "nmm",
    ) -> Detections | list[Detections]:
        """Open-vocabulary detection.

        Args:
            images: one image or a list (paths, PIL images or arrays).
            classes: class names shared by all images, or one list per image. `class_ids` index these lists.
            box_threshold: minimum score kept (applied after the top-k).
            max_detections: top-k (query, class) pairs per image (300 is the COCO/LVIS protocol); with
                `per_chunk`, per prompt chunk.
            nms_iou: class-wise NMS at this IoU when given.
            score_rule: "mean" (published rule) or "max" over the class's tokens.
            batch_size: (image, prompt chunk) pairs per forward pass, at most; on a CPU fewer for large images
                (CPU_TOKENS_PER_PASS: one 800x1333 image per pass).
            chunk_size: class names per prompt (mmdetection's ``chunked_size``; 40 in the LVIS protocol). None
                packs as many names as fit in the text limit: fewer forward passes, the faster default.
            per_chunk: keep the top `max_detections` of each chunk and concatenate the chunks (mmdetection's
                chunked prediction, ~9,300 boxes an image for LVIS at 40 names), instead of the top
                `max_detections` over all chunks. Detections then come chunk by chunk, each chunk's best first.
            official_names: prompt the names as the official code does: one that repeats an earlier one (after
                cleaning) under its own class id, instead of sending its boxes to the first occurrence; a blank
                one as text with no tokens (never detected), instead of an error.
            caption_prompt: per class name, {"prefix", "name", "suffix"} to prompt it with (mmdetection's ODinW
                ``caption_prompt``: "there is a package on the porch."); only the name's tokens score it.
            masks: also segment every kept box (detect, then segment, as Grounded-SAM does): `Detections.masks`.
            segmenter: a `Segmenter` or a segmenter name for `masks` (default: `self.segmenter`, else the bundled
                sam-nano for the synthetic world's models and SAM ViT-B otherwise).
            slices: sliced inference for small objects in large images (`groundscope.slicing`, docs/sliced.md):
                tile (height, width) in pixels (or a `SliceSpec`); each image's tiles with `overlap` (in [0, 1)),
                plus the whole image when `full_image`, run through this method in one call and are merged by
                `merge` ("nmm": SAHI's greedy non-maximum merging, "nms": class-wise suppression).
        """
        if slices is not None:
            from groundscope.slicing import slice_spec, sliced_detect

            return sliced_detect(
                self, images, classes, slice_spec(slices, overlap, full_image, merge), box_threshold=box_threshold,
                max_detections=max_detections, nms_iou=nms_iou, score_rule=score_rule, batch_size=batch_size,
                chunk_size=chunk_size, per_chunk=per_chunk, official_names=official_names,
                caption_prompt=caption_prompt, masks=masks, segmenter=segmenter)
        batch = _is_batch(images)
        imgs = list(images) if batch else [images]
        _check_classes(classes)
        per_image = _per_image(classes, len(imgs), "class lists", _is_class_list)
        chunk_cache: dict[tuple[str, ...], list[Prompt]] = {}
        prompts = []
        for cl in per_image:
            key = tuple(cl)
            if key not in chunk_cache:
                chunk_cache[key] = chunk_classes(self.tokenizer, cl, self.max_text_len, chunk_size=chunk_size,
                                                 official_names=official_names, caption_prompt=caption_prompt)
            prompts.append(chunk_cache[key])

        def reduce(out_logits, out_boxes, prompt):
            return topk_pairs(out_logits, out_boxes, prompt, max_detections, score_rule)

        results = self._run(imgs, prompts, reduce, batch_size, rescore=score_rule)
        dets = []
        for cands, size in results:
            if per_chunk:  # official: grounding_dino.py ~L1205-1235, `results_list[0].cat(results_list)`
                d = Detections.merge(
                    [to_detections(c, size, max_detections, box_threshold, with_spans=False) for c in cands]
                )
            else:
                d = to_detections(merge_candidates(cands), size, max_detections, box_threshold, with_spans=False)
            dets.append(d.nms(nms_iou) if nms_iou is not None else d)
        if masks:
            dets = self._add_masks(imgs, dets, segmenter)
        return dets if batch else dets[0]

    def detect_each(
        self,
        image: ImageInput,
        classes: Sequence[str],
        *,
        box_threshold: float = 0.0,
        max_detections: int = 100,
        score_rule: str = "mean",
        batch_size: int = 4,
    ) -> list[Detections]:
        """Each class in a prompt of its own, on one image: one `Detections` per class (``class_ids`` = its index).

        Unlike `detect`, classes do not share the text encoder and fusion, so one class's boxes do not depend on
        which other classes were asked for (RKD's "every {class}" pseudo-boxes and per-prompt proposals are made
        this way). The image backbone still runs once.
        """
        if not classes:
            raise PromptError("no classes given; pass at least one class name")
        prompts = []
        for k, name in enumerate(classes):
            p = chunk_classes(self.tokenizer, [name], self.max_text_len)[0]
            p.entity_ids = [k]
            prompts.append(p)

        def reduce(out_logits, out_boxes, prompt):
            return topk_pairs(out_logits, out_boxes, prompt, max_detections, score_rule)

        (cands, size), = self._run([image], [prompts], reduce, batch_size, rescore=score_rule)
        return [to_detections(c, size, max_detections, box_threshold, with_spans=False) for c in cands]

    def ground(
        self,
        images: ImageInput | Sequence[ImageInput],
        captions: str | Sequence[str],
        phrases: Sequence | None = None,
        *,
        box_threshold: float = 0.0,
        text_threshold: float = 0.25,
        max_detections: int = 300,
        score_rule: str = "mean",
        batch_size: int = 4,
        masks: bool = False,
        segmenter=None,
        slices=None,
        overlap: float = 0.2,
        full_image: bool = True,
        merge: str = "nmm",
    ) -> Detections | list[Detections]:
        """Phrase grounding: boxes for the phrases of a caption.

        Args:
            captions: one caption for all images or one per image.
            phrases: the phrases to ground, as strings found in the caption or (start, end) character spans; one
                list for all images, or (with a list of captions) one list per image. Without phrases, they are
                decoded from the tokens whose probability passes `text_threshold` (the reference demo's rule),
                for queries whose best token passes `box_threshold` (use e.g. 0.35 there).
            masks, segmenter: segment every box, as in `detect`.
            slices, overlap, full_image, merge: sliced inference, as in `detect` (phrase by phrase).
        Returns:
            `Detections` whose labels are phrases, class_ids phrase indices and spans the phrase's characters.
        """
        if slices is not None:
            from groundscope.slicing import slice_spec, sliced_ground

            return sliced_ground(
                self, images, captions, phrases, slice_spec(slices, overlap, full_image, merge),
                box_threshold=box_threshold, text_threshold=text_threshold, max_detections=max_detections,
                score_rule=score_rule, batch_size=batch_size, masks=masks, segmenter=segmenter)
        batch = _is_batch(images)
        imgs = list(images) if batch else [images]
        caps = _per_image(captions, len(imgs), "captions", lambda v: isinstance(v, str))
        if phrases is None:
            phr: list = [None] * len(imgs)
        elif batch and not isinstance(captions, str):
            phr = _per_image(phrases, len(imgs), "phrase lists", lambda v: False)
        else:
            phr = [phrases] * len(imgs)
        prompts = [
            [caption_prompt(self.tokenizer, cap, self.max_text_len) if ph is None
             else phrase_prompt(self.tokenizer, cap, ph, self.max_text_len)]
            for cap, ph in zip(caps, phr)
        ]

        def reduce(out_logits, out_boxes, prompt):
            if not prompt.labels:
                return decoded_phrases(out_logits, out_boxes, prompt, self.tokenizer, box_threshold, text_threshold)
            return topk_pairs(out_logits, out_boxes, prompt, max_detections, score_rule)

        results = self._run(imgs, prompts, reduce, batch_size)
        dets = [
            to_detections(merge_candidates(c), size, max_detections, box_threshold, with_spans=True)
            for c, size in results
        ]
        if masks:
            dets = self._add_masks(imgs, dets, segmenter)
        return dets if batch else dets[0]

    def refer(
        self,
        images: ImageInput | Sequence[ImageInput],
        expressions: str | Sequence[str],
        *,
        top_k: int = 1,
        batch_size: int = 4,
        rec_rule: str = "mean",
        tagger=None,
        masks: bool = False,
        segmenter=None,
        slices=None,
        overlap: float = 0.2,
        full_image: bool = True,
        merge: str = "nmm",
    ) -> Detections | list[Detections]:
        """Referring expression comprehension: the box the expression describes (top-1; top-k on request).

        `rec_rule` says which tokens score a box (`groundscope.prompts.rec_prompt`): "mean" (groundscope's: the
        mean over the whole expression), "mmgdino" (MM-Grounding-DINO's evaluation: the best of all the text's
        tokens) or "llmdet" (LLMDet's: the mean over the first noun phrase, found with NLTK, or with `tagger`:
        ``(tag_fn, stopwords)``). `masks` / `segmenter` segment the answer, as in `detect`. With `slices` (as in
        `detect`) the answer is the best `top_k` over all tiles and the whole image, by the same rule.
        """
        if slices is not None:
            from groundscope.slicing import slice_spec, sliced_refer

            return sliced_refer(
                self, images, expressions, slice_spec(slices, overlap, full_image, merge), top_k=top_k,
                batch_size=batch_size, rec_rule=rec_rule, tagger=tagger, masks=masks, segmenter=segmenter)
        batch = _is_batch(images)
        imgs = list(images) if batch else [images]
        exprs = _per_image(expressions, len(imgs), "expressions", lambda v: isinstance(v, str))
        prompts = [[rec_prompt(self.tokenizer, e, rec_rule, self.max_text_len, tagger)] for e in exprs]
        score_rule = "max" if rec_rule == "mmgdino" else "mean"

        def reduce(out_logits, out_boxes, prompt):
            return topk_pairs(out_logits, out_boxes, prompt, top_k, score_rule)

        results = self._run(imgs, prompts, reduce, batch_size)
        dets = [to_detections(merge_candidates(c), size, top_k, 0.0, with_spans=True) for c, size in results]
        if masks:
            dets = self._add_masks(imgs, dets, segmenter)
        return dets if batch else dets[0]

    def caption(
        self,
        image: ImageInput,
        boxes: Sequence[Sequence[float]] | torch.Tensor | None = None,
        *,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
    ) -> str | list[str]:
        """LLMDet's captions: the image's detailed caption, or a phrase for each given box.

        Needs a caption head (``caption_head/`` beside the weights, written by training with ``caption.enabled``,
        or one assigned to ``detector.caption_head``).

        Args:
            image: one image.
            boxes: (N, 4) pixel xyxy boxes to describe (e.g. ``detections.xyxy``); None for the whole image.
            prompt: the detector's text prompt while it looks (the memory is text-fused); default: the head's.
            max_new_tokens: generation budget (default: the head's training limits, at most 256 for images).
        Returns:
            the caption, or one phrase per box.
        """
        from groundscope.models.captioner import caption_image, caption_regions, look

        head = self._require_caption_head()
        prepared = self.prepare([image])[0]
        view = look(self, prepared.pixel_values, prompt or head.config.default_prompt)
        if boxes is None:
            return caption_image(head, view, max_new_tokens or min(head.config.image_max_tokens, 256))
        box_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        return caption_regions(head, view, box_t, prepared.orig_size, max_new_tokens or head.config.region_max_tokens)

    def _add_masks(self, images: Sequence[ImageInput], dets: list[Detections], segmenter=None) -> list[Detections]:
        """Each image's detections with a mask per box from the segmenter (each image encoded once)."""
        from groundscope.models.segmenter import default_segmenter, segment_detections

        return segment_detections(self, images, dets, segmenter, default_segmenter(self.name))

    def _require_caption_head(self):
        if self.caption_head is None:
            from groundscope.models.captioner import CaptionerError, load_caption_head

            folder = self.path / "caption_head" if self.path is not None else None
            if folder is None or not folder.exists():
                raise CaptionerError(
                    f"model '{self.name}' has no caption head (no caption_head/ in its folder); LLMDet's released "
                    "checkpoints drop it: train one with groundscope train configs/llmdet_stage1_synth.yaml "
                    "(caption.enabled) and caption with the model folder it writes"
                )
            self.caption_head = load_caption_head(folder, self.device)
        return self.caption_head

    # ------------------------------------------------------------------ engine
    def text_features(self, prompt: Prompt) -> staged.TextFeatures:
        """The prompt's text encoding, computed once and cached (LRU) across images and calls."""
        # Safe from several threads at once (the server's model streams): each OrderedDict call is atomic, and
        # an entry another thread evicts in between costs at most a second encoding.
        key = tuple(prompt.input_ids[0].tolist())
        hit = self._text_cache.get(key)
        if hit is not None:
            try:
                self._text_cache.move_to_end(key)
            except KeyError:
                pass
            return hit
        feats = staged.encode_text(self.model, prompt.input_ids.to(self.device))
        self._text_cache[key] = feats
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            try:
                self._text_cache.popitem(last=False)
            except KeyError:
                break
        return feats

    def clear_cache(self) -> None:
        """Forget cached text encodings; call it after changing the weights (e.g. between training steps)."""
        self._text_cache.clear()

    def prepare(self, images: Sequence[ImageInput]) -> list[PreparedImage]:
        return [preprocess(load_image(im), *self.image_size) for im in images]

    @torch.inference_mode()
    def _run(
        self,
        images: Sequence[ImageInput],
        prompts: list[list[Prompt]],
        reduce: Callable[[torch.Tensor, torch.Tensor, Prompt], Candidates],
        batch_size: int,
        rescore: str | None = None,
    ) -> list[tuple[list[Candidates], tuple[int, int]]]:
        """Run every (image, prompt) pair and reduce each pair's outputs to candidates at once (so memory holds
        one batch of raw outputs, not all of them). Returns per image its candidates and original size.
        `rescore` (class prompts only: the score rule) lets an RKD head combine its scores into the logits."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # A window of images at a time bounds memory for long lists while still grouping equal sizes.
        window = max(4 * batch_size, 8)
        results = []
        for s in range(0, len(images), window):
            results += self._run_window(images[s : s + window], prompts[s : s + window], reduce, batch_size,
                                        rescore)
        return results

    def _pairs_per_pass(self, batch_size: int, height: int, width: int) -> int:
        """(image, prompt) pairs per forward pass for inputs of this size: `batch_size`, and on a CPU no more
        than CPU_TOKENS_PER_PASS image tokens (at least one pair)."""
        if torch.device(self.device).type != "cpu":
            return batch_size
        levels = getattr(self.model.config, "num_feature_levels", 4)
        return max(1, min(batch_size, CPU_TOKENS_PER_PASS // max(1, _image_tokens(height, width, levels))))

    def _run_window(self, images, prompts, reduce, batch_size, rescore=None):
        prepared = self.prepare(images)
        out: list[list[Candidates]] = [[] for _ in prepared]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(tuple(p.pixel_values.shape[1:]), []).append(i)
        for (height, width), members in groups.items():
            per_pass = self._pairs_per_pass(batch_size, height, width)
            # Backbone: once per image, per_pass images at a time.
            feats = []
            for s in range(0, len(members), per_pass):
                px = torch.stack([prepared[i].pixel_values for i in members[s : s + per_pass]])
                feats.append(staged.encode_images(self.model, px.to(self.device, self.dtype)))
            image_feats = _concat_features(feats)
            pairs = [(row, i, p) for row, i in enumerate(members) for p in prompts[i]]
            for s in range(0, len(pairs), per_pass):
                chunk = pairs[s : s + per_pass]
                texts = [self.text_features(p) for _, _, p in chunk]
                raw = staged.fuse_and_decode(self.model, image_feats.select([r for r, _, _ in chunk]), texts)
                for k, (_, i, p) in enumerate(chunk):
                    logits = raw.logits[k]
                    if rescore is not None and self.rkd is not None:
                        logits = self.rkd.rescore(logits, raw.query_features[k], p, rescore)
                    out[i].append(reduce(logits, raw.boxes[k], p))
        return [(c, p.orig_size) for c, p in zip(out, prepared)]


def _image_tokens(height: int, width: int, levels: int = 4) -> int:
    """Encoder tokens of a (height, width) input: the backbone's stride-8, 16 and 32 maps plus one more
    stride-64 level (rounded up, as the convolutions do)."""
    return sum(-(-height // 2 ** (3 + lv)) * -(-width // 2 ** (3 + lv)) for lv in range(levels))


def _concat_features(items: list[staged.ImageFeatures]) -> staged.ImageFeatures:
    if len(items) == 1:
        return items[0]
    return staged.ImageFeatures(
        torch.cat([f.source for f in items]),
        torch.cat([f.mask for f in items]),
        torch.cat([f.pos for f in items]),
        items[0].spatial_shapes_list,
        torch.cat([f.valid_ratios for f in items]),
    )
