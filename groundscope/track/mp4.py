"""Frames -> an H.264 MP4 with PyAV (yuv420p, so any player opens it; odd sizes are padded by one pixel, which that
format requires)."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Iterable

import numpy as np
from PIL import Image


def write_mp4(frames: Iterable[np.ndarray | Image.Image], path: str | os.PathLike, fps: float = 25.0) -> int:
    """Encode `frames` ((H, W, 3) uint8 arrays or RGB images, one size) to `path`; returns the frames written."""
    import av

    rate = Fraction(float(fps or 25.0)).limit_denominator(1001)
    written = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            arr = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame, np.uint8)
            h, w = arr.shape[:2]
            if stream is None:
                stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
                stream.width, stream.height = w + w % 2, h + h % 2
                stream.pix_fmt = "yuv420p"
            if (w + w % 2, h + h % 2) != (stream.width, stream.height):
                raise ValueError(f"frame {written} is {w}x{h} but the video is {stream.width}x{stream.height}")
            if w % 2 or h % 2:
                arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
            written += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return written
