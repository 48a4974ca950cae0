"""groundscope: find and describe anything in images from free text.

Quick start::

    import groundscope as gs
    det = gs.load_detector("llmdet-tiny")
    dets = det.detect("photo.jpg", ["cat", "remote control"], box_threshold=0.3)
    gs.annotate("photo.jpg", dets).save("photo_boxes.png")

Names are imported on first use, so `groundscope eval` and `groundscope convert` start without loading torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Detections": "groundscope.detections",
    "ImageLoadError": "groundscope.images",
    "load_image": "groundscope.images",
    "ModelLoadError": "groundscope.models.loading",
    "load_detector": "groundscope.models.loading",
    "load_describer": "groundscope.describe.api",
    "load_segmenter": "groundscope.models.segmenter",
    "REGISTRY": "groundscope.models.registry",
    "PromptError": "groundscope.prompts",
    "annotate": "groundscope.visualize",
    "load_video_segmenter": "groundscope.models.video_segmenter",
    "track": "groundscope.track.api",
    "Tracker": "groundscope.track.tracker",
    "Tracks": "groundscope.track.tracks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'groundscope' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
