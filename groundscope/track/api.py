"""`track(video, classes, detector=, segmenter=, ...)` -> `Tracks`: open the video, feed its frames to a `Tracker` with
a progress bar, return the tracks."""

from __future__ import annotations

import os
from typing import Sequence

from groundscope.track.errors import TrackError
from groundscope.track.frames import VideoFrames, open_video
from groundscope.track.tracker import Tracker
from groundscope.track.tracks import Tracks


def track(video: str | os.PathLike | Sequence | VideoFrames, classes: Sequence[str] | str = (), *, detector=None,
          segmenter=None, every: int = 10, expression: str | None = None, box: Sequence[float] | None = None,
          frame: int = 0, label: str = "object", match_iou: float = 0.5, max_lost: int = 10,
          box_threshold: float = 0.3, lost_score: float = 0.5, max_detections: int = 100,
          nms_iou: float | None = 0.5, buffer: float = 0.5, buffer_iou: float = 0.1,
          min_hits: int = 5, interpolate: int = 5, device: str = "cpu",
          progress: bool = True) -> Tracks:
    """Track what `classes` name (or `expression`, or `box` on frame `frame`) through `video`.

    Args:
        video: a video file, a folder of frames, a list of frames or a (T, H, W, 3) array (streamed, never loaded
            whole).
        classes: class names (a list, or one comma-separated string).
        detector: a groundscope detector or a registry name / folder (`load_detector`).
        segmenter: a `VideoSegmenter` or a segmenter name / folder (`load_video_segmenter`), to propagate masks with
            SAM 2's memory; None tracks detections by box overlap instead (detecting every frame).
        every, match_iou, max_lost, box_threshold, lost_score, max_detections, nms_iou, buffer, buffer_iou, min_hits,
            interpolate, label:
            see `Tracker`.
        device: where a detector or segmenter given by name is loaded.
        progress: show a progress bar over the frames (on stderr).
    Returns:
        `Tracks`: one `Detections` per frame with ``tracker_id``; ``write_mot`` / ``write_json`` / ``write_video``.
    Raises:
        TrackError: no classes, a box without a segmenter, a frame past the end; VideoReadError: an unreadable video.
    """
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    frames = open_video(video)
    if box is not None and frames.count is not None and frame >= frames.count:
        raise TrackError(f"frame {frame} (the frame of the box, --frame) is past the end of {frames.source} ({frames.count} "
                         f"frames); give a frame index below {frames.count}")
    if isinstance(detector, (str, os.PathLike)):
        from groundscope.models.loading import load_detector

        detector = load_detector(detector, device=device)
    if isinstance(segmenter, (str, os.PathLike)):
        from groundscope.models.video_segmenter import load_video_segmenter

        segmenter = load_video_segmenter(segmenter, device=device)
    tracker = Tracker(detector, classes, segmenter=segmenter, every=every, expression=expression, box=box,
                      frame=frame, label=label, match_iou=match_iou, max_lost=max_lost, box_threshold=box_threshold,
                      lost_score=lost_score, max_detections=max_detections, nms_iou=nms_iou, buffer=buffer,
                      buffer_iou=buffer_iou, min_hits=min_hits, interpolate=interpolate)
    if not progress:
        for image in frames:
            tracker.update(image)
        return tracker.finish(frames)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]track"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[live]} live"), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("track", total=frames.count, live=0)
        for image in frames:
            tracker.update(image)
            bar.update(task, advance=1, live=len(tracker.live))
    return tracker.finish(frames)
