"""Annotated images: boxes with legible labels, a colour per class."""

from __future__ import annotations

import colorsys

from PIL import Image, ImageDraw, ImageFont

from groundscope.detections import Detections
from groundscope.images import ImageInput, load_image


def class_color(class_id: int) -> tuple[int, int, int]:
    """A saturated colour per class id, well spread around the hue circle (golden-ratio steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def annotate(image: ImageInput, detections: Detections, show_scores: bool = True, line_width: int | None = None) -> Image.Image:
    """Draw `detections` on a copy of `image` and return it (RGB).

    Label size and line width scale with the image so labels stay readable on thumbnails and on 4K photos;
    labels sit above their box, or inside it when the box touches the top edge.
    """
    im = load_image(image).copy()
    w, h = im.size
    scale = max(w, h)
    lw = line_width or max(2, round(scale / 400))
    font_size = max(12, round(scale / 45))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(im)
    order = sorted(range(len(detections)), key=lambda i: float(detections.scores[i]))  # best drawn last, on top
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in detections.xyxy[i])
        color = class_color(int(detections.class_ids[i]))
        draw.rectangle([x1, y1, x2, y2], outline=color, width=lw)
        text = detections.labels[i]
        if show_scores:
            text = f"{text} {float(detections.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, font_size // 6)
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
        tx = min(max(x1, 0), max(w - tw - 2 * pad, 0))
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=color)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return im
