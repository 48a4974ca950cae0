"""The detector's three tasks as the server queues and batches them.

A request becomes a batch key (its task and scalar options: requests may share a forward pass only when they
share these, because `GroundingDetector` takes them once per call) and an `Item` (the decoded image and its own
prompt: class list, caption and phrases, or expression, which the detector accepts per image).

``masks`` is part of the key, so a box-only request never waits for another request's segmentation. So is
``slicing`` (a `groundscope.slicing.SliceSpec`, from the ``slices`` form field): such an item holds the decoded
image, which `groundscope.slicing` cuts into tiles, and its batch runs the sliced task. After the
batched detector call, a masks batch segments each item's boxes on the item's original decoded image (the model
input may be a resized `PreparedImage`; masks are at the image's own size), one image at a time as
`groundscope detect --masks` does, so the RLE strings are the CLI's. The server's segmenter sits in a
`SegmenterSlot`: given loaded, or loaded once by the first masks request.

The defaults are the CLI's, so a request that names only its prompt gets the numbers `groundscope detect`,
`ground` or `refer` write for the same image.

The resize and normalisation a `GroundingDetector` applies to every image (tens of milliseconds on a CPU, more
than the forward pass of a small model on a GPU) run in the server's decode pool too, so they overlap with the
model instead of queueing in front of it: `prepare_input` makes the `PreparedImage` there, and `make_runner`
calls a shallow copy of the detector whose `prepare` passes such inputs through. The copy shares the model,
tokenizer and text cache; the caller's detector is left as it was. Preprocessing is deterministic, so the boxes
are the ones the detector computes from the image itself.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from PIL import Image

from groundscope.images import PreparedImage, preprocess
from groundscope.models.detector import GroundingDetector

# The CLI's defaults (groundscope/cli/detect.py detect / ground / refer); tests/test_serve.py checks the answers match.
DETECT_DEFAULTS = {"box_threshold": 0.3, "max_detections": 300}
GROUND_DEFAULTS = {"box_threshold": 0.3, "text_threshold": 0.25, "max_detections": 100}
REFER_DEFAULTS = {"top_k": 1}
TASKS = ("detect", "ground", "refer", "describe", "describe_video")


@dataclass
class Item:
    """One request's per-image input.

    Attributes:
        image: what the model receives: the decoded RGB image or its `PreparedImage` (see `prepare_input`);
            describe always gets the image itself; describe_video a `groundscope.serve.video.VideoUpload`.
        prompt: detect: the class names; ground: (caption, phrases or None); refer: the expression;
            describe and describe_video: ("regions", [region dicts]) or ("expression", text).
        original: the decoded RGB image, for a masks request: the segmenter works on it, not on `image`.
    """

    image: Any  # Image.Image | PreparedImage | VideoUpload
    prompt: Any
    original: Image.Image | None = None  # the decoded image (not decoded again), kept when the request asks for masks


def prepare_input(detector, image: Image.Image) -> Image.Image | PreparedImage:
    """The model-ready input for `image`: resized and normalised for a `GroundingDetector` (as its `prepare`
    does), the image itself for any other detector-like object."""
    if isinstance(detector, GroundingDetector):
        return preprocess(image, *detector.image_size)
    return image


def _accepting_prepared(detector):
    """A shallow copy of `detector` whose `prepare` passes `PreparedImage` inputs through unchanged."""
    if not isinstance(detector, GroundingDetector):
        return detector
    view = copy.copy(detector)
    own_prepare = detector.prepare

    def prepare(images):
        return [im if isinstance(im, PreparedImage) else own_prepare([im])[0] for im in images]

    view.prepare = prepare  # an instance attribute: shadows the method on the copy only
    return view


class SegmenterUnavailable(RuntimeError):
    """The segmenter for a masks request cannot be loaded; the message is the loader's (it names the fix)."""


