"""Describe Anything (DAM): detailed descriptions of a region given as a mask, box or points.

`focal` turns a region into DAM's focal prompt (full image + mask, and a crop around the region) and the
model's pixels; `model` holds the DAM (the localized vision backbone of `backbone`, the projector of `projector`
and the LM; `config` its settings, `presets` its generation presets) and reads / writes the released DAM-3B folder
layout (`layout`); `api` is what to call: `load_describer` -> `Describer.describe` (regions of images, read by
`regions`), `describe_video` (`video`), `describe_expression` (detect, then describe).
"""

from groundscope.describe.api import Describer, RegionDescription, load_describer
from groundscope.describe.backbone import LocalizedVisionBackbone
from groundscope.describe.config import IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX, DamConfig, DamError
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
from groundscope.describe.model import DamModel, DamOutput, load_dam
from groundscope.describe.presets import GENERATION_PRESETS, generation_preset
from groundscope.describe.projector import Merge2x2, Projector
from groundscope.describe.regions import Region
from groundscope.describe.video import VideoClip, load_video, sample_indices

__all__ = [
    "GENERATION_PRESETS", "IGNORE_INDEX", "IMAGE_TOKEN", "IMAGE_TOKEN_INDEX", "CropBox", "DamConfig", "DamError",
    "DamModel", "DamOutput", "Describer", "FocalPrompt", "LocalizedVisionBackbone", "Merge2x2", "Projector", "Region",
    "RegionDescription", "RegionError", "VideoClip", "filled_box", "focal_batch", "focal_crop", "focal_pixels",
    "focal_prompt", "generation_preset", "load_dam", "load_describer", "load_video", "region_to_mask",
    "sample_indices",
]
