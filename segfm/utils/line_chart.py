"""A small line chart drawn with Pillow (segfm does not depend on matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from segfm.utils.files import atomic_path

#: distinct line colours (Okabe-Ito), in order of the series
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

Series = Mapping[str, Sequence[tuple[float, float]]]


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 2)]


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: Series,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """One chart: axes, ticks, a line with dots per series and its legend, in ``box``."""
    left, top, right, bottom = box
    x0, y0, x1, y1 = left + 56, top + 28, right - 150, bottom - 40
    draw.text((left + 8, top + 6), title, fill="black", font=font)
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    if not points:
        draw.text((x0, (y0 + y1) // 2), "no values yet", fill="grey", font=font)
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xlo, xhi = min(xs), max(max(xs), min(xs) + 1)
    yticks = _ticks(min(ys), max(ys))
    ylo, yhi = yticks[0], yticks[-1]

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            x0 + (x - xlo) / (xhi - xlo) * (x1 - x0),
            y1 - (y - ylo) / (yhi - ylo) * (y1 - y0),
        )

    draw.rectangle((x0, y0, x1, y1), outline="black")
    for y in yticks:
        py = at(xlo, y)[1]
        draw.line((x0, py, x1, py), fill="#e6e6e6")
        draw.text((left + 4, py - 6), f"{y:.3g}", fill="black", font=font)
    for x in _ticks(xlo, xhi, 6):
        if xlo <= x <= xhi:
            px = at(x, ylo)[0]
            draw.text((px - 6, y1 + 4), f"{x:g}", fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 16, y1 + 20), "epoch", fill="black", font=font)
    legend_y = y0 + 4
    for (name, values), colour in zip(series.items(), COLOURS * 4, strict=False):
        finite = [at(x, y) for x, y in values if math.isfinite(y)]
        if len(finite) > 1:
            draw.line(finite, fill=colour, width=2)
        for px, py in finite:
            draw.ellipse((px - 2.5, py - 2.5, px + 2.5, py + 2.5), fill=colour)
        draw.line((x1 + 10, legend_y + 6, x1 + 30, legend_y + 6), fill=colour, width=3)
        draw.text((x1 + 36, legend_y), name, fill="black", font=font)
        legend_y += 16


def write_line_charts(path: str | Path, title: str, panels: Mapping[str, Series]) -> Path:
    """Write side-by-side line charts as one PNG (atomically).

    Args:
        path: PNG file to write.
        title: Title above the charts.
        panels: Per chart title its series: per name a list of ``(x, y)`` points.

    Returns:
        The path written.
    """
    width, height = 560 * max(1, len(panels)), 460
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((12, 8), title, fill="black", font=font)
    for i, (name, series) in enumerate(panels.items()):
        _panel(draw, (i * 560, 28, (i + 1) * 560, height), name, series, font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
