"""Video input for `Describer.describe_video`: a video file (read with PyAV), a folder of frames (sorted by name)
or a list of frames, `num_frames` of them sampled as the official ``np.linspace(0, n - 1, 8, dtype=int)``
(`sample_indices`) into a `VideoClip` of (H, W, 3) uint8 frames."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from groundscope.images import ImageInput, ImageLoadError, load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}


@dataclass
class VideoClip:
    """Frames sampled from a video (`load_video`).

    Attributes:
        frames: the sampled frames, (H, W, 3) uint8 each, in time order.
        indices: their indices in the source.
        total: the source's frame count.
        source: what they were read from (path or "<list>").
    """

    frames: list[np.ndarray]
    indices: list[int]
    total: int
    source: str


def sample_indices(total: int, num_frames: int) -> list[int]:
    """Always `num_frames` indices over `total` frames, as the official
    ``np.linspace(0, total - 1, 8, dtype=int)`` (examples/dam_video_with_sam2.py ~195): truncated, first and last
    included, frames repeated when the video has fewer (DAM-3B-Video reads exactly 8)."""
    if total <= 0:
        return []
    return [int(i) for i in np.linspace(0, total - 1, num_frames, dtype=int)]


def frame_files(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name (a video's frames, or its per-frame masks)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_video_file(path: Path, num_frames: int) -> VideoClip:
    try:
        import av
    except ImportError:
        raise ImageLoadError(path, "reading video files needs PyAV (pip install av, or groundscope[video]); "
                                   "or pass a folder of frames") from None

    def decode(wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
        got, count = {}, 0
        with av.open(str(path)) as container:
            for count, frame in enumerate(container.decode(video=0), start=1):
                if count - 1 in wanted:
                    got[count - 1] = frame.to_ndarray(format="rgb24")
        return got, count

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImageLoadError(path, "has no video stream")
            stream = container.streams.video[0]
            total = int(stream.frames or 0)
            if total <= 0:  # no frame count in the header: count the packets (no decoding)
                total = sum(1 for packet in container.demux(stream) if packet.size)
        indices = sample_indices(total, num_frames)
        got, decoded = decode(set(indices))
        if len(got) < len(indices):  # the header's count was wrong: sample the frames that are there
            total = decoded
            indices = sample_indices(total, num_frames)
            got, _ = decode(set(indices))
    except ImageLoadError:
        raise
    except Exception as e:  # PyAV raises its own error types per container / codec problem
        raise ImageLoadError(path, f"cannot decode the video ({type(e).__name__}: {e})") from e
    if not indices:
        raise ImageLoadError(path, "the video has no frames")
    return VideoClip([got[i] for i in indices], indices, total, str(path))


def load_video(video: str | os.PathLike | Sequence[ImageInput] | VideoClip, num_frames: int = 8) -> VideoClip:
    """Sample `num_frames` frames uniformly from a video file, a folder of frames (image files sorted by name) or
    a list of frames (arrays, PIL images, paths). A `VideoClip` is returned as is.

    Raises:
        ImageLoadError: unreadable video / frame, an empty folder or list, PyAV missing for a video file.
    """
    if isinstance(video, VideoClip):
        return video
    if isinstance(video, (list, tuple)):
        indices = sample_indices(len(video), num_frames)
        if not indices:
            raise ImageLoadError("<list>", "no frames given")
        return VideoClip([np.asarray(load_image(video[i])) for i in indices], indices, len(video), "<list>")
    path = Path(video)
    if path.is_dir():
        files = frame_files(path)
        indices = sample_indices(len(files), num_frames)
        if not indices:
            raise ImageLoadError(path, "the folder holds no frames (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
        return VideoClip([np.asarray(load_image(files[i])) for i in indices], indices, len(files), str(path))
    if not path.exists():
        raise ImageLoadError(path, "no such file")
    return _read_video_file(path, num_frames)


def is_video_source(source: Any) -> bool:
    """A video file (by suffix) or a folder (of frames)."""
    if isinstance(source, VideoClip):
        return True
    if isinstance(source, (str, Path)):
        p = Path(source)
        return p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES
    return False
