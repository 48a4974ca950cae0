"""Promptable segmenters (SAM, SAM-HQ, SAM 2 / 2.1, EdgeTAM, SAM 3's tracker) through transformers.

`load_segmenter(name)` -> `Segmenter`; `seg.segment(image, boxes=..., points=..., point_labels=...)` -> masks
(N, H, W) at the image's size with their predicted IoU. What groundscope adds to transformers' processor + model
+ post-processing path (which it runs unchanged, so masks equal that path's):

- the image embedding is computed once per image and reused for all its prompts (`get_image_embeddings`, then
  the prompt encoder and mask decoder per prompt batch), and several images are encoded as one batch;
- the multimask output is chosen by predicted IoU, as Describe Anything's official code does with SAM
  (examples/dam_with_sam.py ~27-45: ``scores.argmax()`` over ``iou_scores[0, 0]``) and as SAM's own predictor
  recommends for ambiguous prompts (segment_anything/predictor.py, ``multimask_output``);
- prompts are checked against the image (a box or point outside it is named), and `add_masks` turns a
  detector's boxes into `Detections.masks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from groundscope.detections import Detections
from groundscope.images import ImageInput, load_image
from groundscope.models.hub import ModelLoadError, fetch, resolve
from groundscope.models.sam2_processing import Sam2Processing

# config.json model_type -> (transformers model class, processor class, processing style: "sam" runs
# transformers' processor, "sam2" groundscope's torchvision-free port, models/sam2_processing.py). SAM 3's folder
# (model_type sam3_video / sam3) holds the tracker, which is SAM 2's promptable interface on SAM 3's backbone;
# AutoModelForMaskGeneration maps it the same way (transformers models/auto/modeling_auto.py, mask generation).
FAMILIES: dict[str, tuple[str, str, str]] = {
    "sam": ("SamModel", "SamProcessor", "sam"),
    "sam_hq": ("SamHQModel", "SamHQProcessor", "sam"),
    "sam2": ("Sam2Model", "Sam2Processor", "sam2"),
    "sam2_video": ("Sam2Model", "Sam2Processor", "sam2"),
    "edgetam": ("EdgeTamModel", "Sam2Processor", "sam2"),
    "edgetam_video": ("EdgeTamModel", "Sam2Processor", "sam2"),
    "sam3_tracker": ("Sam3TrackerModel", "Sam3TrackerProcessor", "sam2"),
    "sam3_video": ("Sam3TrackerModel", "Sam3TrackerProcessor", "sam2"),
    "sam3": ("Sam3TrackerModel", "Sam3TrackerProcessor", "sam2"),
}

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PromptError(ValueError):
    """A segmentation prompt does not fit its image; the message names the prompt and the fix."""


@dataclass
class Segmentation:
    """Masks for one image's prompts.

    Attributes:
        masks: bool (N, H, W) at the image's size, one per prompt (the chosen output of each).
        scores: float32 (N,) the model's predicted IoU of each chosen mask.
        all_scores: float32 (N, M) predicted IoU of every output (M = 3 with multimask output, else 1).
    """

    masks: np.ndarray
    scores: np.ndarray
    all_scores: np.ndarray


def _as_points(points, point_labels, n_expected: int | None):
    """-> (list of N (P_i, 2) float arrays, list of N (P_i,) int arrays) or (None, None)."""
    if points is None:
        if point_labels is not None:
            raise PromptError("point_labels were given without points; pass points=[[(x, y), ...], ...]")
        return None, None
    pts = [np.asarray(p, np.float64).reshape(-1, 2) for p in points]
    if point_labels is None:
        labels = [np.ones(len(p), np.int64) for p in pts]  # every click is on the object
    else:
        labels = [np.asarray(lab, np.int64).reshape(-1) for lab in point_labels]
        if len(labels) != len(pts) or any(len(a) != len(b) for a, b in zip(labels, pts)):
            raise PromptError(f"point_labels must give one label per point: {len(pts)} point groups with "
                              f"{[len(p) for p in pts]} points, labels {[len(lab) for lab in labels]}")
        bad = sorted({int(v) for lab in labels for v in lab} - {0, 1})
        if bad:
            raise PromptError(f"point labels must be 1 (on the object) or 0 (background), got {bad}")
    if n_expected is not None and len(pts) != n_expected:
        raise PromptError(f"{len(pts)} point groups for {n_expected} boxes; give one group per box (or no points)")
    if any(len(p) == 0 for p in pts):
        raise PromptError("a point group is empty; give at least one (x, y) per object")
    return pts, labels


def check_prompts(width: int, height: int, boxes: np.ndarray | None, points: list[np.ndarray] | None) -> None:
    """Raise `PromptError` naming the first box or point that is not finite, inverted or outside the image."""
    if boxes is not None:
        for i, b in enumerate(boxes):
            x1, y1, x2, y2 = (float(v) for v in b)
            where = f"box {i} ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
            if not np.isfinite(b).all():
                raise PromptError(f"{where} is not finite; give pixel coordinates x1,y1,x2,y2")
            if x2 <= x1 or y2 <= y1:
                raise PromptError(f"{where} is empty or inverted; give x1 < x2 and y1 < y2")
            if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
                raise PromptError(f"{where} lies outside the {width}x{height} image; give a box on the image")
    if points is not None:
        for i, group in enumerate(points):
            for x, y in group:
                if not (np.isfinite(x) and np.isfinite(y)) or not (0 <= x <= width and 0 <= y <= height):
                    raise PromptError(f"point ({x:g}, {y:g}) of object {i} is off the {width}x{height} image; "
                                      "give pixel coordinates inside it")


class Segmenter:
    """A promptable segmenter: boxes and / or clicks -> one mask per prompt.

    Build it with `load_segmenter`. `family` is the post-processing style ("sam" or "sam2"), `name` what it was
    loaded as.
    """

    def __init__(self, model, processor, name: str, family: str, device="cpu", dtype=torch.float32):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.family = family
        self.device = torch.device(device)
        self.dtype = dtype

    # ------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def embed(self, images: Sequence[ImageInput]) -> list[dict]:
        """Encode images once: -> per image {"embeddings", "original_size", "reshaped_size", "size", "image"}.

        The images go through the processor together and the vision encoder as one batch.
        """
        pils = [load_image(im) for im in images]
        if self.family == "sam":
            enc = self.processor(images=pils, return_tensors="pt")
        else:
            enc = {"pixel_values": self.processor.pixel_values(pils),
                   "original_sizes": [(im.height, im.width) for im in pils]}
        pixels = enc["pixel_values"].to(self.device, self.dtype)
        emb = self.model.get_image_embeddings(pixels)
        out = []
        for i, im in enumerate(pils):
            e = emb[i : i + 1] if isinstance(emb, torch.Tensor) else [level[i : i + 1] for level in emb]
            out.append({
                "embeddings": e,
                "original_size": [int(v) for v in enc["original_sizes"][i]],
                "reshaped_size": [int(v) for v in enc["reshaped_input_sizes"][i]] if "reshaped_input_sizes" in enc else None,
                "size": im.size,
                "image": im,
            })
        return out

    # ------------------------------------------------------------------ prompts -> masks
    @torch.no_grad()
    def segment(self, image: ImageInput | dict, boxes=None, points=None, point_labels=None,
                multimask: bool = True, mask_threshold: float = 0.0) -> Segmentation:
        """Masks for one image's prompts.

        Args:
            image: an image (path, PIL, array) or what `embed` returned for it (to reuse its embedding).
            boxes: (N, 4) xyxy pixels, one object each.
            points: N groups of (x, y) pixel clicks (one group per object; with boxes, one group per box).
            point_labels: N groups of labels, 1 on the object, 0 background (default all 1).
            multimask: predict 3 masks per prompt and keep the one with the highest predicted IoU (the official
                pipelines' choice); False keeps the model's single output.
            mask_threshold: logit threshold of the binarisation (the processor's default, 0).
        Returns:
            `Segmentation` with masks (N, H, W) bool and scores (N,).
        """
        prepared = image if isinstance(image, dict) and "embeddings" in image else self.embed([image])[0]
        w, h = prepared["size"]
        box_arr = None if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 4)
        pts, labels = _as_points(points, point_labels, None if box_arr is None else len(box_arr))
        check_prompts(w, h, box_arr, pts)
        n = len(box_arr) if box_arr is not None else (len(pts) if pts is not None else 0)
        if n == 0:
            return Segmentation(np.zeros((0, h, w), bool), np.zeros((0,), np.float32),
                                np.zeros((0, 3 if multimask else 1), np.float32))
        kwargs = {}
        if box_arr is not None:
            kwargs["input_boxes"] = [box_arr.tolist()]
        if pts is not None:
            # one object per prompt row; objects with fewer clicks are padded by the processor (label -10)
            kwargs["input_points"] = [[p.tolist() for p in pts]]
            kwargs["input_labels"] = [[lab.tolist() for lab in labels]]
        enc = self._encode_prompts(prepared, kwargs)
        out = self.model(image_embeddings=prepared["embeddings"], multimask_output=multimask, **enc)
        logits = out.pred_masks.float().cpu()  # (1, N, M, h', w')
        if self.family == "sam":
            masks = self.processor.image_processor.post_process_masks(
                logits, [prepared["original_size"]], [prepared["reshaped_size"]], mask_threshold=mask_threshold)[0]
        else:
            masks = self.processor.masks(logits[0], prepared["original_size"], mask_threshold)
        iou = out.iou_scores.float().cpu()[0]  # (N, M)
        best = iou.argmax(dim=-1)
        chosen = masks[torch.arange(n), best]
        return Segmentation(chosen.numpy().astype(bool), iou[torch.arange(n), best].numpy().astype(np.float32),
                            iou.numpy().astype(np.float32))

    def _encode_prompts(self, prepared: dict, kwargs: dict) -> dict:
        """Prompt coordinates normalised to the model's input frame by the processor itself."""
        if self.family == "sam":
            # SamProcessor normalises prompts only together with an image; it pads clicks across images but not
            # across the objects of one image, so ragged click groups are padded here the way it pads (points at
            # its pad value, label -10, which the prompt encoder zeroes: modeling_sam.py SamPromptEncoder).
            if "input_points" in kwargs:
                groups, labels = kwargs["input_points"][0], kwargs["input_labels"][0]
                most = max(len(g) for g in groups)
                pad = self.processor.point_pad_value
                kwargs["input_points"] = [[g + [[pad, pad]] * (most - len(g)) for g in groups]]
                kwargs["input_labels"] = [[lab + [pad] * (most - len(lab)) for lab in labels]]
            enc = self.processor(images=prepared["image"], return_tensors="pt", **kwargs)
        else:
            enc = self.processor.prompts(prepared["original_size"], boxes=kwargs.get("input_boxes", [None])[0],
                                         points=kwargs.get("input_points", [None])[0],
                                         labels=kwargs.get("input_labels", [None])[0])
        # Coordinates keep the processor's dtype in fp32 (SamProcessor gives float64, which the model takes as
        # transformers' own path passes it); in bf16 / fp16 they follow the weights.
        return {k: v.to(self.device) if k == "input_labels" or self.dtype == torch.float32
                else v.to(self.device, self.dtype)
                for k, v in enc.items() if k in ("input_points", "input_labels", "input_boxes")}

    def segment_batch(self, images: Sequence[ImageInput], boxes: Sequence | None = None,
                      points: Sequence | None = None, point_labels: Sequence | None = None,
                      multimask: bool = True, batch_size: int = 4) -> list[Segmentation]:
        """`segment` over several images: encoded `batch_size` at a time, one prompt set per image."""
        images = list(images)
        results: list[Segmentation] = []
        for start in range(0, len(images), max(1, batch_size)):
            chunk = images[start : start + batch_size]
            for j, prepared in enumerate(self.embed(chunk)):
                i = start + j
                results.append(self.segment(prepared, boxes=None if boxes is None else boxes[i],
                                            points=None if points is None else points[i],
                                            point_labels=None if point_labels is None else point_labels[i],
                                            multimask=multimask))
        return results

    def add_masks(self, image: ImageInput | dict, detections: Detections, multimask: bool = True) -> Detections:
        """`detections` with a mask from each of its boxes (boxes are clipped to the image first)."""
        prepared = image if isinstance(image, dict) and "embeddings" in image else self.embed([image])[0]
        w, h = prepared["size"]
        if len(detections) == 0:
            return detections.with_masks(np.zeros((0, h, w), bool))
        boxes = detections.xyxy.astype(np.float64).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1)  # a degenerate box still asks for a mask
        boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1)
        seg = self.segment(prepared, boxes=boxes, multimask=multimask)
        return detections.with_masks(seg.masks)

    def __repr__(self) -> str:
        return f"Segmenter({self.name!r}, family={self.family}, device={self.device}, dtype={self.dtype})"


