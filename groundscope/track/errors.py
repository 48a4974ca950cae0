"""The one error type of bad tracking input: the message names the input and the fix."""

from __future__ import annotations


class TrackError(ValueError):
    """Tracking cannot start or finish with these inputs (no classes, a box without a segmenter, a frame index past
    the end of the video, ...); the message names the input and what to pass instead."""


class VideoReadError(TrackError):
    """A video (file, folder of frames or list of frames) cannot be read; the message names it and the fix."""

    def __init__(self, source, reason: str):
        self.source = source
        super().__init__(f"cannot read video '{source}': {reason}")
