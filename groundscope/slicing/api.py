"""Sliced inference over any detector: `sliced_detect`, `sliced_ground` and `sliced_refer`.

Each image is cut into overlapping tiles (`groundscope.slicing.tiles.tile_boxes`, SAHI's placement), plus the
whole image when ``spec.full_image`` (SAHI's ``perform_standard_pred``; skipped when one tile already is the whole
image, so a tile larger than the image runs the image once and returns exactly what the call without slices
returns: unlike SAHI, which still runs its merge over a single slice's boxes, nothing is merged then). The tiles and the whole image go to the detector's
own method in one call, so they share its batched path: equal-size tiles are batched together and the prompt's
text is encoded once for all of them (`GroundingDetector.text_features` caches it). Each tile's detections are
shifted back into the image and merged (`groundscope.slicing.merge`: class-wise NMS or SAHI's greedy NMM, with
IOS or IOU), then cut to the task's limit (``max_detections``, or ``top_k`` for refer).

The detector is anything with ``detect`` / ``ground`` / ``refer`` returning `Detections` (a `GroundingDetector`,
SAM 3 as a detector, a test stub); nothing here knows a model. ``GroundingDetector.detect(..., slices=...)``
(and ``ground`` / ``refer``) call these functions.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from PIL import Image

from groundscope.detections import Detections
from groundscope.images import load_image
from groundscope.slicing.merge import gather, merge_detections
from groundscope.slicing.tiles import SliceSpec, tile_boxes

Progress = Callable[[int, int], None]


def plan(image: Image.Image, spec: SliceSpec) -> tuple[list[Image.Image], list[tuple[int, int]]]:
    """The inputs one image becomes: its tiles (row by row), then the whole image when `spec.full_image` and
    there is more than one tile; and each input's top-left corner (x, y) in the image.

    A tiling of one tile is the image itself, run once."""
    w, h = image.size
    boxes = tile_boxes(h, w, spec.height, spec.width, spec.overlap)  # (T, 4) int xyxy
    if len(boxes) == 1:
        return [image], [(0, 0)]
    inputs = [image.crop(tuple(int(v) for v in b)) for b in boxes]
    offsets = [(int(b[0]), int(b[1])) for b in boxes]
    if spec.full_image:
        inputs.append(image)
        offsets.append((0, 0))
    return inputs, offsets


def _merged(found: Sequence[Detections], offsets, size: tuple[int, int], spec: SliceSpec, limit: int,
            rekey_labels: bool = False) -> Detections:
    dets = gather(found, offsets, size)
    if rekey_labels and len(dets):
        # Phrases read off the tokens are numbered per input; across tiles the same phrase must be one class.
        names = list(dict.fromkeys(dets.labels))
        dets = Detections(xyxy=dets.xyxy, scores=dets.scores, class_ids=[names.index(x) for x in dets.labels],
                          labels=dets.labels, spans=dets.spans, masks=dets.masks)
    return merge_detections(dets, spec.merge, spec.match, spec.threshold)[: max(int(limit), 0)]


def _run(images, per_image: list, spec: SliceSpec, call: Callable[[list, Any], list[Detections]],
         finish: Callable[[Detections, Any], Detections], limit: int, progress: Progress | None,
         rekey: Callable[[Any], bool] = lambda _: False):
    batch = isinstance(images, (list, tuple))
    imgs = list(images) if batch else [images]
    if len(per_image) != len(imgs):
        raise ValueError(f"{len(per_image)} prompts for {len(imgs)} images")
    out = []
    for k, (source, prompt) in enumerate(zip(imgs, per_image)):
        image = load_image(source)
        inputs, offsets = plan(image, spec)
        found = call(inputs, prompt)
        found = [found] if isinstance(found, Detections) else list(found)
        if len(found) == 1:  # one tile is the whole image: the detector's own answer, as without slices
            out.append(found[0])
        else:
            out.append(finish(_merged(found, offsets, (image.height, image.width), spec, limit, rekey(prompt)),
                              prompt))
        if progress is not None:
            progress(k + 1, len(imgs))
    return out if batch else out[0]


def _broadcast(value, n: int, is_item: Callable[[Any], bool]) -> list:
    if is_item(value):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{len(value)} prompts for {n} images; pass one for all or one per image")
    return value


def _count(images) -> int:
    return len(images) if isinstance(images, (list, tuple)) else 1


def sliced_detect(detector, images, classes, spec: SliceSpec, *, max_detections: int = 300,
                  nms_iou: float | None = None, progress: Progress | None = None, **kwargs) -> Detections | list:
    """`detector.detect` over each image's tiles (and the whole image), merged.

    Args:
        detector: anything with ``detect(images, classes, max_detections=..., **kwargs) -> [Detections]``.
        images: one image or a list (paths, PIL images or arrays), any size.
        classes: class names for all images, or one list per image (``class_ids`` index them).
        spec: the tiling and the merge rule.
        max_detections: the detector's top-k per tile, and the cap on each image's merged result.
        nms_iou: class-wise NMS per tile (the detector's) and once more on the merged result.
        progress: called as ``progress(images done, images)`` after each image.
        kwargs: passed to ``detector.detect`` for every tile (box_threshold, batch_size, masks, segmenter ...);
            masks are made per tile, shifted into the image and united by NMM.
    Returns:
        one `Detections` per image (image pixels, best first), or one for one image.
    """
    per = _broadcast(classes, _count(images), lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str)
                                                                                              for x in v))
    return _run(images, per, spec,
                lambda inputs, cl: detector.detect(inputs, list(cl), max_detections=max_detections, nms_iou=nms_iou,
                                                   **kwargs),
                lambda d, _: d.nms(nms_iou) if nms_iou is not None else d, max_detections, progress)


def sliced_ground(detector, images, captions, phrases=None, spec: SliceSpec | None = None, *,
                  max_detections: int = 300, progress: Progress | None = None, **kwargs) -> Detections | list:
    """`detector.ground` over each image's tiles (and the whole image), merged phrase by phrase.

    `captions` / `phrases` as `GroundingDetector.ground` takes them. Given phrases keep their indices as
    ``class_ids``; phrases read off the tokens (no `phrases`) are numbered in the merged result by first
    appearance, so the same phrase found in two tiles is one class for the merge.
    """
    if spec is None:
        raise TypeError("sliced_ground needs spec, a SliceSpec")
    n = _count(images)
    caps = _broadcast(captions, n, lambda v: isinstance(v, str))
    if phrases is None:
        phr: list = [None] * n
    elif isinstance(images, (list, tuple)) and not isinstance(captions, str):
        phr = _broadcast(phrases, n, lambda v: False)
    else:
        phr = [phrases] * n
    return _run(images, list(zip(caps, phr)), spec,
                lambda inputs, p: detector.ground(inputs, p[0], p[1], max_detections=max_detections, **kwargs),
                lambda d, _: d, max_detections, progress, rekey=lambda p: p[1] is None)


def sliced_refer(detector, images, expressions, spec: SliceSpec, *, top_k: int = 1,
                 progress: Progress | None = None, **kwargs) -> Detections | list:
    """`detector.refer` over each image's tiles (and the whole image): the best `top_k` boxes over all of them,
    by the detector's own score rule (every input is scored with the same expression and ``rec_rule``), after
    the merge (so one object found in two tiles is one answer)."""
    per = _broadcast(expressions, _count(images), lambda v: isinstance(v, str))
    return _run(images, per, spec, lambda inputs, e: detector.refer(inputs, e, top_k=top_k, **kwargs),
                lambda d, _: d, top_k, progress)


def tile_count(image_size: tuple[int, int], spec: SliceSpec) -> int:
    """How many detector inputs one (height, width) image becomes under `spec` (tiles, plus the whole image)."""
    n = len(tile_boxes(int(image_size[0]), int(image_size[1]), spec.height, spec.width, spec.overlap))
    return 1 if n == 1 else n + int(spec.full_image)


__all__ = ["plan", "sliced_detect", "sliced_ground", "sliced_refer", "tile_count"]
