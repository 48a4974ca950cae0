"""`Tracks`: what tracking a video returns, one `Detections` per frame with ``tracker_id``, and its files: the
MOTChallenge text file, a JSON of every track (boxes, RLE masks, class, score) and an annotated MP4."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from groundscope.detections import Detections
from groundscope.track.frames import VideoFrames


@dataclass
class Tracks:
    """Tracked objects of one video.

    Attributes:
        frames: one `Detections` per frame, in order: the objects seen on it, with ``tracker_id`` (int64 (N,)); each
            track's class and label are its voted class on every frame; ``masks`` when a segmenter tracked them.
        classes: the names class_id indexes (the class list, or the expression / region label).
        video: the frames tracked (re-read by `write_video`).
        size: (H, W) of the frames.
    """

    frames: list[Detections]
    classes: list[str]
    video: VideoFrames | None = None
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Detections]:
        return iter(self.frames)

    def __getitem__(self, index: int) -> Detections:
        return self.frames[index]

    @property
    def fps(self) -> float | None:
        return None if self.video is None else self.video.fps

    @property
    def ids(self) -> list[int]:
        """Every track id, ascending."""
        return sorted({int(i) for d in self.frames if d.tracker_id is not None for i in d.tracker_id})

    def track(self, track_id: int) -> list[tuple[int, np.ndarray, float]]:
        """One track's life: [(frame index, xyxy box, score), ...] over the frames it was seen on."""
        out = []
        for f, d in enumerate(self.frames):
            if d.tracker_id is None:
                continue
            for i in np.flatnonzero(d.tracker_id == track_id):
                out.append((f, d.xyxy[i].copy(), float(d.scores[i])))
        return out

    # ------------------------------------------------------------------ files
    def write_mot(self, path: str | os.PathLike) -> Path:
        """MOTChallenge results: one line per object per frame, ``frame,id,bb_left,bb_top,w,h,score,-1,-1,-1``.

        Frames count from 1 and ``bb_left, bb_top`` are 1-based pixel coordinates of the box's top-left corner, the
        convention of MOTChallenge's ground truth (MOT16, arXiv:1603.00831, Table 3; motmetrics' ``io.loadtxt``
        subtracts 1 from both files alike), so a box at pixel column 0 is written as 1."""
        lines = []
        for f, d in enumerate(self.frames, start=1):
            for i in range(len(d)):
                x1, y1, x2, y2 = (float(v) for v in d.xyxy[i])
                lines.append(f"{f},{int(d.tracker_id[i])},{x1 + 1:.2f},{y1 + 1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
                             f"{float(d.scores[i]):.4f},-1,-1,-1")
        return _write_text(path, "\n".join(lines) + ("\n" if lines else ""))

    def to_dict(self) -> dict:
        """The JSON `write_json` writes: the video's facts, then each track with its class and its frames (box, score
        and RLE mask on each frame it was seen on)."""
        tracks: dict[int, dict] = {}
        for f, d in enumerate(self.frames):
            for i in range(len(d)):
                tid = int(d.tracker_id[i])
                rec = tracks.setdefault(tid, {"id": tid, "class_id": int(d.class_ids[i]), "label": d.labels[i],
                                              "frames": []})
                entry = {"frame": f, "box": [round(float(v), 2) for v in d.xyxy[i]],
                         "score": round(float(d.scores[i]), 5)}
                if d.masks is not None:
                    entry["mask"] = d.masks[i]
                rec["frames"].append(entry)
        for rec in tracks.values():
            scores = [e["score"] for e in rec["frames"]]
            rec.update(start=rec["frames"][0]["frame"], end=rec["frames"][-1]["frame"],
                       score=round(float(np.mean(scores)), 5))
        h, w = self.size if self.size else (None, None)
        return {"source": None if self.video is None else self.video.source, "width": w, "height": h,
                "fps": self.fps, "num_frames": len(self.frames), "classes": list(self.classes),
                "tracks": [tracks[k] for k in sorted(tracks)]}

    def write_json(self, path: str | os.PathLike) -> Path:
        return _write_text(path, json.dumps(self.to_dict()))

    def write_video(self, path: str | os.PathLike, video=None, fps: float | None = None) -> int:
        """An annotated MP4: each track's mask, box and ``#id label score`` in a colour of its own, drawn by
        `groundscope.visualize.annotate` on the frames (re-read from `video`, default the one tracked). Returns the
        frames written."""
        from groundscope.track.frames import open_video
        from groundscope.track.mp4 import write_mp4
        from groundscope.visualize import annotate

        source = open_video(video if video is not None else self.video)

        def drawn():
            for frame, dets in zip(source, self.frames):
                if len(dets):
                    # colour by track, not by class, so two objects of one class stay apart
                    dets = Detections(dets.xyxy, dets.scores, dets.tracker_id,
                                      [f"#{int(t)} {lab}" for t, lab in zip(dets.tracker_id, dets.labels)],
                                      masks=dets.masks)
                yield annotate(frame, dets)

        return write_mp4(drawn(), path, fps or self.fps or 25.0)

    def __repr__(self) -> str:
        return f"Tracks(frames={len(self.frames)}, tracks={len(self.ids)})"


def _write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic write (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