class SegmenterSlot:
    """The server's segmenter for ``masks=true`` requests.

    Given a `Segmenter`, that one; given a name (or None: `default_segmenter(detector_name)`), it is loaded by the
    first `get`, once: concurrent first requests wait on a lock for the same load instead of loading it twice.
    A failed load is remembered and re-raised without retrying: the loader's failures (unknown name, not cached
    while offline, not a SAM-family folder) do not heal by themselves, and retrying would cost every masks request
    a load attempt. Restarting the server with a working --segmenter is the fix the message gives.
    """

    def __init__(self, segmenter=None, *, detector_name: str | None = None, device: str = "cpu"):
        self._lock = threading.Lock()
        self._device = device
        self._error: str | None = None
        self.explicit = segmenter is not None  # named by the caller (not the default pairing)
        if segmenter is None or isinstance(segmenter, (str, os.PathLike)):
            from groundscope.models.segmenter import default_segmenter

            self._segmenter = None
            self._name = str(segmenter) if segmenter is not None else default_segmenter(detector_name)
        else:
            self._segmenter = segmenter
            self._name = segmenter.name

    @property
    def name(self) -> str | None:
        """The loaded segmenter's name; None until one is loaded."""
        return self._segmenter.name if self._segmenter is not None else None

    @property
    def error(self) -> str | None:
        """Why the segmenter could not be loaded, once a load failed."""
        return self._error

    def get(self):
        """The `Segmenter`, loading it on first use; raises `SegmenterUnavailable` with the loader's message."""
        if self._segmenter is not None:  # the common case takes no lock
            return self._segmenter
        with self._lock:
            if self._segmenter is None:
                if self._error is None:
                    self._load()
                if self._error is not None:
                    raise SegmenterUnavailable(self._error)
            return self._segmenter

    def _load(self) -> None:
        from groundscope.models.hub import ModelLoadError
        from groundscope.models.segmenter import load_segmenter
        from groundscope.serve.threads import in_fresh_thread

        try:
            # In a thread that exits: the caller's thread keeps no OpenMP pool (serve/threads.py).
            self._segmenter = in_fresh_thread(load_segmenter, self._name, device=self._device)
        except ModelLoadError as e:
            self._error = str(e)


