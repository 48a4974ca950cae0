"""A short video clip uploaded to ``POST /v1/describe``: kept on disk while it is described, read frame by frame.

An upload arrives as bytes. PyAV reads containers from a file, so the bytes are written to a temporary file
whose suffix is the upload's (the container format is found from the content either way); the clip is then
decoded once, frame by frame, to check it before it joins the queue: it must hold at least one frame and at most
`max_frames`, and every frame must decode (a file broken mid-stream is refused here, named, not inside the
model). Nothing holds the clip: the describer streams it again from the file, which is removed when the request
ends (`VideoUpload.remove`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from groundscope.images import MAX_PIXELS
from groundscope.track.errors import TrackError
from groundscope.track.frames import VIDEO_SUFFIXES, open_video


class VideoUploadError(ValueError):
    """An uploaded clip that cannot be described: empty, not a video, too long, or broken; the message says which
    and what to send instead."""


@dataclass
class VideoUpload:
    """A checked clip on disk.

    Attributes:
        path: the temporary file (removed by `remove`).
        name: the upload's file name, for messages and the answer.
        width, height: the frames' size in pixels.
        total: the number of frames.
    """

    path: Path
    name: str
    width: int
    height: int
    total: int

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def receive_video(data: bytes, name: str, max_frames: int) -> VideoUpload:
    """Write the upload `data` (named `name`) to a temporary file and check it frame by frame.

    Raises:
        VideoUploadError: empty, not a video PyAV decodes, no frames, more than `max_frames` frames, frames over
            the pixel limit, or a frame that fails to decode.
    """
    if not data:
        raise VideoUploadError(f"video '{name}': the upload is empty (0 bytes)")
    suffix = Path(name).suffix.lower()
    fd, tmp = tempfile.mkstemp(prefix="groundscope-clip-", suffix=suffix if suffix in VIDEO_SUFFIXES else ".mp4")
    path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        width = height = total = 0
        try:
            for frame in open_video(path):  # streamed: one frame in memory at a time
                if total == 0:
                    height, width = frame.shape[:2]
                    if width * height > MAX_PIXELS:
                        raise VideoUploadError(f"video '{name}': {width}x{height} frames exceed the "
                                               f"{MAX_PIXELS:,}-pixel limit; send a smaller clip")
                total += 1
                if total > max_frames:
                    raise VideoUploadError(f"video '{name}' has more than {max_frames} frames, the server's limit "
                                           "for a clip; send a shorter clip (or restart the server with a larger "
                                           "--max-video-frames)")
        except TrackError as e:  # VideoReadError: not a video, no video stream, a broken frame; its own words
            reason = str(e).split("': ", 1)[-1].replace(str(path), name)  # PyAV's words may name the temp file
            raise VideoUploadError(f"video '{name}': {reason}") from None
        if total == 0:
            raise VideoUploadError(f"video '{name}' holds no frames; send a clip with at least one frame")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return VideoUpload(path, name, width, height, total)
