"""The loss-curve PNG written at the end of training (Pillow only; no plotting library needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

RAW, SMOOTH, SKIPPED = (170, 170, 170), (20, 80, 200), (220, 0, 0)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the raw curve of a small-batch run is mostly noise)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss_curve(history: Sequence[tuple[int, float]], path: str | Path, skipped: Sequence[int] = (),
                    size: tuple[int, int] = (800, 400)) -> Path | None:
    """Draw loss over steps (raw in grey, smoothed in blue, skipped steps as red ticks), with axis
    labels and a legend, into `path`.

    Returns the path, or None when there is nothing finite to draw.
    """
    from PIL import Image, ImageDraw

    points = [(int(s), float(v)) for s, v in history if math.isfinite(v)]
    if not points:
        return None
    width, height = size
    left, right, top, bottom = 70, 20, 20, 40
    steps = [s for s, _ in points]
    losses = [v for _, v in points]
    lo, hi = min(losses), max(losses)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = min(steps), max(steps)
    s1 = s1 if s1 > s0 else s0 + 1

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (step - s0) / (s1 - s0) * (width - left - right)
        y = top + (hi - value) / (hi - lo) * (height - top - bottom)
        return x, y

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        value = lo + frac * (hi - lo)
        _, y = xy(s0, value)
        draw.text((4, y - 6), f"{value:.4g}", fill="black")
    draw.text((left, height - bottom + 8), f"{s0}", fill="black")
    draw.text((width - right - 40, height - bottom + 8), f"{s1}", fill="black")
    draw.text((width // 2 - 40, height - bottom + 22), "optimizer step", fill="black")  # x-axis label
    draw.text((4, 4), "loss", fill="black")  # y-axis label, above the value ticks
    window = max(1, len(points) // 20)
    if len(points) > 1:
        draw.line([xy(s, v) for s, v in points], fill=RAW, width=1)
        draw.line([xy(s, v) for s, v in zip(steps, smooth(losses, window))], fill=SMOOTH, width=2)
    else:
        x, y = xy(*points[0])
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=SMOOTH)
    marked = [step for step in skipped if s0 <= step <= s1]
    for step in marked:
        x, _ = xy(step, lo)
        draw.line([(x, height - bottom - 8), (x, height - bottom)], fill=SKIPPED, width=2)
    legend = [(RAW, "loss per step"), (SMOOTH, f"mean of {window} steps")]
    legend += [(SKIPPED, "skipped (non-finite)")] if marked else []
    for i, (colour, label) in enumerate(legend):
        y = top + 8 + 14 * i
        x = width - right - 170
        draw.line([(x, y + 5), (x + 20, y + 5)], fill=colour, width=3)
        draw.text((x + 26, y), label, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
