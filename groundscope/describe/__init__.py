"""Describe Anything (DAM): detailed descriptions of a region given as a mask, box or points.

`focal` turns a region into DAM's focal prompt (full image + mask, and a crop around the region) and the
model's pixels; `model` holds the localized vision backbone, the projector and the LM, and reads / writes the
released DAM-3B folder layout.
"""

from groundscope.describe.focal import (
    CropBox,
    FocalPrompt,
    RegionError,
    focal_batch,
    focal_crop,
    focal_pixels,
    focal_prompt,
    region_to_mask,
)
from groundscope.describe.model import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
    DamConfig,
    DamError,
    DamModel,
    DamOutput,
    LocalizedVisionBackbone,
    Merge2x2,
    Projector,
    load_dam,
)

__all__ = [
    "IGNORE_INDEX", "IMAGE_TOKEN", "IMAGE_TOKEN_INDEX", "CropBox", "DamConfig", "DamError", "DamModel", "DamOutput",
    "FocalPrompt", "LocalizedVisionBackbone", "Merge2x2", "Projector", "RegionError", "focal_batch", "focal_crop",
    "focal_pixels", "focal_prompt", "load_dam", "region_to_mask",
]
