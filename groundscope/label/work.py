"""The unit of labelling work: a fixed chunk of images, and what one chunk turns into.

Why fixed chunks: the detector's float results depend (in the last bits) on which images share a forward pass
and on the thread count, so the same image in a different batch can score 1e-7 differently, and a rounded value
in the output could flip. Cutting the input list into chunks ``[j*B, (j+1)*B)`` once, and always detecting a
chunk's readable images together, makes every path through the code (one process, resumed, Ray) run exactly
the same forward passes, hence write the same bytes.

A chunk record (one line of ``FILE.partial.jsonl``, and what a Ray worker sends back)::

    {"chunk": 0, "images": ["/abs/a.png", "/abs/b.png"],
     "results": [{"pos": 0, "image": "imgs/a.png", "width": 601, "height": 429,
                  "detections": [{"box": [x1, y1, x2, y2], "score": 0.81, "class_id": 2}]}],
     "failures": [{"pos": 1, "image": "imgs/b.png", "reason": "no such file",
                   "error": "cannot read image 'imgs/b.png': no such file"}]}

``images`` are absolute paths (the chunk's identity for resuming), ``image`` the path as the user gave it,
``pos`` the position inside the chunk; boxes and scores are kept at full precision (the writers round).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from groundscope.images import ImageLoadError, describe_source, load_image
from groundscope.slicing.tiles import SliceError, SliceSpec


class LabelError(RuntimeError):
    """Labelling cannot start or continue; the message names the input and the fix."""


@dataclass(frozen=True)
class LabelSettings:
    """Everything that decides the labels (a resumed run must use the same).

    Attributes:
        model: registry name, hub id or local directory (as `load_detector` takes it).
        classes: class names; category k of the output is ``classes[k]``.
        box_threshold: minimum score kept (after the top-k), as in ``groundscope detect``.
        max_detections: top-k (box, class) pairs per image.
        nms: class-wise NMS IoU, or None for none.
        batch_size: images per chunk and (image, prompt) pairs per forward pass.
        precision: "fp32" (the reference's numbers) or "bf16" (the fast CPU path), as `load_detector` takes it.
        masks: also segment every kept box (detect, then segment) and write each instance's mask.
        segmenter: the segmenter for `masks` (registry name, hub id or folder); None: the detector's default
            pairing (`groundscope.models.segmenter.default_segmenter`).
        polygons: write COCO masks as polygons instead of RLE.
        slicing: sliced inference (`groundscope.slicing.SliceSpec`: tiles, overlap, whole image, merge rule) for
            small objects in large images; None detects each image whole.
    """

    model: str
    classes: tuple[str, ...]
    box_threshold: float = 0.3
    max_detections: int = 300
    nms: float | None = None
    batch_size: int = 4
    precision: str = "fp32"
    masks: bool = False
    segmenter: str | None = None
    polygons: bool = False
    slicing: SliceSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if isinstance(self.slicing, dict):  # read back from a resume log
            try:
                object.__setattr__(self, "slicing", SliceSpec(**self.slicing))
            except (TypeError, SliceError) as e:
                raise LabelError(f"slicing settings {self.slicing!r}: {e}") from None
        if not self.classes:
            raise LabelError('no classes given; pass --classes "cat,remote control" or --classes-file FILE')
        seen: set[str] = set()
        for name in self.classes:
            if name in seen:
                raise LabelError(f"class {name!r} is given twice; each class becomes one category, list it once")
            seen.add(name)
        if not 0.0 <= self.box_threshold <= 1.0:
            raise LabelError(f"box threshold {self.box_threshold} is outside [0, 1]")
        if self.max_detections < 1 or self.batch_size < 1:
            raise LabelError(f"max_detections ({self.max_detections}) and batch_size ({self.batch_size}) must be >= 1")
        if self.nms is not None and not 0.0 <= self.nms <= 1.0:
            raise LabelError(f"NMS IoU {self.nms} is outside [0, 1]")
        if self.precision not in ("fp32", "bf16"):
            raise LabelError(f"precision {self.precision!r}: use fp32 or bf16")
        if (self.polygons or self.segmenter) and not self.masks:
            raise LabelError("--polygons and --segmenter shape masks; add --masks to make them")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelSettings":
        return cls(**{**d, "classes": tuple(d["classes"])})


@dataclass(frozen=True)
class Chunk:
    """Images ``start .. start + len(images)`` of the input list, always detected together.

    Attributes:
        index: chunk number j (the chunk starts at input index ``j * batch_size``).
        start: input index of its first image.
        images: the paths as the user gave them (names in messages and results).
        locations: the same paths made absolute (what is opened; the chunk's identity when resuming).
    """

    index: int
    start: int
    images: tuple[str, ...]
    locations: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "images": list(self.images),
                "locations": list(self.locations)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Chunk":
        return cls(int(d["index"]), int(d["start"]), tuple(d["images"]), tuple(d["locations"]))


def plan_chunks(paths: Sequence[str | Path], batch_size: int) -> list[Chunk]:
    """Cut the input list into chunks of ``batch_size`` (the last may be shorter)."""
    given = [str(p) for p in paths]
    return [
        Chunk(j, s, tuple(given[s : s + batch_size]), tuple(os.path.abspath(p) for p in given[s : s + batch_size]))
        for j, s in enumerate(range(0, len(given), batch_size))
    ]


def failure_reason(error: ImageLoadError) -> str:
    """The reason part of an `ImageLoadError` (its message without "cannot read image '<source>': ")."""
    prefix = f"cannot read image {describe_source(error.source)}: "
    text = str(error)
    return text[len(prefix):] if text.startswith(prefix) else text


def open_image(image: str, location: str) -> Image.Image:
    """Load ``location`` (an absolute path); a failure is reported under the name the user gave (``image``),
    so the message is the same whether this runs here or on a Ray worker in another folder."""
    try:
        return load_image(location)
    except ImageLoadError as e:
        raise ImageLoadError(image, failure_reason(e)) from None


def label_chunk(detector, chunk: Chunk, settings: LabelSettings) -> dict[str, Any]:
    """Detect the chunk's readable images in one call and return its chunk record (module docstring)."""
    loaded: list[tuple[int, Image.Image]] = []
    failures = []
    for pos, (image, location) in enumerate(zip(chunk.images, chunk.locations)):
        try:
            loaded.append((pos, open_image(image, location)))
        except ImageLoadError as e:
            failures.append({"pos": pos, "image": image, "reason": failure_reason(e), "error": str(e)})
    results = []
    if loaded:
        options = {"box_threshold": settings.box_threshold, "max_detections": settings.max_detections,
                   "nms_iou": settings.nms, "batch_size": settings.batch_size,
                   **({"masks": True, "segmenter": settings.segmenter} if settings.masks else {})}
        ims = [im for _, im in loaded]
        if settings.slicing is not None:  # each image's tiles (and the whole image) merged: groundscope.slicing
            from groundscope.slicing.api import sliced_detect

            dets = sliced_detect(detector, ims, list(settings.classes), settings.slicing, **options)
        else:
            dets = detector.detect(ims, list(settings.classes), **options)
        for (pos, im), d in zip(loaded, dets):
            # float(np.float32) is exact and JSON round-trips Python floats exactly, so a record read back
            # from the partial file writes the same output as the one computed now.
            found = [{"box": [float(v) for v in d.xyxy[i]], "score": float(d.scores[i]),
                      "class_id": int(d.class_ids[i])} for i in range(len(d))]
            if d.masks is not None:
                for rec, rle in zip(found, d.masks):
                    rec["mask"] = rle
            results.append({"pos": pos, "image": chunk.images[pos], "width": im.width, "height": im.height,
                            "detections": found})
    return {"chunk": chunk.index, "images": list(chunk.locations), "results": results, "failures": failures}


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible here, else ``cpu``; anything else as given."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
