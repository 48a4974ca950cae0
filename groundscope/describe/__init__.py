"""Describe Anything (DAM): detailed descriptions of a region given as a mask, box or points.

`focal` turns a region into DAM's focal prompt (full image + mask, and a crop around the region) and the
model's pixels; `model` holds the localized vision backbone, the projector and the LM, and reads / writes the
released DAM-3B folder layout; `api` is what to call: `load_describer` -> `Describer.describe` (regions of images),
`describe_video`, `describe_expression` (detect, then describe).
"""

from groundscope.describe.api import (
    Describer,
    Region,
    RegionDescription,
    VideoClip,
    load_describer,
    load_video,
    sample_indices,
)
from groundscope.describe.focal import (
    CropBox,
    FocalPrompt,
    RegionError,
    filled_box,
    focal_batch,
    focal_crop,
    focal_pixels,
    focal_prompt,
    region_to_mask,
)
from groundscope.describe.model import (
    GENERATION_PRESETS,
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
    generation_preset,
    load_dam,
)

__all__ = [
    "GENERATION_PRESETS", "IGNORE_INDEX", "IMAGE_TOKEN", "IMAGE_TOKEN_INDEX", "CropBox", "DamConfig", "DamError",
    "DamModel", "DamOutput", "Describer", "FocalPrompt", "LocalizedVisionBackbone", "Merge2x2", "Projector", "Region",
    "RegionDescription", "RegionError", "VideoClip", "filled_box", "focal_batch", "focal_crop", "focal_pixels",
    "focal_prompt", "generation_preset", "load_dam", "load_describer", "load_video", "region_to_mask",
    "sample_indices",
]
