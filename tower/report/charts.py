"""Small PNG charts drawn with Pillow: lines over days, bars, stacked bars.

The report links these from its markdown. They are deliberately plain (axes, a few
gridlines, a legend) so they stay readable at a glance and cost milliseconds to draw.
Every function returns PNG bytes; writing them is the caller's business.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

CHART_SIZE = (800, 400)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 160, 40, 50
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f")
BACKGROUND, AXIS, GRID, TEXT = "white", "#333333", "#dddddd", "#111111"
GRIDLINES = 4


class _Canvas:
    """A chart area with a y scale from 0 to ``top``."""

    def __init__(self, title: str, top: float, y_format: str = "{:g}") -> None:
        self.image = Image.new("RGB", CHART_SIZE, BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default()
        self.top = top if top > 0 else 1.0
        width, height = CHART_SIZE
        self.x0, self.x1 = MARGIN_LEFT, width - MARGIN_RIGHT
        self.y0, self.y1 = height - MARGIN_BOTTOM, MARGIN_TOP
        self.draw.text((MARGIN_LEFT, 12), title, fill=TEXT, font=self.font)
        for i in range(GRIDLINES + 1):
            value = self.top * i / GRIDLINES
            y = self.y(value)
            self.draw.line((self.x0, y, self.x1, y), fill=GRID)
            self.draw.text((8, y - 6), y_format.format(value), fill=TEXT, font=self.font)
        self.draw.line((self.x0, self.y0, self.x1, self.y0), fill=AXIS)
        self.draw.line((self.x0, self.y0, self.x0, self.y1), fill=AXIS)

    def y(self, value: float) -> float:
        return self.y0 - (self.y0 - self.y1) * min(max(value / self.top, 0.0), 1.0)

    def slot(self, i: int, count: int) -> tuple[float, float]:
        """Left and right x of the ``i``-th of ``count`` equal slots."""
        width = (self.x1 - self.x0) / max(count, 1)
        return self.x0 + i * width, self.x0 + (i + 1) * width

    def x_label(self, i: int, count: int, text: str) -> None:
        left, right = self.slot(i, count)
        self.draw.text(((left + right) / 2 - 3 * len(text), self.y0 + 8), text, fill=TEXT,
                       font=self.font)

    def legend(self, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            y = MARGIN_TOP + 18 * i
            self.draw.rectangle((self.x1 + 15, y, self.x1 + 27, y + 12), fill=PALETTE[i % 8])
            self.draw.text((self.x1 + 33, y), name, fill=TEXT, font=self.font)

    def png(self) -> bytes:
        out = io.BytesIO()
        self.image.save(out, format="PNG")
        return out.getvalue()


NICE_STEPS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def _nice_top(values: Sequence[float]) -> float:
    """A round axis top above the largest value, so every gridline has a round label."""
    top = max(values, default=0.0)
    if top <= 0:
        return 1.0
    raw_step = top * 1.05 / GRIDLINES
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in NICE_STEPS if m * magnitude >= raw_step)
    return step * GRIDLINES


def line_chart(title: str, days: Sequence[str],
               series: Mapping[str, Mapping[str, float]]) -> bytes:
    """One line per series over ``days``; ``series[name][day]`` may be missing (a gap)."""
    canvas = _Canvas(title, _nice_top([v for s in series.values() for v in s.values()]))
    step = max(1, len(days) // 7)
    for i, day in enumerate(days):
        if i % step == 0:
            canvas.x_label(i, len(days), day[5:])
    for n, points in enumerate(series.values()):
        colour = PALETTE[n % len(PALETTE)]
        xy = []
        for i, day in enumerate(days):
            if day in points:
                left, right = canvas.slot(i, len(days))
                xy.append(((left + right) / 2, canvas.y(points[day])))
        if len(xy) > 1:
            canvas.draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            canvas.draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    canvas.legend(list(series))
    return canvas.png()


def bar_chart(title: str, values: Mapping[str, float], top: float | None = None,
              y_format: str = "{:g}") -> bytes:
    """One bar per label, scaled to ``top`` (default: the largest value)."""
    canvas = _Canvas(title, top or _nice_top(list(values.values())), y_format)
    for i, (label, value) in enumerate(values.items()):
        left, right = canvas.slot(i, len(values))
        pad = (right - left) * 0.2
        canvas.draw.rectangle((left + pad, canvas.y(value), right - pad, canvas.y0),
                              fill=PALETTE[i % len(PALETTE)])
        canvas.x_label(i, len(values), label)
    return canvas.png()


def stacked_bar_chart(title: str, stacks: Mapping[str, Mapping[str, float]],
                      parts: Sequence[str]) -> bytes:
    """One bar per label, split into ``parts`` stacked bottom to top."""
    canvas = _Canvas(title, _nice_top([sum(s.get(p) or 0.0 for p in parts)
                                       for s in stacks.values()]))
    for i, (label, stack) in enumerate(stacks.items()):
        left, right = canvas.slot(i, len(stacks))
        pad = (right - left) * 0.2
        base = 0.0
        for n, part in enumerate(parts):
            value = stack.get(part) or 0.0
            if value > 0:
                canvas.draw.rectangle((left + pad, canvas.y(base + value), right - pad,
                                       canvas.y(base)), fill=PALETTE[n % len(PALETTE)])
            base += value
        canvas.x_label(i, len(stacks), label)
    canvas.legend(parts)
    return canvas.png()
