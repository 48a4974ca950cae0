"""The regions `Describer` takes, read into masks: a dict (or any object with those attributes, e.g. `Region`)
with exactly one of ``mask`` ((H, W) array, non-zero inside, or the path of a mask image of the image's size),
``box`` ((x1, y1, x2, y2) pixels), ``points`` ((N, 2) (x, y) pixels) or ``scribble`` (strokes drawn on the image:
an (H, W) array or mask image, non-zero on the strokes), and optionally a ``name``; `region_mask` turns one into an
(H, W) bool mask, its box and its name, or raises `RegionError` naming the region and the fix.

With a segmenter (`region_mask(..., segment=...)`), boxes, points and scribbles become SAM masks as Describe
Anything's official code makes them: a box is SAM's box prompt, points are positive clicks
(examples/dam_with_sam.py ~143-172, ``input_labels = [1] * len(points)``), and a scribble gives SAM 8 of its
pixels drawn at random with seed 0 (demo_simple.py ~64-80: ``np.random.seed(0)``, ``np.random.choice(n,
size=min(n, 8), replace=False)``). Without one, a box is its filled rectangle, points are small discs and a
scribble is its own strokes (the demo's "skip SAM" path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

from groundscope.describe.focal import RegionError, focal_crop, region_to_mask

REGION_KEYS = ("mask", "box", "points", "scribble")
SCRIBBLE_POINTS = 8  # official demo_simple.py: at most 8 scribble pixels go to SAM


@dataclass
class Region:
    """A region to describe: exactly one of `mask`, `box`, `points` or `scribble` (a dict with these keys works
    too)."""

    mask: Any = None
    box: Sequence[float] | None = None
    points: Any = None
    name: str | None = None
    scribble: Any = None


def scribble_points(strokes: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W) stroke mask -> (K, 2) (x, y) pixels for SAM, K = min(stroke pixels, 8): the official demo's draw
    (``np.random.seed(0)``, then ``np.random.choice`` without replacement over ``np.nonzero`` order)."""
    ys, xs = np.nonzero(np.asarray(strokes))
    coords = np.stack((xs, ys), axis=1)
    if len(coords) == 0:
        return coords
    rng = np.random.RandomState(seed)  # the legacy global generator np.random.seed(0) sets up, same draws
    pick = rng.choice(len(coords), size=min(len(coords), SCRIBBLE_POINTS), replace=False)
    return coords[pick]


def read_mask(source: Path | BinaryIO, name: str, label: str | None = None) -> np.ndarray:
    """A mask image (a path, or an open binary file such as an upload) -> (H, W) bool, True where non-zero.

    `name` names the region in errors; `label` the file (default: the path).
    Raises:
        RegionError: not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    label = label if label is not None else str(source)
    try:
        with Image.open(source) as im:
            im.load()
            # Palette / 1-bit / greyscale masks keep their values (a palette index > 0 is inside); colour masks
            # are read through their luminance.
            arr = np.asarray(im if im.mode in ("1", "L", "P", "I", "I;16", "F") else im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise RegionError(f"{name}: cannot read mask '{label}' ({e}); pass a mask image (PNG) of the image's size, "
                          "non-zero inside the region") from e
    return arr > 0


def _fields(region: Any, name: str) -> tuple[Any, Any, Any, str]:
    """(mask, box, points, name) of a region given as a dict or an object with those attributes."""
    if isinstance(region, dict):
        unknown = sorted(set(region) - set(REGION_KEYS) - {"name"})
        if unknown:
            raise RegionError(f"{name}: unknown key(s) {unknown}; a region has exactly one of mask, box, points "
                              "or scribble (and optionally name)")
        get = region.get
    elif any(hasattr(region, k) for k in REGION_KEYS):
        get = lambda k: getattr(region, k, None)  # noqa: E731
    else:
        raise RegionError(f"{name}: {type(region).__name__} is not a region; pass a dict with exactly one of "
                          "mask, box or points (or a groundscope.describe.Region)")
    given = get("name")
    return get("mask"), get("box"), get("points"), (str(given) if given else name)


def _scribble(region: Any) -> Any:
    return region.get("scribble") if isinstance(region, dict) else getattr(region, "scribble", None)


def region_mask(hw: tuple[int, int], region: Any, name: str = "region", min_crop: int = 48,
                segment: Callable[..., np.ndarray] | None = None) -> tuple[np.ndarray, list[float], str]:
    """A region (dict / `Region`) on an image of size `hw` -> (mask, box, name), checked describable.

    The box is the one given for a box region, else the mask's tight box (x1, y1, x2, y2), ends exclusive.
    `segment(box=... | points=...) -> (H, W) bool` (a segmenter bound to this image) makes boxes, points and
    scribbles into SAM masks (module docstring); a given mask is used as it is.
    Raises:
        RegionError: not exactly one of mask / box / points / scribble, an unreadable mask file, a mask of another
            size, a box or points outside the image, an empty mask; the message names the region.
    """
    mask, box, points, name = _fields(region, name)
    scribble = _scribble(region)
    if scribble is not None:
        if any(v is not None for v in (mask, box, points)):
            raise RegionError(f"{name}: give exactly one of mask, box, points or scribble")
        strokes = read_mask(Path(scribble), name) if isinstance(scribble, (str, Path)) else scribble
        strokes = region_to_mask(hw, mask=strokes, name=name)  # checks its size
        if segment is None:
            mask = strokes  # the official demo's "use scribble as the mask directly (skipping SAM)"
        else:
            picked = scribble_points(strokes)
            if len(picked) == 0:
                raise RegionError(f"{name}: the scribble has no stroke pixels; draw on the region")
            mask, points = None, picked
    if isinstance(mask, (str, Path)):
        mask = read_mask(Path(mask), name)
    if box is not None:
        try:
            box = [float(v) for v in box]
        except (TypeError, ValueError):
            raise RegionError(f"{name}: a box is four numbers (x1, y1, x2, y2), got {box!r}") from None
    if segment is not None and mask is None:
        region_to_mask(hw, box=box, points=points, name=name)  # the same checks as without a segmenter
        try:
            mask = segment(box=box) if box is not None else segment(points=np.asarray(points, np.float64))
        except ValueError as e:  # the segmenter's PromptError
            raise RegionError(f"{name}: {e}") from e
        if not np.asarray(mask).any():
            raise RegionError(f"{name}: the segmenter found no object there (an empty mask); give a tighter box, "
                              "more points, or the mask itself")
        arr = np.asarray(mask, bool)
    else:
        arr = region_to_mask(hw, mask=mask, box=box, points=points, name=name)
    crop = focal_crop(arr, min_size=min_crop, name=name)  # raises on an empty mask
    x, y, w, h = crop.region
    return arr, (box if box is not None else [float(x), float(y), float(x + w), float(y + h)]), name


def _given_box(region: Any) -> list[float] | None:
    box = region.get("box") if isinstance(region, dict) else getattr(region, "box", None)
    try:
        return [float(v) for v in box] if box is not None and len(box) == 4 else None
    except (TypeError, ValueError):
        return None


def _safe_name(region: Any, default: str) -> str:
    try:
        return _fields(region, default)[3]
    except RegionError:
        return default
