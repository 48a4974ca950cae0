"""``loss.png``: the training curves, drawn with Pillow (matplotlib is not a dependency of groundscope).

Top panel: the total loss per optimizer step (thin) and its exponential moving average (thick), on a log
scale because detection losses fall by orders of magnitude. Middle panel: the last decoder layer's three
terms (focal token loss, L1, GIoU; moving averages, log scale). Bottom panel, when the log holds evaluations:
COCO AP and AP50 against the step.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

GRID = (225, 225, 225)
SERIES = {"loss": (31, 119, 180), "cls": (214, 39, 40), "bbox": (44, 160, 44), "giou": (148, 103, 189),
          "AP": (255, 127, 14), "AP50": (31, 119, 180), "token_acc": (214, 39, 40), "val_loss": (255, 127, 14),
          "val_token_acc": (44, 160, 44), "mask_iou": (214, 39, 40), "val_iou_box": (255, 127, 14),
          "val_iou_click": (44, 160, 44)}


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def _panel(draw, font, box, steps_range, series, log_scale, title, y_range=None, x_ticks=False):
    """One panel: `series` is [(label, steps, values, colour, width)]; `x_ticks` labels 5 steps under it."""
    x0, y0, x1, y1 = box
    s_min, s_max = steps_range
    vals = [v for _, _, vs, _, _ in series for v in vs if v is not None and math.isfinite(v) and (v > 0 or not log_scale)]
    if not vals:
        return
    if y_range is not None:
        lo, hi = y_range
    elif log_scale:
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
    else:
        lo, hi = min(vals), max(vals)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5

    def px(step: float, v: float) -> tuple[float, float]:
        y = math.log10(v) if log_scale else v
        fx = (step - s_min) / max(s_max - s_min, 1)
        fy = (y - lo) / (hi - lo)
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    for i in range(5):
        gy = y1 - i / 4 * (y1 - y0)
        value = lo + i / 4 * (hi - lo)
        label = f"{10 ** value:.3g}" if log_scale else f"{value:.2f}"
        draw.line([(x0, gy), (x1, gy)], fill=GRID)
        draw.text((4, gy - 6), label, fill="black", font=font)
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, y0 - 14), title, fill="black", font=font)
    if x_ticks:
        for i in range(5):
            step = s_min + i / 4 * (s_max - s_min)
            x = x0 + i / 4 * (x1 - x0)
            label = f"{step:.0f}"
            draw.line([(x, y1), (x, y1 + 3)], fill="black")
            draw.text((x - 3 * len(label), y1 + 4), label, fill="black", font=font)
    legend_x = x1 - 10
    for label, steps, values, colour, width in series:
        pts = [px(s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v) and (v > 0 or not log_scale)]
        if len(pts) == 1:
            x, y = pts[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        elif pts:
            draw.line(pts, fill=colour, width=width)
        if label:
            legend_x -= 8 * len(label) + 24
            draw.line([(legend_x, y0 + 8), (legend_x + 14, y0 + 8)], fill=colour, width=3)
            draw.text((legend_x + 17, y0 + 2), label, fill="black", font=font)


def draw_loss_curve(history: list[dict], path: str | Path, size: tuple[int, int] = (800, 640),
                    loss_title: str = "total loss (all layers)",
                    parts: tuple[str, ...] = ("cls", "bbox", "giou"), parts_title: str = "last decoder layer (EMA)",
                    parts_log: bool = True, parts_range: tuple[float, float] | None = None,
                    eval_keys: tuple[str, ...] = ("AP", "AP50"), eval_title: str = "validation",
                    eval_log: bool = False, eval_range: tuple[float, float] | None = (0.0, 1.0)) -> Path | None:
    """Draw the curves of the log records in `history` ("train" and "eval" lines) to `path`; None if empty.

    The middle panel shows the moving averages of the train records' `parts` keys, the bottom one (when there
    are evaluations) the eval records' `eval_keys`; the defaults are the detector's, DAM passes its own."""
    train = [r for r in history if r.get("type") == "train"]
    evals = [r for r in history if r.get("type") == "eval"]
    if not train:
        return None
    width, height = size
    panels = 1 + bool(parts) + bool(evals)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    steps = [r["step"] for r in train]
    s_range = (min(steps[0], 0), max(steps[-1], 1))
    left, right, top, gap, bottom = 60, 16, 24, 34, 30
    ph = (height - top - bottom - gap * (panels - 1)) / panels
    boxes = [(left, top + k * (ph + gap), width - right, top + k * (ph + gap) + ph) for k in range(panels)]

    total = [r.get("loss") for r in train]
    _panel(draw, font, boxes[0], s_range,
           [("", steps, total, (170, 200, 230), 1), ("loss (EMA)", steps, ema(total), SERIES["loss"], 2)],
           True, loss_title)
    comp = []
    for key in parts:
        vals = [r.get(key) for r in train]
        if any(v is not None for v in vals):
            comp.append((key, steps, ema([v if v is not None else float("nan") for v in vals]), SERIES[key], 2))
    if parts:
        _panel(draw, font, boxes[1], s_range, comp, parts_log, parts_title, y_range=parts_range)
    if evals:
        es = [r["step"] for r in evals]
        _panel(draw, font, boxes[-1], s_range,
               [(k, es, [r.get(k) for r in evals], SERIES[k], 2) for k in eval_keys],
               eval_log, eval_title, y_range=eval_range)
    draw.text(((width - left) / 2, height - 18), f"optimizer step ({steps[0]}..{steps[-1]})", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def draw_learning_curve(history: list[dict], path: str | Path, size: tuple[int, int] = (640, 360),
                        title: str = "validation") -> Path | None:
    """Validation AP and AP50 against the optimizer step (the "eval" records of a training log); None if
    the log holds no evaluation. The model card's learning curve."""
    evals = [r for r in history if r.get("type") == "eval"]
    if not evals:
        return None
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    steps = [r["step"] for r in evals]
    box = (60, 28, width - 16, height - 34)
    _panel(draw, font, box, (0, max(steps[-1], 1)),
           [(k, steps, [r.get(k) for r in evals], SERIES[k], 2) for k in ("AP", "AP50")], False, title,
           y_range=(0.0, 1.0), x_ticks=True)
    for s, r in zip(steps, evals):  # the measured points, so a reader sees where the line is interpolated
        for k in ("AP", "AP50"):
            v = r.get(k)
            if v is not None and math.isfinite(v):
                x = box[0] + s / max(steps[-1], 1) * (box[2] - box[0])
                y = box[3] - v * (box[3] - box[1])
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=SERIES[k])
    draw.text(((width - 60) / 2, height - 18), "optimizer step", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
