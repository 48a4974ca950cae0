"""A video as a stream of frames, read one at a time: a video file (decoded with PyAV), a folder of frames (image files
sorted by name; a MOTChallenge sequence folder reads its img1/), a list of frames (arrays, PIL images or paths) or a (T, H, W, 3) uint8 array.

Nothing holds the whole clip: a file is decoded frame by frame as it is iterated, a folder is read file by file.
Opening checks what can be checked up front (the file exists and has a video stream, the folder has frames), so a
bad input fails before any model runs; a file that breaks mid-stream fails at the broken frame, named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from groundscope.images import ImageLoadError, load_image
from groundscope.track.errors import VideoReadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
_FIX = "pass a video file PyAV can decode (mp4, mkv, webm, ...), a folder of frames or a list of frames"


@dataclass
class VideoFrames:
    """A re-iterable stream of (H, W, 3) uint8 frames.

    Attributes:
        source: what the frames come from (a path, or "<list>" / "<array>").
        fps: frames per second when the container says (None for folders and lists).
        count: the number of frames when known up front (a folder, a list, or a container header that says).
    """

    source: str
    fps: float | None
    count: int | None
    _items: Any = None  # the files or frames of a folder / list; None for a video file

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._items is None:
            yield from _decode(Path(self.source))
            return
        for i, item in enumerate(self._items):
            try:
                yield np.asarray(load_image(item))
            except ImageLoadError as e:
                raise VideoReadError(self.source, f"frame {i} is unreadable ({e}); replace or remove it") from None


def _decode(path: Path) -> Iterator[np.ndarray]:
    import av

    index = 0
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
                index += 1
    except Exception as e:  # PyAV raises its own error types per container / codec problem
        raise VideoReadError(path, f"decoding stops at frame {index} ({type(e).__name__}: {e}); re-encode the "
                                   "file (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or pass its frames as a folder") from None
    if index == 0:
        raise VideoReadError(path, f"the video has no frames; {_FIX}")


def open_video(video: str | os.PathLike | Sequence | np.ndarray | VideoFrames) -> VideoFrames:
    """Open `video` for streaming; a `VideoFrames` is returned as is.

    Raises:
        VideoReadError: a missing path, a file with no video stream or that is not a video, an empty folder or list,
            PyAV missing for a video file.
    """
    if isinstance(video, VideoFrames):
        return video
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] not in (3, 4):
            raise VideoReadError("<array>", f"an array of frames must be (T, H, W, 3), got shape {video.shape}")
        if len(video) == 0:
            raise VideoReadError("<array>", "it holds no frames")
        return VideoFrames("<array>", None, len(video), list(video))
    if isinstance(video, (list, tuple)):
        if not video:
            raise VideoReadError("<list>", f"no frames given; {_FIX}")
        return VideoFrames("<list>", None, len(video), list(video))
    path = Path(video)
    if not path.exists():
        raise VideoReadError(path, f"no such file or folder; {_FIX}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files and (path / "img1").is_dir():  # a MOTChallenge sequence folder: its frames are in img1/
            files = sorted(p for p in (path / "img1").iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise VideoReadError(path, "the folder holds no frames (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
        return VideoFrames(str(path), None, len(files), files)
    try:
        import av
    except ImportError:
        raise VideoReadError(path, "reading video files needs PyAV (pip install av, or groundscope[video]); or pass "
                                   "a folder of frames") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, f"it has no video stream; {_FIX}")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            count = int(stream.frames or 0) or None
    except VideoReadError:
        raise
    except Exception as e:
        raise VideoReadError(path, f"not a video PyAV can open ({type(e).__name__}: {e}); {_FIX}") from None
    return VideoFrames(str(path), fps, count)
