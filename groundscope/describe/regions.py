"""The regions `Describer` takes, read into masks: a dict (or any object with those attributes, e.g. `Region`)
with exactly one of ``mask`` ((H, W) array, non-zero inside, or the path of a mask image of the image's size),
``box`` ((x1, y1, x2, y2) pixels) or ``points`` ((N, 2) (x, y) pixels), and optionally a ``name``; `region_mask`
turns one into an (H, W) bool mask, its box and its name, or raises `RegionError` naming the region and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np

from groundscope.describe.focal import RegionError, focal_crop, region_to_mask

REGION_KEYS = ("mask", "box", "points")


@dataclass
class Region:
    """A region to describe: exactly one of `mask`, `box` or `points` (a dict with these keys works too)."""

    mask: Any = None
    box: Sequence[float] | None = None
    points: Any = None
    name: str | None = None


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
            raise RegionError(f"{name}: unknown key(s) {unknown}; a region has exactly one of mask, box or points "
                              "(and optionally name)")
        get = region.get
    elif any(hasattr(region, k) for k in REGION_KEYS):
        get = lambda k: getattr(region, k, None)  # noqa: E731
    else:
        raise RegionError(f"{name}: {type(region).__name__} is not a region; pass a dict with exactly one of "
                          "mask, box or points (or a groundscope.describe.Region)")
    given = get("name")
    return get("mask"), get("box"), get("points"), (str(given) if given else name)


def region_mask(hw: tuple[int, int], region: Any, name: str = "region",
                min_crop: int = 48) -> tuple[np.ndarray, list[float], str]:
    """A region (dict / `Region`) on an image of size `hw` -> (mask, box, name), checked describable.

    The box is the one given for a box region, else the mask's tight box (x1, y1, x2, y2), ends exclusive.
    Raises:
        RegionError: not exactly one of mask / box / points, an unreadable mask file, a mask of another size, a
            box or points outside the image, an empty mask; the message names the region.
    """
    mask, box, points, name = _fields(region, name)
    if isinstance(mask, (str, Path)):
        mask = read_mask(Path(mask), name)
    if box is not None:
        try:
            box = [float(v) for v in box]
        except (TypeError, ValueError):
            raise RegionError(f"{name}: a box is four numbers (x1, y1, x2, y2), got {box!r}") from None
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
