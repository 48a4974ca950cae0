"""groundscope: find and describe anything in images from free text.

Quick start::

    import groundscope as gs
    det = gs.load_detector("llmdet-tiny")
    dets = det.detect("photo.jpg", ["cat", "remote control"], box_threshold=0.3)
    gs.annotate("photo.jpg", dets).save("photo_boxes.png")
"""

from groundscope.detections import Detections
from groundscope.images import ImageLoadError, load_image
from groundscope.models.loading import ModelLoadError, load_detector
from groundscope.models.registry import REGISTRY
from groundscope.prompts import PromptError
from groundscope.visualize import annotate

__version__ = "0.1.0"

__all__ = [
    "Detections",
    "ImageLoadError",
    "ModelLoadError",
    "PromptError",
    "REGISTRY",
    "annotate",
    "load_detector",
    "load_image",
    "__version__",
]
