"""The JSON answers that the CLI writes and the HTTP server returns, and the region texts both read.

One definition below both entry points, so that a file written by ``groundscope detect`` / ``describe --json``
and an answer of ``groundscope serve`` for the same input are the same JSON, and a box typed on the command line
and one sent in a form are read by the same rule.
"""

from __future__ import annotations

import math


class RegionTextError(ValueError):
    """A box or points text that cannot be read; the message names the value and the form to use."""


def result_record(image: str, width: int, height: int, model: str, task: str, detections) -> dict:
    """The per-image result that `detect`, `ground` and `refer` write as <stem>.json and `groundscope serve`
    answers. `detections` is a `groundscope.detections.Detections` (anything with ``to_list()``)."""
    return {
        "image": image,
        "width": width,
        "height": height,
        "model": model,
        "task": task,
        "detections": detections.to_list(),
    }


def describe_record(image: str, model: str, width: int | None, height: int | None, results, **video) -> dict:
    """The JSON object ``groundscope describe --json`` prints (and ``POST /v1/describe`` answers) for one image or
    video; `results` are region results with ``to_dict()``; `video` holds a video's ``frames`` and
    ``total_frames``. No width and height for an unreadable image."""
    record: dict = {"image": image, "model": model}
    if width is not None:
        record.update(width=width, height=height, **video)
    record["regions"] = [r.to_dict() for r in results]
    return record


def region_name(region: dict) -> str:
    """How a region given on the command line (or in a /v1/describe form) is named in the output."""
    if "box" in region:
        return f"box {','.join(f'{v:g}' for v in region['box'])}"
    if "mask" in region:
        return f"mask {region['mask']}"
    if "scribble" in region:
        return f"scribble {region['scribble']}"
    return "points " + ";".join(f"{x:g},{y:g}" for x, y in region["points"])


def parse_box(text: str) -> list[float]:
    """"x1,y1,x2,y2" in pixels -> four floats, or a `RegionTextError` naming the value."""
    try:
        box = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        box = []
    if len(box) == 4 and not all(math.isfinite(v) for v in box):
        raise RegionTextError(f"--box {text!r}: every coordinate must be a finite number (no nan or inf)")
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
        raise RegionTextError(f"--box {text!r}: give x1,y1,x2,y2 in pixels with x2 > x1 and y2 > y1")
    return box


def parse_points(text: str) -> list[list[float]]:
    """"x,y;x,y" pixels -> [[x, y], ...], or a `RegionTextError` naming the value."""
    try:
        pts = [[float(v) for v in p.split(",")] for p in text.replace(" ", "").split(";") if p]
    except ValueError:
        pts = []
    if pts and not all(math.isfinite(v) for p in pts for v in p):
        raise RegionTextError(f"--points {text!r}: every coordinate must be a finite number (no nan or inf)")
    if not pts or any(len(p) != 2 for p in pts):
        raise RegionTextError(f"--points {text!r}: give x,y pixels, several separated by ';' (\"120,80;130,95\")")
    return pts
