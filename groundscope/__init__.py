"""groundscope: find and describe anything in images from free text.

Quick start::

    import groundscope as gs
    det = gs.load_detector("llmdet-tiny")
    [dets] = det.detect(["photo.jpg"], ["cat", "remote control"])
"""

from groundscope.detections import Detections

__version__ = "0.1.0"

__all__ = ["Detections", "__version__"]
