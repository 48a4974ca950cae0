"""The base VLM's training pairs (`VlmSample`): from a GroundingCap file, every region's focal crop with its
``description`` and every whole image with its detailed caption (`vlm_samples`); `sample_pixels` makes a
sample's (3, S, S) input through the model's own input processing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundscope.describe.config import DamConfig
from groundscope.describe.focal import focal_prompt, image_pixels, region_to_mask

IMAGE_PROMPT = "<image>\nDescribe the image in detail."


@dataclass
class VlmSample:
    """One training pair: the image, the region's box (x1, y1, x2, y2) or None for the whole image, the text;
    the region's category and attributes (the synthetic world's colour, texture ...) when the file has them."""

    image: Path
    box: tuple[float, float, float, float] | None
    text: str
    category: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


def vlm_samples(groundingcap: str | Path, image_root: str | Path | None = None, captions: bool = True
                ) -> list[VlmSample]:
    """Region crops with descriptions (and whole images with their detailed captions) of a GroundingCap file.

    Raises:
        groundscope.data.DataFormatError: a malformed file (naming file and line).
    """
    from groundscope.data.groundingcap import read_groundingcap

    path = Path(groundingcap)
    root = Path(image_root) if image_root is not None else path.parent
    out = []
    for rec in read_groundingcap(path).images:
        image = root / rec.filename
        for inst in rec.instances:
            if inst.description and inst.description.strip():
                out.append(VlmSample(image, tuple(inst.bbox), inst.description.strip(), inst.category,
                                     dict(inst.attributes)))
        if captions and rec.long_caption and rec.long_caption.strip():
            out.append(VlmSample(image, None, rec.long_caption.strip()))
    return out


def sample_pixels(sample: VlmSample, config: DamConfig, rgb: np.ndarray | None = None) -> torch.Tensor:
    """(3, S, S): the region's focal crop (or the whole image) through the model's input processing; `rgb` is the
    decoded image when the caller has it."""
    from groundscope.images import load_image

    if rgb is None:
        rgb = np.asarray(load_image(sample.image))
    if sample.box is not None:
        mask = region_to_mask(rgb.shape[:2], box=sample.box, name=f"{sample.image} box {list(sample.box)}")
        rgb = focal_prompt(rgb, mask, config.min_crop, mode=config.crop_mode).crop_image
    c = config
    return image_pixels(rgb, c.image_size, c.image_mean, c.image_std, c.resample, c.image_aspect_ratio)
