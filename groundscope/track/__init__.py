"""Tracking: follow what the text names through a video, one id and one class per object.

`frames` streams a video (file, folder, list); `match` assigns detections to tracks (Hungarian on IoU);
`lifecycle` is one track (class vote, loss count); `tracker` is the per-frame algorithm (SAM 2 propagation with
keyframe detection, or the box-IoU fallback); `tracks` the result and its MOT / JSON / MP4 files (`mp4` encodes);
`api` the one call, `track(video, classes, detector=, segmenter=)`. Layers: models < track < cli.
"""

from __future__ import annotations

import sys
import types

from groundscope.track.api import track
from groundscope.track.errors import TrackError, VideoReadError
from groundscope.track.frames import VideoFrames, open_video
from groundscope.track.lifecycle import Track
from groundscope.track.match import mask_iou, match
from groundscope.track.tracker import Tracker
from groundscope.track.tracks import Tracks

__all__ = ["Track", "TrackError", "Tracker", "Tracks", "VideoFrames", "VideoReadError", "mask_iou", "match",
           "open_video", "track"]


class _CallableModule(types.ModuleType):
    """``groundscope.track`` is both this package and the function `track`: once the package is imported Python
    binds the name ``groundscope.track`` to it, so ``gs.track(video, classes, ...)`` must work on the module too."""

    def __call__(self, *args, **kwargs):
        return track(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
