"""Bar and line charts as inline SVG, drawn on the server.

Why not a JavaScript chart library: the dashboard's charts are a few dozen points each, the page
must work with nothing fetched at run time, and an SVG made here is testable without a browser
(count the bars) and readable by one (every bar and point has a ``<title>`` tooltip). Labels and
names are escaped; numbers are formatted here. Each chart is one ``<svg>`` plus an HTML legend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

# Colour-blind-safe (Okabe-Ito), then greys.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999")

WIDTH = 640
HEIGHT = 220
LEFT = 56  # room for the y-axis labels
RIGHT = 12
TOP = 12
BOTTOM = 36  # room for the x-axis labels
MAX_X_LABELS = 7


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]


def _nice_ceiling(value: float) -> float:
    """The top of an axis with four round ticks (1, 2, 2.5 or 5 x 10^n each) reaching ``value``."""
    if value <= 0:
        return 4.0
    tick = value / 4
    magnitude = 10 ** math.floor(math.log10(tick))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= tick:
            return 4 * step * magnitude
    return 40 * magnitude


def number_format(value: float, unit: str = "") -> str:
    """Compact numbers for axes and tooltips: 1.2k, 3.4M, 0.25."""
    magnitude = abs(value)
    if magnitude >= 1_000_000:
        text = f"{value / 1_000_000:.1f}M"
    elif magnitude >= 10_000:
        text = f"{value / 1000:.0f}k"
    elif magnitude >= 1000:
        text = f"{value / 1000:.1f}k"
    elif magnitude >= 10 or value == int(value):
        text = f"{value:.0f}"
    else:
        text = f"{value:.2f}"
    return f"{text}{unit}"


def _axes(*, labels: Sequence[str], top_value: float, unit: str) -> list[str]:
    parts: list[str] = []
    plot_height = HEIGHT - TOP - BOTTOM
    for tick in range(5):
        value = top_value * tick / 4
        y = TOP + plot_height - plot_height * tick / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
            f"{escape(number_format(value, unit))}</text>"
        )
    step = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    for index in range(0, len(labels), step):
        x = LEFT + slot * (index + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" fill="#555">'
            f"{escape(labels[index])}</text>"
        )
    return parts


def _svg(*, title: str, body: list[str], height: int = HEIGHT) -> SafeString:
    return mark_safe(  # noqa: S308 - every interpolated text above went through escape()
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'width="100%" preserveAspectRatio="xMidYMid meet" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _legend(series: Sequence[Series]) -> SafeString:
    if len(series) < 2:
        return SafeString("")
    items = format_html_join(
        "",
        '<li><span class="swatch" style="background:{}"></span>{}</li>',
        ((PALETTE[index % len(PALETTE)], item.name) for index, item in enumerate(series)),
    )
    return format_html('<ul class="chart-legend">{}</ul>', items)


def chart_bars(*, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "") -> SafeString:
    """Vertical bars, one slot per label, the series stacked in each slot."""
    totals = [sum(item.values[index] or 0 for item in series) for index in range(len(labels))]
    top_value = _nice_ceiling(max(totals, default=0))
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    bar_width = max(1.0, slot * 0.7)
    body = _axes(labels=labels, top_value=top_value, unit=unit)
    for index, label in enumerate(labels):
        base: float = TOP + plot_height
        x = LEFT + slot * index + (slot - bar_width) / 2
        for number, item in enumerate(series):
            value = item.values[index] or 0
            if value <= 0:
                continue
            height = plot_height * value / top_value
            base -= height
            tooltip = f"{label} · {item.name}: {number_format(value, unit)}"
            body.append(
                f'<rect class="bar" x="{x:.1f}" y="{base:.1f}" width="{bar_width:.1f}" height="{height:.1f}" '
                f'fill="{PALETTE[number % len(PALETTE)]}"><title>{escape(tooltip)}</title></rect>'
            )
    return _svg(title=title, body=body) + _legend(series)


def chart_lines(*, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "") -> SafeString:
    """One line per series over the labels; a missing value (None) breaks its line."""
    values = [value for item in series for value in item.values if value is not None]
    top_value = _nice_ceiling(max(values, default=0))
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    body = _axes(labels=labels, top_value=top_value, unit=unit)
    for number, item in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        commands: list[str] = []
        pen_down = False
        for index, value in enumerate(item.values):
            if value is None:
                pen_down = False
                continue
            x = LEFT + slot * (index + 0.5)
            y = TOP + plot_height - plot_height * value / top_value
            commands.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
            pen_down = True
            tooltip = f"{labels[index]} · {item.name}: {number_format(value, unit)}"
            body.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(tooltip)}</title></circle>"
            )
        if commands:
            body.append(f'<path class="line" d="{" ".join(commands)}" fill="none" stroke="{colour}" stroke-width="2"/>')
    return _svg(title=title, body=body) + _legend(series)


def chart_ranking(*, title: str, labels: Sequence[str], values: Sequence[float], unit: str = "") -> SafeString:
    """Horizontal bars, largest first, each labelled: for "top N" lists with long names."""
    row = 22
    label_width = 260
    height = TOP + row * max(1, len(labels)) + 8
    top_value = _nice_ceiling(max(values, default=0))
    plot_width = WIDTH - label_width - RIGHT - 48
    body: list[str] = []
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = TOP + row * index
        width = max(1.0, plot_width * value / top_value)
        short = label if len(label) <= 40 else label[:39] + "…"
        body.append(
            f'<text x="{label_width - 8}" y="{y + 15}" text-anchor="end" font-size="12" fill="#333">'
            f"{escape(short)}</text>"
            f'<rect class="bar" x="{label_width}" y="{y + 3}" width="{width:.1f}" height="{row - 6}" '
            f'fill="{PALETTE[0]}"><title>{escape(f"{label}: {number_format(value, unit)}")}</title></rect>'
            f'<text x="{label_width + width + 6:.1f}" y="{y + 15}" font-size="12" fill="#333">'
            f"{escape(number_format(value, unit))}</text>"
        )
    return _svg(title=title, body=body, height=height)
