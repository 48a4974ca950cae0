"""Annotated images: boxes with legible labels, a colour per class; regions (mask contours) with their texts below."""

from __future__ import annotations

import colorsys

import numpy as np
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


def annotate(image: ImageInput, detections: Detections, show_scores: bool = True, line_width: int | None = None,
             mask_alpha: float = 0.4) -> Image.Image:
    """Draw `detections` on a copy of `image` and return it (RGB).

    Label size and line width scale with the image so labels stay readable on thumbnails and on 4K photos;
    labels sit above their box, or inside it when the box touches the top edge. Detections that carry masks get
    them tinted in their class colour (`mask_alpha`) with the contour drawn, under the boxes and labels.
    """
    im = load_image(image).copy()
    w, h = im.size
    scale = max(w, h)
    lw = line_width or max(2, round(scale / 400))
    if detections.masks is not None and len(detections):
        im = _overlay_masks(im, detections, mask_alpha, max(1, lw // 2))
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


def _overlay_masks(im: Image.Image, detections: Detections, alpha: float, outline: int) -> Image.Image:
    """Tint each mask in its class colour and draw its contour; lowest score first, so the best lies on top."""
    arr = np.asarray(im).copy()
    masks = detections.mask_array()
    if masks.shape[1:] != arr.shape[:2]:
        raise ValueError(f"the detections' masks are {masks.shape[2]}x{masks.shape[1]} but the image is "
                         f"{arr.shape[1]}x{arr.shape[0]}; draw them on the image they were made for")
    for i in np.argsort(detections.scores, kind="stable"):
        m = masks[i]
        color = np.array(class_color(int(detections.class_ids[i])), np.float32)
        arr[m] = (arr[m] * (1 - alpha) + color * alpha).astype(np.uint8)
        arr[_mask_outline(m, outline)] = color.astype(np.uint8)
    return Image.fromarray(arr)


# ---------------------------------------------------------------------------------------------- regions + text
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _mask_outline(mask, width: int):
    """(H, W) bool -> the mask's pixels within `width` of its border (its contour, `width` thick)."""
    from scipy.ndimage import binary_erosion

    m = np.asarray(mask, bool)
    inner = binary_erosion(m, iterations=max(1, width), border_value=0)
    return m & ~inner


def outline_regions(image: ImageInput, masks, boxes=None, line_width: int | None = None, fill_alpha: float = 0.25,
                    tags: bool = True) -> Image.Image:
    """Draw regions on a copy of `image`: each mask tinted and its contour drawn, or, without a mask, its box;
    region i gets colour `class_color(i)` and (with `tags`) its number ``i + 1`` at its top-left corner.

    Args:
        masks: one (H, W) bool mask or None per region.
        boxes: one (x1, y1, x2, y2) or None per region (used for regions without a mask, and to place tags).
    """
    im = load_image(image).copy()
    w, h = im.size
    scale = max(w, h)
    lw = line_width or max(2, round(scale / 400))
    masks = list(masks)
    boxes = list(boxes) if boxes is not None else [None] * len(masks)
    arr = np.asarray(im).copy()
    for i, m in enumerate(masks):
        if m is None:
            continue
        m = np.asarray(m, bool)
        if m.shape != (h, w):
            continue
        color = np.array(class_color(i), np.float32)
        arr[m] = (arr[m] * (1 - fill_alpha) + color * fill_alpha).astype(np.uint8)
        arr[_mask_outline(m, lw)] = color.astype(np.uint8)
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    font_size = max(12, round(scale / 45))
    font = _font(font_size)
    for i, (m, b) in enumerate(zip(masks, boxes)):
        color = class_color(i)
        if b is None and m is not None and np.asarray(m).any():
            ys, xs = np.nonzero(np.asarray(m))
            b = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        if b is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in b)
        if m is None:
            draw.rectangle([x1, y1, x2, y2], outline=color, width=lw)
        if tags:
            text = str(i + 1)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            pad = max(2, font_size // 6)
            tw, th = right - left + 2 * pad, bottom - top + 2 * pad
            tx = min(max(x1, 0), max(w - tw, 0))
            ty = y1 - th if y1 - th >= 0 else min(max(y1, 0), max(h - th, 0))
            draw.rectangle([tx, ty, tx + tw, ty + th], fill=color)
            draw.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return im


def text_panel(width: int, texts, font_size: int | None = None, colors=None) -> Image.Image:
    """A white panel `width` wide holding ``"i. text"`` for each text, wrapped to the width, each behind a
    swatch of its region's colour (`class_color(i)` unless `colors` are given)."""
    import textwrap

    font_size = font_size or max(12, round(width / 45))
    font = _font(font_size)
    pad = max(4, font_size // 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1.0, probe.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26)
    left, top, right, bottom = probe.textbbox((0, 0), "Ag", font=font)
    line_h = (bottom - top) + max(2, font_size // 4)
    swatch = line_h - max(2, font_size // 4)
    chars = max(8, int((width - 3 * pad - swatch) / char_w))
    blocks = []
    for i, text in enumerate(texts):
        lines = []
        for para in (f"{i + 1}. {text}".splitlines() or [""]):
            lines += textwrap.wrap(para, chars) or [""]
        blocks.append(lines)
    height = pad + sum(len(b) * line_h + pad for b in blocks)
    panel = Image.new("RGB", (width, max(height, 2 * pad)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    y = pad
    for i, lines in enumerate(blocks):
        color = tuple(colors[i]) if colors is not None else class_color(i)
        draw.rectangle([pad, y, pad + swatch, y + swatch], fill=color)
        for line in lines:
            draw.text((2 * pad + swatch, y - top), line, fill=(0, 0, 0), font=font)
            y += line_h
        y += pad
    return panel


def stack_below(top: Image.Image, bottom: Image.Image) -> Image.Image:
    """`top` above `bottom` (same width; the narrower is padded white on the right)."""
    w = max(top.width, bottom.width)
    out = Image.new("RGB", (w, top.height + bottom.height), (255, 255, 255))
    out.paste(top.convert("RGB"), (0, 0))
    out.paste(bottom.convert("RGB"), (0, top.height))
    return out


def annotate_regions(image: ImageInput, masks, texts, boxes=None, line_width: int | None = None) -> Image.Image:
    """Regions outlined on the image (`outline_regions`) with their numbered texts in a panel below it: the
    result is the image's width and taller than the image by the panel."""
    im = outline_regions(image, masks, boxes, line_width=line_width)
    return stack_below(im, text_panel(im.width, texts, font_size=max(12, round(max(im.size) / 45))))
