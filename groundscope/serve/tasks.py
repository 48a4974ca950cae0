"""The detector's three tasks as the server queues and batches them.

A request becomes a batch key (its task and scalar options: requests may share a forward pass only when they
share these, because `GroundingDetector` takes them once per call) and an `Item` (the decoded image and its own
prompt: class list, caption and phrases, or expression, which the detector accepts per image).

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
TASKS = ("detect", "ground", "refer", "describe")


@dataclass
class Item:
    """One request's per-image input.

    Attributes:
        image: what the model receives: the decoded RGB image or its `PreparedImage` (see `prepare_input`);
            describe always gets the image itself.
        prompt: detect: the class names; ground: (caption, phrases or None); refer: the expression;
            describe: ("regions", [region dicts]) or ("expression", text).
    """

    image: Image.Image | PreparedImage
    prompt: Any


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


def batch_key(task: str, **options: Any) -> tuple:
    """Requests with equal keys run in one detector call: same task, same thresholds and limits."""
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


def make_runner(detector, batch_size: int, describer=None) -> Callable[[Hashable, list[Item]], list]:
    """``run(key, items) -> [Detections]`` (or, for describe, a list of `RegionDescription` per item): one model
    call for a batch of same-key items. It may be called from several threads at once (the batcher's streams):
    detector calls share the model, whose forward pass keeps no state; describe calls take turns."""
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
        images = [it.image for it in items]
        if task == "detect":
            return detector.detect(images, [list(it.prompt) for it in items], batch_size=batch_size, **options)
        if task == "ground":
            captions = [it.prompt[0] for it in items]
            phrases = [it.prompt[1] for it in items]  # None for an item whose phrases are read off the tokens
            return detector.ground(images, captions, phrases, batch_size=batch_size, **options)
        return detector.refer(images, [it.prompt for it in items], batch_size=batch_size, **options)

    return run