def batch_key(task: str, **options: Any) -> tuple:
    """Requests with equal keys run in one detector call: same task, same thresholds and limits, and the same
    ``masks`` choice (a masks option is part of `options`)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return (task, tuple(sorted(options.items())))


def describe_items(describer, detector, items: list[Item], batch_size: int, **gen: Any) -> list[list]:
    """One list of `RegionDescription` per item: every region item's regions in one `Describer.describe` call
    (vision forward passes of `batch_size` regions, across requests), each expression detected-then-described."""
    out: list[list | None] = [None] * len(items)
    with_regions = [i for i, it in enumerate(items) if it.prompt[0] == "regions"]
    if with_regions:
        found = describer.describe([items[i].image for i in with_regions], [items[i].prompt[1] for i in with_regions],
                                   batch_size=batch_size, **gen)
        for i, res in zip(with_regions, found):
            out[i] = res
    for i, it in enumerate(items):
        if it.prompt[0] == "expression":
            out[i] = [describer.describe_expression(it.image, it.prompt[1], detector, **gen)]
    return out


def describe_video_items(describer, detector, video_segmenter, items: list[Item], *, frames: int | None = None,
                         frame: int = 0, track: bool = False, **gen: Any) -> list[list]:
    """One list of `RegionDescription` per clip item, as ``groundscope describe CLIP`` makes them: with a
    `video_segmenter`, the one region (or the expression's top-1 box) given on `frame` and propagated, `frames`
    sampled among the frames where its mask is not empty (the official demo_video.py pipeline); without one,
    `frames` sampled over the clip (read once for all its regions), each region kept where it is on every frame,
    an expression found on the first sampled frame (`track`: on every one)."""
    from groundscope.describe.video import load_video
    from groundscope.images import ImageLoadError

    out = []
    for it in items:
        kind, value = it.prompt
        path = it.image.path
        if video_segmenter is not None:
            if kind == "expression":
                res = [describer.describe_video(path, expression=value, detector=detector, frame=frame,
                                                segmenter=video_segmenter, num_frames=frames, **gen)]
            else:
                res = [describer.describe_video(path, r, frame=frame, segmenter=video_segmenter, num_frames=frames,
                                                **gen) for r in value]
        else:
            try:
                clip = load_video(path, frames or describer.config.num_frames)
            except ImageLoadError:
                clip = path  # each region's result then carries the reading error, named
            if kind == "expression":
                res = [describer.describe_video(clip, expression=value, detector=detector, track=track, **gen)]
            else:
                res = [describer.describe_video(clip, r, **gen) for r in value]
        for r in res:  # the temporary file's name means nothing to the client
            if r.error:
                r.error = r.error.replace(str(path), it.image.name)
        out.append(res)
    return out


def make_runner(detector, batch_size: int, describer=None, segmenter: SegmenterSlot | None = None,
                video_segmenter=None) -> Callable[[Hashable, list[Item]], list]:
    """``run(key, items) -> [Detections]`` (or, for describe, a list of `RegionDescription` per item): one model
    call for a batch of same-key items. It may be called from several threads at once (the batcher's streams):
    detector calls share the model, whose forward pass keeps no state; describe calls take turns. A key with
    ``masks=True`` segments every item's boxes on its original image with ``segmenter.get()`` (the server
    loads it before queueing such a request, so a load failure never reaches the batch)."""
    plain_detector = detector
    detector = _accepting_prepared(detector)
    describe_lock = threading.Lock()  # the describer's generation is not known to be thread-safe: one at a time
    tokenizer = getattr(detector, "tokenizer", None)
    if callable(tokenizer):
        # A fast tokenizer's first call may reset its padding / truncation settings (a write); afterwards calls
        # with the same settings only read them, which concurrent model streams may do.
        tokenizer("warm up")

    def run(key: tuple, items: list[Item]) -> list:
        task, options = key[0], dict(key[1])
        if task == "describe":
            with describe_lock:
                return describe_items(describer, plain_detector, items, batch_size, **options)
        if task == "describe_video":
            with describe_lock:
                return describe_video_items(describer, plain_detector, video_segmenter, items, **options)
        masks = options.pop("masks", False)
        spec = options.pop("slicing", None)
        images = [it.image for it in items]
        if spec is not None:  # the decoded images, cut into tiles: groundscope.slicing (docs/sliced.md)
            from groundscope.slicing import sliced_detect, sliced_ground, sliced_refer

            if task == "detect":
                out = sliced_detect(plain_detector, images, [list(it.prompt) for it in items], spec,
                                    batch_size=batch_size, **options)
            elif task == "ground":
                out = sliced_ground(plain_detector, images, [it.prompt[0] for it in items],
                                    [it.prompt[1] for it in items], spec, batch_size=batch_size, **options)
            else:
                out = sliced_refer(plain_detector, images, [it.prompt for it in items], spec, batch_size=batch_size,
                                   **options)
        elif task == "detect":
            out = detector.detect(images, [list(it.prompt) for it in items], batch_size=batch_size, **options)
        elif task == "ground":
            captions = [it.prompt[0] for it in items]
            phrases = [it.prompt[1] for it in items]  # None for an item whose phrases are read off the tokens
            out = detector.ground(images, captions, phrases, batch_size=batch_size, **options)
        else:
            out = detector.refer(images, [it.prompt for it in items], batch_size=batch_size, **options)
        if masks and getattr(plain_detector, "predicts_masks", False) and not (segmenter and segmenter.explicit):
            pass  # a detector with its own masks (SAM 3) keeps them unless a segmenter was named
        elif masks:
            if segmenter is None:
                raise SegmenterUnavailable("this runner has no segmenter for masks requests")
            seg = segmenter.get()
            # One image at a time, as the CLI's --masks loop does: a batched image-encoder pass is not guaranteed
            # to give bit-identical embeddings, and a last-bit change can flip a mask pixel at the threshold.
            out = [seg.add_masks(it.original, d) for it, d in zip(items, out)]
        return out

    return run