def load_segmenter(name_or_path: str | os.PathLike = "sam-nano", device: str | torch.device = "cpu",
                   precision: str = "fp32", revision: str | None = None) -> Segmenter:
    """Load a promptable segmenter.

    Args:
        name_or_path: a registry name (`groundscope models`: sam-vit-base/large/huge, sam2.1-hiera-tiny/small/
            base-plus/large, edgetam, sam3, the bundled sam-nano), a hub id, or a local directory saved with
            the model's and processor's ``save_pretrained``.
        device: torch device.
        precision: "fp32", "bf16" or "fp16" (the weights and activations; masks are post-processed in fp32).
    Raises:
        ModelLoadError: unknown name, not cached while offline, unreachable hub, not a SAM-family model.
    """
    import transformers
    from transformers import AutoConfig

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    source, display = resolve(name_or_path, kind="segmenter")
    local = fetch(source, display, revision, kind="segmenter")
    try:
        config = AutoConfig.from_pretrained(local)
    except Exception as e:
        raise ModelLoadError(f"segmenter '{display}': cannot read its config.json in {local} "
                             f"({type(e).__name__}: {e}); pass a directory saved with save_pretrained") from e
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ModelLoadError(f"segmenter '{display}' is a '{config.model_type}' model, not a SAM-family segmenter; "
                             f"groundscope segments with {', '.join(sorted(FAMILIES))} models "
                             "(e.g. --segmenter sam-vit-base)")
    model_cls, style = getattr(transformers, family[0]), family[2]
    try:
        model = model_cls.from_pretrained(local, dtype=PRECISIONS[precision])
    except Exception as e:
        raise ModelLoadError(f"segmenter '{display}': weights in {local} do not load ({type(e).__name__}: {e})") from e
    try:
        if style == "sam":
            processor = _load_processor(getattr(transformers, family[1]), local)
        else:  # transformers' SAM 2 image processor needs torchvision; groundscope computes the same
            processor = Sam2Processing.from_folder(local)
    except Exception as e:
        raise ModelLoadError(f"segmenter '{display}': no usable processor in {local} ({type(e).__name__}: {e}); "
                             "save it next to the weights (processor.save_pretrained(dir))") from e
    model.to(device)
    return Segmenter(model, processor, display, style, device=device, dtype=PRECISIONS[precision])


