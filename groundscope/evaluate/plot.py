"""Precision/recall curve as a PNG, drawn with Pillow (a plotting library would be a dependency for one chart).

Input is the ``pr_curve`` dict of `groundscope.evaluate.coco.pr_curve`: ``{"recall": [101 values], "AP": [...],
"AP50": [...], "AP75": [...]}``, precision averaged over categories at each recall point. The legend gives each
curve's mean, which is the corresponding AP of the evaluation.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_SERIES = (
    ("AP50", "IoU 0.50", (31, 119, 180)),
    ("AP75", "IoU 0.75", (255, 127, 14)),
    ("AP", "IoU 0.50:0.95", (44, 160, 44)),
)


def draw_pr_curve(curve: dict, path: str | Path, title: str = "", size: tuple[int, int] = (640, 480)) -> Path:
    """Write the curves of `curve` to `path` (PNG) and return the path."""
    width, height = size
    left, right, top, bottom = 60, 20, 36, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x0, y0, x1, y1 = left, top, width - right, height - bottom

    def to_px(r: float, p: float) -> tuple[float, float]:
        return x0 + r * (x1 - x0), y1 - p * (y1 - y0)

    for i in range(6):  # grid and tick labels every 0.2
        v = i / 5
        gx, gy = to_px(v, v)
        draw.line([(gx, y0), (gx, y1)], fill=(225, 225, 225))
        draw.line([(x0, gy), (x1, gy)], fill=(225, 225, 225))
        draw.text((gx - 8, y1 + 6), f"{v:.1f}", fill="black", font=font)
        draw.text((x0 - 28, gy - 6), f"{v:.1f}", fill="black", font=font)
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(((x0 + x1) / 2 - 18, height - 22), "recall", fill="black", font=font)
    draw.text((6, y0 - 24), "precision", fill="black", font=font)
    if title:
        draw.text((x0, 10), title, fill="black", font=font)

    recall = curve["recall"]
    legend_y = y0 + 8
    for key, label, colour in _SERIES:
        values = curve.get(key)
        if not values:
            continue
        draw.line([to_px(r, p) for r, p in zip(recall, values, strict=True)], fill=colour, width=2)
        mean = sum(values) / len(values)
        draw.line([(x1 - 150, legend_y + 6), (x1 - 130, legend_y + 6)], fill=colour, width=3)
        draw.text((x1 - 125, legend_y), f"{label}  {mean:.3f}", fill="black", font=font)
        legend_y += 16
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
