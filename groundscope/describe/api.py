"""Describe regions of images and videos with a DAM model: `load_describer` -> `Describer`.

    from groundscope.describe import load_describer
    dam = load_describer("dam-3b")                          # or "dam-nano", "nvidia/DAM-3B", a local folder
    dam.describe("photo.jpg", box=(10, 20, 200, 240))       # one region -> RegionDescription
    dam.describe("photo.jpg", [{"box": (10, 20, 200, 240)}, {"mask": "cat_mask.png"}, {"points": [(50, 60)]}])
    dam.describe(["a.jpg", "b.jpg"], [[{"box": ...}], [{"mask": m1}, {"mask": m2}]])   # per image -> lists
    dam.describe_video("clip.mp4", {"box": (10, 20, 200, 240)})                       # 8 frames, one box for all
    dam.describe_expression("photo.jpg", "the cat on the left", load_detector("nano"))  # refer, then describe

A region is a dict (or any object with those attributes, e.g. `Region`) with exactly one of ``mask`` ((H, W)
array, non-zero inside, or the path of a mask image of the image's size), ``box`` ((x1, y1, x2, y2) pixels) or
``points`` ((N, 2) (x, y) pixels) or ``scribble`` (strokes: an (H, W) array or mask image), and optionally a
``name`` (read by `groundscope.describe.regions`). With a segmenter (``load_describer(..., segmenter=
"sam-vit-base")``) boxes, points and scribbles become SAM masks as the official pipeline makes them; without one a
box is its filled rectangle, points are small discs and a scribble its own strokes
(`groundscope.describe.focal.region_to_mask`), with a one-time notice naming the fix.

A region that cannot be described (empty mask, box outside the image, unreadable image or mask file) does not stop
the batch: its `RegionDescription` has ``error`` set (naming the region and the fix) and empty text; the others
are described.

Videos (`describe_video`, read by `groundscope.describe.video`): a video file (read with PyAV), a folder of frames
(sorted by name) or a list of frames; `num_frames` frames (default: the model's, 8 for DAM-3B-Video) are sampled as
the official ``np.linspace(0, n - 1, 8, dtype=int)`` (repeated for a shorter video), each frame gets its own focal
prompt with its own mask, and the frames' tokens enter the prompt in time order.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from groundscope.describe.config import DamError
from groundscope.describe.focal import RegionError
from groundscope.describe.model import DamModel, load_dam
from groundscope.describe.presets import generation_preset, seed_everything

# Some names are imported only to keep their old path, `groundscope.describe.api`, working (noqa: F401).
from groundscope.describe.regions import (  # noqa: F401
    REGION_KEYS,
    Region,
    _fields,
    _given_box,
    _safe_name,
    read_mask,
    region_mask,
)
from groundscope.describe.video import (  # noqa: F401
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    VideoClip,
    frame_files,
    is_video_source,
    load_video,
    sample_indices,
)
from groundscope.images import ImageInput, ImageLoadError, load_image

DEFAULT_DESCRIBER = "dam-nano"


# ---------------------------------------------------------------------------------------------- types
@dataclass
class RegionDescription:
    """One region's description.

    Attributes:
        text: the description ("" when `error` is set).
        box: the region's box in pixels, (x1, y1, x2, y2): the box given for a box region (or the detector's, for
            an expression), else the mask's tight box (ends exclusive); for a video the union over the frames.
            None when the region could not be read.
        area: the mask's pixel count (for a video the mean over the sampled frames); 0 on error.
        error: None, or why the region was not described, naming it and saying what to do.
        name: how the region is named ("region 0", "image 1 region 0", or the name it was given).
        expression / score: for `describe_expression`: the referring expression and the detector's score of `box`.
        frames: for a video, the sampled frame indices (into the source video / folder / list).
        frame_boxes: for a video, the region's box in each sampled frame.
        mask: the (H, W) bool mask described (for a video, a list, one per sampled frame); not serialised.
    """

    text: str
    box: list[float] | None
    area: int
    error: str | None = None
    name: str = ""
    expression: str | None = None
    score: float | None = None
    frames: list[int] | None = None
    frame_boxes: list[list[float]] | None = None
    mask: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, ndigits: int | None = 2) -> dict[str, Any]:
        """``{"box", "area", "text", "error"}`` plus ``name`` and, when set, ``expression``, ``score``, ``frames``,
        ``frame_boxes`` (JSON-ready)."""
        rnd = (lambda v: round(float(v), ndigits)) if ndigits is not None else float  # noqa: E731
        rec: dict[str, Any] = {"name": self.name, "box": None if self.box is None else [rnd(v) for v in self.box],
                               "area": int(self.area), "text": self.text, "error": self.error}
        if self.expression is not None:
            rec["expression"] = self.expression
        if self.score is not None:
            rec["score"] = round(float(self.score), 5) if ndigits is not None else float(self.score)
        if self.frames is not None:
            rec["frames"] = [int(f) for f in self.frames]
        if self.frame_boxes is not None:
            rec["frame_boxes"] = [[rnd(v) for v in b] for b in self.frame_boxes]
        return rec



# ---------------------------------------------------------------------------------------------- loading
def _auto_device(device: str | torch.device) -> str | torch.device:
    if str(device) != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def released_dtype(folder: str | os.PathLike | None) -> torch.dtype:
    """The dtype a DAM folder's weights were saved in: its top config's ``model_dtype`` ("torch.float16"), else
    the LM config's ``dtype`` / ``torch_dtype``; float16 (what the official loader always uses) when neither names
    one."""
    import json

    names = []
    if folder is not None:
        root = Path(folder)
        for cfg, keys in ((root / "config.json", ("model_dtype",)), (root / "llm" / "config.json",
                                                                      ("dtype", "torch_dtype"))):
            try:
                data = json.loads(cfg.read_text())
            except (OSError, ValueError):
                continue
            names += [data.get(k) for k in keys]
    for name in names:
        value = getattr(torch, str(name).replace("torch.", ""), None) if name else None
        if value in (torch.float16, torch.bfloat16, torch.float32):
            return value
    return torch.float16


def _auto_dtype(dtype: torch.dtype | str | None, device: str | torch.device,
                folder: str | os.PathLike | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # On a GPU: the released weights' dtype (the official load_pretrained_model always runs float16,
        # model_utils.py ~64, ~93-98: pass dtype="float16" for exactly that); bfloat16 falls back to float16
        # where the GPU lacks it. On CPU / MPS: float32.
        if str(device).startswith("cuda") and torch.cuda.is_available():
            value = released_dtype(folder)
            return torch.float16 if value == torch.bfloat16 and not torch.cuda.is_bf16_supported() else value
        return torch.float32
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype; use 'float32', 'bfloat16', 'float16' or 'auto'")
    return value


def load_describer(name_or_path: str | os.PathLike = DEFAULT_DESCRIBER, device: str | torch.device = "auto",
                   dtype: torch.dtype | str | None = "auto", revision: str | None = None,
                   prompt: str | None = None, segmenter: Any = None) -> "Describer":
    """Load a DAM model as a `Describer`.

    Args:
        name_or_path: a registry name of kind "describer" (``dam-nano``, bundled; ``dam-3b``, ``dam-3b-video``), a
            hub id (``nvidia/DAM-3B``, ``nvidia/DAM-3B-Video``; downloaded with huggingface_hub's
            snapshot_download, cache first) or a local folder in the released DAM layout (`DamModel.save` writes one).
        device: "auto" (cuda, then mps, then cpu), or a torch device.
        dtype: "auto" (on a GPU the released weights' dtype, `released_dtype`; float32 on CPU), a torch dtype or
            its name ("float16": the official loader's).
        revision: hub revision for hub ids.
        prompt: the image prompt (one ``<image>``); default: the registry entry's for a registry name or its hub
            id (DAM-3B-Video's joint-checkpoint prompt), else the folder's.
        segmenter: a `Segmenter` or a segmenter name (``sam-vit-base``, ``sam-nano`` ...) that turns box, point and
            scribble regions into SAM masks before the focal prompt, as the official pipeline does.
    Raises:
        ModelLoadError: unknown name, the bundled model not built, not cached while offline, unreachable hub, a
            folder that is not a DAM folder.
    """
    from groundscope.models import hub
    from groundscope.models.hub import ModelLoadError
    from groundscope.models.registry import REGISTRY

    source, display = hub.resolve(name_or_path, kind="describer")
    local = hub.fetch(source, display, revision, kind="describer")
    device = _auto_device(device)
    try:
        dtype = _auto_dtype(dtype, device, local)
    except ValueError as e:
        raise ModelLoadError(str(e)) from e
    try:
        model = load_dam(local, device=device, dtype=dtype)
        entry = REGISTRY.get(str(name_or_path)) or next(
            (e for e in REGISTRY.values() if e.kind == "describer" and not e.bundled and e.source == str(source)),
            None)
        settings = {**((entry.dam_config or {}) if entry is not None else {}),
                    **({"prompt": prompt} if prompt is not None else {})}
        if settings:
            model.config = dataclasses.replace(model.config, **settings)  # checked by DamConfig.__post_init__
    except DamError as e:
        raise ModelLoadError(f"model '{display}': {e}") from e
    if isinstance(segmenter, (str, os.PathLike)):
        from groundscope.models.segmenter import load_segmenter

        segmenter = load_segmenter(segmenter, device=device)
    return Describer(model, name=display, path=local, segmenter=segmenter)


# ---------------------------------------------------------------------------------------------- describer
def _union(boxes: Sequence[Sequence[float]]) -> list[float]:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]


class Describer:
    """A loaded DAM model: detailed descriptions of regions of images and videos. Build one with
    `load_describer`, or wrap a `DamModel`."""

    def __init__(self, model: DamModel, name: str = "dam", path: str | os.PathLike | None = None,
                 segmenter: Any = None):
        self.model, self.name = model, name
        self.path = Path(path) if path is not None else None
        # A `groundscope.models.segmenter.Segmenter` for box / point / scribble regions, or None (fallback masks)
        self.segmenter = segmenter
        self._noticed = False

    def _segment_fn(self, rgb: np.ndarray):
        """`segment(box=... | points=...) -> (H, W) bool` bound to this image (its embedding computed on first
        use, once for all its regions), or None without a segmenter."""
        if self.segmenter is None:
            return None
        cache: dict = {}

        def segment(box=None, points=None):
            if "image" not in cache:
                cache["image"] = self.segmenter.embed([rgb])[0]
            res = self.segmenter.segment(cache["image"], boxes=None if box is None else [box],
                                         points=None if points is None else [points])
            return res.masks[0]

        return segment

    def _notice_fallback(self, region: Any) -> None:
        """Say once that a box / point region gets a stand-in mask, and how to get the official one."""
        if self.segmenter is not None or self._noticed:
            return
        _, box, points, _ = _fields(region, "region")
        if box is None and points is None:
            return
        import warnings

        self._noticed = True
        warnings.warn("describing a box / point region through a filled rectangle / small discs, not a SAM mask "
                      "as the official pipeline does; pass segmenter= to load_describer (CLI: --segmenter "
                      "sam-vit-base, or a SAM folder)", UserWarning, stacklevel=3)

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __repr__(self) -> str:
        return f"Describer({self.name!r}, device={self.device})"

    def _generate(self, images: list, masks: list, gen: dict) -> list[str]:
        return self.model.generate(images, masks, **{k: v for k, v in gen.items() if v is not None and k != "seed"})

    @staticmethod
    def _settings(preset: str | None, **given) -> dict:
        """Generation settings: those given, then the named preset's (`GENERATION_PRESETS`); a seed in them
        seeds every generator once, before the first region (as the official evaluation seeds its run)."""
        gen = {**(generation_preset(preset) if preset is not None else {}),
               **{k: v for k, v in given.items() if v is not None}}
        if gen.get("seed") is not None:
            seed_everything(int(gen["seed"]))
        return gen

    # ------------------------------------------------------------------ images
    def describe(self, images: ImageInput | Sequence[ImageInput], regions: Any = None, *, mask: Any = None,
                 box: Sequence[float] | None = None, points: Any = None, prompt: str | None = None,
                 temperature: float | None = None, top_p: float | None = None, max_new_tokens: int | None = None,
                 batch_size: int = 8, callback: Callable[[int], None] | None = None, seed: int | None = None,
                 preset: str | None = None):
        """Describe regions of one image or of a batch of images.

        Args:
            images: one image (path, PIL image, array) or a list of them.
            regions: for one image, a list of regions (or one region); for a list of images, one list of regions
                per image. Leave it None and pass one of `mask` / `box` / `points` to describe a single region.
            prompt: the user turn (one ``<image>``); default: the model's.
            temperature / top_p / max_new_tokens: generation (default: the model's; temperature 0 is greedy).
            batch_size: regions per vision forward pass.
            callback: called with the number of regions finished (described or failed) as they finish
                (progress bars).
            seed: seeds Python, NumPy and torch once before the first region (sampling reproducible).
            preset: a named set of generation settings (`GENERATION_PRESETS`: "dlc-bench" is the published
                DLC-Bench run's temperature 0.2, no top-p, seed 123); arguments given win over it.
        Returns:
            one `RegionDescription` (single-region form), a list of them (one image), or a list of lists (a list of
            images), in the order given. Bad regions carry ``error`` instead of text.
        """
        single = regions is None
        if single:
            if isinstance(images, (list, tuple)):
                raise ValueError("the single-region form (mask= / box= / points=) takes one image; "
                                 "pass regions for a batch")
            regions = [Region(mask=mask, box=box, points=points, name="region")]
        elif any(v is not None for v in (mask, box, points)):
            raise ValueError("pass either regions or one of mask= / box= / points=, not both")
        batch = isinstance(images, (list, tuple))
        if batch:
            per_image = [list(r) if isinstance(r, (list, tuple)) else [r] for r in regions]
            if len(per_image) != len(images):
                raise ValueError(f"{len(per_image)} region lists for {len(images)} images; pass one list per image")
            imgs = list(images)
        else:
            per_image = [list(regions) if isinstance(regions, (list, tuple)) else [regions]]
            imgs = [images]
        gen = self._settings(preset, prompt=prompt, temperature=temperature, top_p=top_p,
                             max_new_tokens=max_new_tokens, seed=seed)
        results: list[list[RegionDescription | None]] = [[None] * len(r) for r in per_image]
        jobs = []  # (image index, region index, rgb, mask, box, name)
        for j, (img, regs) in enumerate(zip(imgs, per_image)):
            try:
                rgb, img_error = np.asarray(load_image(img)), None
            except ImageLoadError as e:
                rgb, img_error = None, str(e)
            segment = self._segment_fn(rgb) if rgb is not None else None
            for i, reg in enumerate(regs):
                default = f"image {j} region {i}" if batch else ("region" if single else f"region {i}")
                try:
                    _, _, _, name = _fields(reg, default)
                    if img_error is not None:
                        raise RegionError(f"{name}: {img_error}; pass a readable image (path, PIL image or array)")
                    self._notice_fallback(reg)
                    m, b, name = region_mask(rgb.shape[:2], reg, default, self.config.min_crop, segment)
                except RegionError as e:
                    results[j][i] = RegionDescription("", _given_box(reg), 0, error=str(e),
                                                      name=_safe_name(reg, default))
                    continue
                jobs.append((j, i, rgb, m, b, name))
        failed = sum(len(r) for r in per_image) - len(jobs)
        if callback is not None and failed:
            callback(failed)
        for start in range(0, len(jobs), max(1, batch_size)):
            chunk = jobs[start:start + max(1, batch_size)]
            texts = self._generate([c[2] for c in chunk], [c[3] for c in chunk], gen)
            for (j, i, _, m, b, name), text in zip(chunk, texts):
                results[j][i] = RegionDescription(text, b, int(m.sum()), name=name, mask=m)
            if callback is not None:
                callback(len(chunk))
        if single:
            return results[0][0]
        return results if batch else results[0]

    def describe_expression(self, image: ImageInput, expression: str | Sequence[str], detector: Any, **gen):
        """Detect, then describe: the detector's referring-expression top-1 box (`GroundingDetector.refer`)
        becomes the region.

        Args:
            detector: a `GroundingDetector`, or a name / folder for `load_detector` (loaded on this device).
            expression: one expression, or a list (each described on its own).
            gen: `describe`'s prompt / temperature / top_p / max_new_tokens / batch_size / callback.
        Returns:
            `RegionDescription` (a list for a list of expressions) with ``expression``, ``score`` and ``box`` = the
            detector's box.
        """
        detector = _as_detector(detector, self.device)
        single = isinstance(expression, str)
        exprs = [expression] if single else list(expression)
        try:
            rgb = np.asarray(load_image(image))
        except ImageLoadError as e:
            out = [RegionDescription("", None, 0, error=f"expression {x!r}: {e}; pass a readable image", name=x,
                                     expression=x) for x in exprs]
            return out[0] if single else out
        found = detector.refer([rgb] * len(exprs), exprs, top_k=1)
        regions = []
        for x, dets in zip(exprs, found):
            regions.append({"box": [float(v) for v in dets.xyxy[0]], "name": x} if len(dets) else
                           {"mask": np.zeros(rgb.shape[:2], bool), "name": x})
        out = self.describe(rgb, regions, **gen)
        for r, x, dets in zip(out, exprs, found):
            r.expression, r.score = x, (float(dets.scores[0]) if len(dets) else None)
            if not len(dets):
                r.error = f"expression {x!r}: the detector found no box; rephrase it or pass a --box"
        return out[0] if single else out

    # ------------------------------------------------------------------ videos
    def describe_video(self, video: Any, region: Any = None, *, num_frames: int | None = None,
                       expression: str | None = None, detector: Any = None, track: bool = False,
                       frame: int = 0, segmenter: Any = None, prompt: str | None = None, temperature: float | None = None, top_p: float | None = None,
                       max_new_tokens: int | None = None, seed: int | None = None,
                       preset: str | None = None) -> RegionDescription:
        """Describe one region through a video.

        Args:
            video: a video file, a folder of frames, a list of frames, or a `VideoClip` (`load_video`).
            region: one region for every frame (a box stays put), or a list of regions, one per source frame (or
                one per sampled frame); omit it with `expression`.
            num_frames: frames sampled uniformly (default: the model's num_frames, 8); ignored for a `VideoClip`.
            expression / detector: find the region with the detector's referring-expression top-1 box, in the first
                sampled frame (used for every frame) or, with `track`, in every sampled frame; with `segmenter`, on
                frame `frame`, then propagated.
            frame / segmenter: the official video pipeline (`groundscope.describe.propagate`): the one region (or
                the expression's box) is given on frame `frame` and propagated through the video by this SAM
                2-family video model (a `VideoSegmenter` or a name / folder for `load_video_segmenter`); the frames
                are sampled among those where its mask is not empty, each with its own mask.
            seed / preset: as `describe`'s.
        Returns:
            a `RegionDescription` with ``frames`` (the sampled indices) and ``frame_boxes``; on a bad frame region
            or an unreadable video, ``error`` says which and why.
        """
        gen = self._settings(preset, prompt=prompt, temperature=temperature, top_p=top_p,
                             max_new_tokens=max_new_tokens, seed=seed)
        name = expression if expression is not None else (_safe_name(region, "region") if region is not None
                                                           else "region")
        if (expression is None) == (region is None):
            raise ValueError("pass a region (or one per frame) or an expression with a detector, not both")
        if segmenter is not None:
            return self._describe_propagated(video, region, expression, detector, frame, segmenter, num_frames, gen,
                                             name)
        try:
            clip = load_video(video, num_frames or self.config.num_frames)
        except ImageLoadError as e:
            return RegionDescription("", None, 0, error=f"{name}: {e}", name=name, expression=expression)
        frames, score = clip.frames, None
        if expression is not None:
            if detector is None:
                raise ValueError("an expression needs a detector (a GroundingDetector or a model name)")
            dets = _as_detector(detector, self.device).refer(frames if track else frames[:1], expression, top_k=1)
            if any(len(d) == 0 for d in dets):
                return RegionDescription("", None, 0, error=f"expression {expression!r}: the detector found no box",
                                         name=name, expression=expression, frames=clip.indices)
            boxes = [[float(v) for v in d.xyxy[0]] for d in dets]
            scores = [float(d.scores[0]) for d in dets]
            per_frame = [{"box": b, "name": expression} for b in (boxes if track else boxes * len(frames))]
            score = float(np.mean(scores))
        elif isinstance(region, (list, tuple)):
            if len(region) == clip.total:
                per_frame = [region[i] for i in clip.indices]
            elif len(region) == len(frames):
                per_frame = list(region)
            else:
                return RegionDescription("", None, 0, name=name, frames=clip.indices, error=(
                    f"{name}: {len(region)} per-frame regions for a video of {clip.total} frames ({len(frames)} "
                    "sampled); pass one region for every frame, or one per source frame"))
        else:
            per_frame = [region] * len(frames)
        masks, boxes = [], []
        try:
            for k, (frame, reg) in enumerate(zip(frames, per_frame)):
                # with a segmenter, each frame's box / points become that frame's SAM mask (official
                # examples/dam_video_with_sam.py: SAM v1 on every frame, given a box per frame)
                self._notice_fallback(reg)
                m, b, _ = region_mask(frame.shape[:2], reg, f"{name} (frame {clip.indices[k]})", self.config.min_crop,
                                      self._segment_fn(np.asarray(frame)))
                masks.append(m)
                boxes.append(b)
        except RegionError as e:
            return RegionDescription("", _given_box(per_frame[0]), 0, error=str(e), name=name, expression=expression,
                                     score=score, frames=clip.indices)
        text = self._generate([list(frames)], [masks], gen)[0]
        return RegionDescription(text, _union(boxes), int(round(np.mean([m.sum() for m in masks]))), name=name,
                                 expression=expression, score=score, frames=clip.indices, frame_boxes=boxes,
                                 mask=masks)

    def _describe_propagated(self, video, region, expression, detector, frame, segmenter, num_frames, gen,
                             name) -> RegionDescription:
        """`describe_video` with a video segmenter: region (or the expression's box) on `frame`, propagated."""
        from groundscope.describe.propagate import propagate_region
        from groundscope.track.errors import TrackError
        from groundscope.track.frames import open_video

        if isinstance(segmenter, (str, os.PathLike)):
            from groundscope.models.video_segmenter import load_video_segmenter

            segmenter = load_video_segmenter(segmenter, device=self.device)
        if isinstance(region, (list, tuple)):
            raise ValueError("with a video segmenter give one region, on one frame (frame=K); it is propagated to "
                             "the others")
        score = None
        try:
            if expression is not None:
                if detector is None:
                    raise ValueError("an expression needs a detector (a GroundingDetector or a model name)")
                image = next((im for t, im in enumerate(open_video(video)) if t == frame), None)
                if image is None:
                    raise RegionError(f"{name}: frame {frame} is past the end of the video; give a smaller frame")
                dets = _as_detector(detector, self.device).refer([image], expression, top_k=1)[0]
                if not len(dets):
                    return RegionDescription("", None, 0, error=f"expression {expression!r}: the detector found no "
                                             f"box on frame {frame}", name=name, expression=expression)
                region, score = {"box": [float(v) for v in dets.xyxy[0]], "name": expression}, float(dets.scores[0])
            prop = propagate_region(video, region, segmenter, frame=frame, num_frames=num_frames or
                                    self.config.num_frames, name=name, min_crop=self.config.min_crop)
        except (RegionError, TrackError) as e:
            given = None if isinstance(region, (list, tuple)) or region is None else _given_box(region)
            return RegionDescription("", given, 0, error=str(e), name=name, expression=expression, score=score)
        boxes = [[float(v) for v in b] for b in prop.boxes]
        text = self._generate([prop.frames], [prop.masks], gen)[0]
        return RegionDescription(text, _union(boxes), int(round(np.mean([m.sum() for m in prop.masks]))), name=name,
                                 expression=expression, score=score, frames=prop.indices, frame_boxes=boxes,
                                 mask=prop.masks)


def _as_detector(detector: Any, device):
    if isinstance(detector, (str, os.PathLike)):
        from groundscope.models.loading import load_detector

        return load_detector(detector, device=device)
    if not hasattr(detector, "refer"):
        raise TypeError(f"{type(detector).__name__} is not a detector; pass a GroundingDetector or a model name")
    return detector