def _load_processor(proc_cls, local: str):
    """The folder's processor; SAM's image processor is the PIL one when torchvision is absent (its default)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return proc_cls.from_pretrained(local)


def segment_detections(owner, images: Sequence[ImageInput], dets: list[Detections], segmenter=None,
                       default: str | None = None) -> list[Detections]:
    """`dets` (one per image) with a mask per box, for a detector `owner` that keeps its segmenter in
    ``owner.segmenter``: `segmenter` (a `Segmenter` or a name), else ``owner.segmenter``, else `default`. A name is
    loaded on ``owner.device`` once and kept on the owner for the next call."""
    seg = segmenter if segmenter is not None else owner.segmenter
    if seg is None or isinstance(seg, (str, os.PathLike)):
        name = str(seg or default)
        cached = owner.segmenter
        if cached is not None and cached.name == name:
            seg = cached
        else:
            seg = owner.segmenter = load_segmenter(name, device=owner.device)
    if not isinstance(seg, Segmenter):
        raise TypeError(f"segmenter must be a Segmenter or a segmenter name, not {type(seg).__name__}")
    return [seg.add_masks(load_image(im), d) for im, d in zip(images, dets)]


def default_segmenter(detector_name: str | None) -> str:
    """The segmenter a detector is paired with when none is named: the bundled sam-nano for the synthetic world's
    models (they see only its shapes), else SAM ViT-B, the segmenter of Describe Anything's official examples
    (examples/dam_with_sam.py: facebook/sam-vit-base)."""
    name = str(detector_name or "")
    if name in ("nano", "dam-nano") or Path(name).name in ("nano", "dam-nano"):
        return "sam-nano"
    return "sam-vit-base"
