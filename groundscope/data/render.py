"""Pixels of the synthetic world: shape masks, textures, backgrounds, compositing and sensor noise.

Everything is numpy float32 in [0, 255], shape ``(H, W)`` for masks and ``(H, W, 3)`` for colour, and every
random choice comes from the ``numpy.random.Generator`` passed in, so a seed fixes every pixel.
Masks are drawn with PIL at `SUPERSAMPLE` x resolution and box-filtered down, which gives anti-aliased
edges: real detectors never see perfectly hard edges, and a 34 px star needs them to look like a star.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 3


# ------------------------------------------------------------------------------------------------- shapes


def _rotate(points: list[tuple[float, float]], angle: float) -> list[tuple[float, float]]:
    """Rotate unit-square points (centre 0.5, 0.5) by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return [(0.5 + (x - 0.5) * c - (y - 0.5) * s, 0.5 + (x - 0.5) * s + (y - 0.5) * c) for x, y in points]


def _polygon(shape: str) -> list[tuple[float, float]]:
    """Outline of ``shape`` in the unit square, y pointing down."""
    if shape == "square":
        return [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":  # a tall rhombus, so no rotation turns a square into it
        return [(0.5, 0.0), (0.86, 0.5), (0.5, 1.0), (0.14, 0.5)]
    if shape == "cross":
        a, b = 0.32, 0.68
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    if shape == "star":  # fat five-pointed star (inner/outer radius 0.46) so it does not read as a cross
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.23
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((0.5 + r * math.cos(t), 0.53 + r * math.sin(t)))
        return pts
    if shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((0.5 + x / 34.0, 0.47 - y / 34.0))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


def shape_mask(shape: str, side: int, angle: float) -> np.ndarray:
    """Anti-aliased alpha mask of ``shape`` drawn in a ``side`` x ``side`` footprint, rotated by ``angle``.

    Returns float32 (h, w) in [0, 1], cropped tight to the drawn pixels (rotation may make it a little
    larger or smaller than ``side``).
    """
    pad = int(math.ceil(side * 0.25))
    size = side + 2 * pad
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    scale = side * SUPERSAMPLE
    off = pad * SUPERSAMPLE

    def to_px(points):
        return [(off + x * scale, off + y * scale) for x, y in points]

    if shape == "circle":
        draw.ellipse([off, off, off + scale, off + scale], fill=255)
    elif shape == "crescent":
        # Disc minus a shifted disc; the bite's direction follows the angle, any orientation is still a crescent.
        draw.ellipse([off, off, off + scale, off + scale], fill=255)
        dx, dy = 0.36 * math.cos(angle) * scale, 0.36 * math.sin(angle) * scale
        draw.ellipse([off + dx, off + dy, off + dx + scale, off + dy + scale], fill=0)
    else:
        draw.polygon(to_px(_rotate(_polygon(shape), angle)), fill=255)
    small = big.resize((size, size), Image.Resampling.BOX)
    mask = np.asarray(small, dtype=np.float32) / 255.0
    ys, xs = np.nonzero(mask >= 0.5)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


# ------------------------------------------------------------------------------------------------- textures


def _pattern_rgb(rgb: tuple[int, int, int]) -> np.ndarray:
    """Second colour of a pattern: a tint for dark colours, a shade for light ones, so the hue stays."""
    c = np.asarray(rgb, dtype=np.float32)
    luma = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    return c + (255.0 - c) * 0.45 if luma < 140 else c * 0.62


def texture_fill(texture: str, h: int, w: int, rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Colour of an object's pixels: float32 (h, w, 3).

    ``plain`` is the colour with a soft lighting gradient; ``striped``/``dotted``/``checkered`` mix in a
    lighter or darker shade of the *same* colour on at most ~40 % of the pixels, so the colour cue survives.
    """
    base = np.asarray(rgb, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Lighting: up to +-8 % brightness across the object, direction random.
    t = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(t) + yy * math.sin(t)) / max(h, w, 1)
    light = 1.0 + rng.uniform(0.0, 0.16) * (ramp - 0.5)
    out = np.clip(base[None, None, :] * light[..., None], 0, 255)
    if texture == "plain":
        return out
    period = float(rng.uniform(9, 13))
    if texture == "striped":
        t = rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])
        u = xx * math.cos(t) + yy * math.sin(t)
        on = (u % period) < period * 0.4
    elif texture == "dotted":
        cx = (xx % period) - period / 2
        cy = (yy % period) - period / 2
        on = cx * cx + cy * cy <= (period * 0.3) ** 2
    elif texture == "checkered":
        cell = period * 0.6
        on = ((xx // cell) + (yy // cell)) % 2 == 0
        # Checkers cover half the area; use a milder second colour so the object colour still dominates.
        return np.where(on[..., None], out * 0.5 + _pattern_rgb(rgb)[None, None, :] * 0.5, out)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.where(on[..., None], _pattern_rgb(rgb)[None, None, :], out)


# ------------------------------------------------------------------------------------------------- background

BACKGROUND_KINDS = ("plain", "gradient", "mottled", "grid", "cluttered")


def background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A low-saturation background, float32 (h, w, 3), and words for it (``"light gray mottled"``).

    Saturation stays under ~10 % so no background pixel can pass for one of the object colours.
    """
    grey = float(rng.uniform(70, 225))
    tint = rng.uniform(-10, 10, size=3).astype(np.float32)
    img = np.full((h, w, 3), grey, dtype=np.float32) + tint
    kind = str(rng.choice(BACKGROUND_KINDS))
    if kind == "gradient":
        t = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (xx * math.cos(t) + yy * math.sin(t)) / max(h, w)
        img += (rng.uniform(25, 45) * (ramp - ramp.mean()))[..., None]
    elif kind == "mottled":
        # Low-frequency noise: a coarse random grid upsampled smoothly.
        coarse = rng.uniform(-1, 1, size=(max(2, h // 48), max(2, w // 48))).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC))
        img += (rng.uniform(12, 22) * field)[..., None]
    elif kind == "grid":
        step = int(rng.integers(24, 56))
        shade = rng.choice([-1.0, 1.0]) * rng.uniform(14, 26)
        img[::step, :, :] += shade
        img[:, ::step, :] += shade
    elif kind == "cluttered":
        # Grey distractor strokes and blobs: structure a detector must learn to ignore.
        layer = Image.new("F", (w, h), 0.0)
        draw = ImageDraw.Draw(layer)
        for _ in range(int(rng.integers(4, 10))):
            x0, y0 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            shade = float(rng.choice([-1.0, 1.0]) * rng.uniform(12, 28))
            if rng.random() < 0.5:
                x1, y1 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
                draw.line([x0, y0, x1, y1], fill=shade, width=int(rng.integers(1, 4)))
            else:
                r = float(rng.uniform(10, 40))
                draw.ellipse([x0 - r, y0 - r * 0.7, x0 + r, y0 + r * 0.7], fill=shade)
        img += np.asarray(layer, dtype=np.float32)[..., None]
    lightness = "dark" if grey < 115 else "medium" if grey < 170 else "light"
    words = {"plain": "plain", "gradient": "gradient", "mottled": "mottled", "grid": "grid-lined",
             "cluttered": "cluttered"}[kind]
    return img, f"{lightness} gray {words}"


# ------------------------------------------------------------------------------------------------- compositing


def composite(canvas: np.ndarray, fill: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend ``fill`` (h, w, 3) with ``alpha`` (h, w) onto ``canvas`` at top-left (x, y), in place."""
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w]
    a = alpha[..., None]
    region *= 1.0 - a
    region += fill * a


def finish(canvas: np.ndarray, rng: np.random.Generator, noise_prob: float = 0.4) -> np.ndarray:
    """Quantise to uint8 (H, W, 3), adding Gaussian sensor noise (sigma 1-4 grey levels) with ``noise_prob``.

    Noise is not on every image because it is what makes a PNG large (~400 KB instead of ~30 KB at 640 px).
    """
    if rng.random() < noise_prob:
        sigma = float(rng.uniform(1.0, 4.0))
        canvas = canvas + rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
