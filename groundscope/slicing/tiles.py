"""Tiling: where the tiles of a sliced inference lie, and the settings that decide it.

`SliceSpec` holds every setting of a sliced run (tile size, overlap, whether the whole image runs too, the merge
rule) and checks them once, raising `SliceError` (a `ValueError`) that names the argument and the fix.
`tile_boxes` places the tiles exactly as SAHI does (obss/sahi sahi/slicing.py, ``get_slice_bboxes``): tiles of
the given size start at the top-left corner, step by ``size - int(overlap * size)`` pixels, and a tile that would
cross the right or bottom edge is shifted back inside the image, so every tile has the full size (when the image
is at least that large) and the last row and column overlap their neighbours more than the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MERGES = ("nmm", "nms")
MATCH_METRICS = ("ios", "iou")
# More tiles than this on one image is almost certainly a typo (--slices 8x8 on a photo, --overlap 0.99);
# the error says so instead of running for hours.
MAX_TILES = 10_000


class SliceError(ValueError):
    """A bad slicing setting: the message names the argument (``slices``, ``overlap``, ``merge`` ...) and the fix."""


@dataclass(frozen=True)
class SliceSpec:
    """How to slice: tile (height, width) in pixels, overlap ratio, the whole-image pass, and the merge rule.

    Attributes:
        height, width: tile size in pixels (>= 1). A tile larger than the image is cut to the image, and a
            tiling of one tile runs the image once (no separate whole-image pass: it would be the same).
        overlap: fraction of the tile shared with the next tile, in [0, 1), for both axes (SAHI's
            ``overlap_height_ratio`` / ``overlap_width_ratio``; ``int(overlap * size)`` pixels).
        full_image: also run the whole image and merge its detections with the tiles' (SAHI's
            ``perform_standard_pred``): large objects that no tile holds whole are found there.
        merge: "nmm" (SAHI's greedy non-maximum merging, ``GREEDYNMM``: matched boxes are united) or "nms"
            (class-wise non-maximum suppression: matched boxes are dropped).
        match: "ios" (intersection over the smaller box, SAHI's default) or "iou".
        threshold: boxes match when `match` reaches this value (SAHI's ``postprocess_match_threshold``, 0.5).
    """

    height: int
    width: int
    overlap: float = 0.2
    full_image: bool = True
    merge: str = "nmm"
    match: str = "ios"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise SliceError(f"slices: the tile {name} must be a whole number of pixels >= 1, not {v!r}; "
                                 "pass e.g. slices=(640, 640) or --slices 640x640")
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))
        try:
            overlap = float(self.overlap)
        except (TypeError, ValueError):
            overlap = float("nan")
        if not 0.0 <= overlap < 1.0:
            raise SliceError(f"overlap must be in [0, 1) (the share of a tile its neighbour also covers), not "
                             f"{self.overlap!r}; 0.2 is SAHI's default")
        object.__setattr__(self, "overlap", overlap)
        if self.merge not in MERGES:
            raise SliceError(f"merge must be one of {', '.join(MERGES)} (greedy non-maximum merging or "
                             f"suppression), not {self.merge!r}")
        if self.match not in MATCH_METRICS:
            raise SliceError(f"merge match must be one of {', '.join(MATCH_METRICS)} (intersection over the "
                             f"smaller box, or over the union), not {self.match!r}")
        try:
            threshold = float(self.threshold)
        except (TypeError, ValueError):
            threshold = float("nan")
        if not 0.0 < threshold <= 1.0:
            raise SliceError(f"merge threshold must be in (0, 1], not {self.threshold!r}; 0.5 is SAHI's default")
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "full_image", bool(self.full_image))

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def record(self) -> dict:
        """The settings as JSON values (journals and label logs carry them)."""
        return {"slices": [self.height, self.width], "overlap": self.overlap, "full_image": self.full_image,
                "merge": self.merge, "match": self.match, "threshold": self.threshold}


def slice_spec(slices, overlap: float = 0.2, full_image: bool = True, merge: str = "nmm") -> SliceSpec:
    """A `SliceSpec` from the detector methods' arguments: `slices` is a `SliceSpec` (used as is), an int (square
    tiles), an (height, width) pair, or text "HxW" / "N"."""
    if isinstance(slices, SliceSpec):
        return slices
    if isinstance(slices, str):
        h, w = parse_slices(slices)
    elif isinstance(slices, (int, np.integer)) and not isinstance(slices, bool):
        h = w = int(slices)
    else:
        try:
            h, w = slices
        except (TypeError, ValueError):
            raise SliceError(f"slices must be (height, width) in pixels, an int for square tiles, or 'HxW' text, "
                             f"not {slices!r}") from None
    return SliceSpec(h, w, overlap, full_image, merge)


def parse_slices(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480): tile HEIGHTxWIDTH in pixels (as ``slices=(h, w)``); '640' -> (640, 640)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", str(text))
    if m is None:
        raise SliceError(f"--slices takes the tile size as HEIGHTxWIDTH in pixels, e.g. 640x640 (or 640 for a "
                         f"square), not {text!r}")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) is not None else h
    if h < 1 or w < 1:
        raise SliceError(f"--slices {text}: a tile side of 0 pixels holds nothing; give both sides >= 1, "
                         "e.g. 640x640")
    return h, w


def tile_boxes(height: int, width: int, tile_height: int, tile_width: int, overlap: float = 0.2) -> np.ndarray:
    """The tiles of a (height, width) image: int64 (T, 4) pixel boxes (x1, y1, x2, y2), row by row.

    SAHI's rule (obss/sahi sahi/slicing.py ``get_slice_bboxes``): step ``tile - int(overlap * tile)``; a tile
    crossing the right / bottom edge is moved back to end at the edge (its start clamped at 0, so a tile larger
    than the image is the image). Raises `SliceError` beyond `MAX_TILES` tiles.
    """
    if height < 1 or width < 1:
        raise SliceError(f"cannot slice an empty image ({width}x{height} pixels)")
    step_y = max(1, tile_height - int(overlap * tile_height))
    step_x = max(1, tile_width - int(overlap * tile_width))

    def starts(size: int, tile: int, step: int) -> list[int]:
        if tile >= size:
            return [0]
        out = list(range(0, size - tile, step))
        out.append(size - tile)  # the shifted-back last tile (SAHI: ``xmin = max(0, xmax - slice_width)``)
        return sorted(set(out))

    ys, xs = starts(height, tile_height, step_y), starts(width, tile_width, step_x)
    if len(ys) * len(xs) > MAX_TILES:
        raise SliceError(f"slices {tile_height}x{tile_width} with overlap {overlap} cut a {width}x{height} image "
                         f"into {len(ys) * len(xs)} tiles (more than {MAX_TILES}); use larger tiles or less overlap")
    th, tw = min(tile_height, height), min(tile_width, width)
    return np.asarray([[x, y, x + tw, y + th] for y in ys for x in xs], np.int64).reshape(-1, 4)


# What the command-line options mean (each verb module declares its own typer options with these texts).
OPTION_HELP = {
    "slices": "Sliced inference for small objects in large images: tile HEIGHTxWIDTH in pixels, e.g. 640x640 "
              "(docs/sliced.md). Off by default.",
    "overlap": "With --slices: the share of a tile its neighbour also covers, in [0, 1).",
    "full_image": "With --slices: also run the whole image (large objects) and merge it with the tiles.",
    "merge": "With --slices: nmm (SAHI's greedy non-maximum merging: matched boxes are united) or nms "
             "(class-wise suppression).",
}


def spec_from_options(slices: str | None, overlap: float = 0.2, full_image: bool = True,
                      merge: str = "nmm") -> SliceSpec | None:
    """The `SliceSpec` of the command-line options (``--slices 640x640 --overlap 0.2 --merge nmm``), or None
    without --slices. Raises `SliceError` for a bad value, or for a slicing option given without --slices."""
    if slices is None:
        if overlap != 0.2 or merge != "nmm" or not full_image:
            raise SliceError("--overlap, --merge and --no-full-image set up sliced inference; add --slices "
                             "HEIGHTxWIDTH (e.g. --slices 640x640) or drop them")
        return None
    h, w = parse_slices(slices)
    return SliceSpec(h, w, overlap, full_image, merge)
