"""Charts as inline SVG rendered on the server: no script, no network, readable by screen readers.

Pure functions from numbers to markup; every label is escaped. Colours come from CSS classes (the console's
stylesheet), so the strict Content-Security-Policy needs no inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k"
    if abs(value) >= 10 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.2f}"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above value (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def _empty(width: int, height: int, label: str, message: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}: {escape(message)}">'
        f'<rect class="chart-bg" x="0" y="0" width="{width}" height="{height}" rx="6"/>'
        f'<text class="chart-empty" x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">{escape(message)}'
        f"</text></svg>")


def _open(width: int, height: int, label: str) -> list[str]:
    """The parts a chart starts with: its <svg> element named by `label` (aria-label and <title>)."""
    return [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">',
            f"<title>{escape(label)}</title>"]


def _value_axis(parts: list[str], *, left: int, right: int, top: int, plot_h: float, top_value: float) -> None:
    """Grid lines with their values at 0, half and the top of a vertical value axis."""
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line class="chart-grid" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="chart-axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{_fmt(top_value * frac)}</text>")


def bar_chart(points: Sequence[tuple[str, float]], *, label: str, unit: str = "", width: int = 640,
              height: int = 200, empty: str = "No data yet") -> Markup:
    """Vertical bars, one per (label, value), oldest first; a <title> on each bar gives its exact value."""
    if not points or all(v <= 0 for _, v in points):
        return _empty(width, height, label, empty)
    left, bottom, top = 44, 24, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    top_value = _nice_max(max(v for _, v in points))
    slot = plot_w / len(points)
    bar_w = max(2.0, slot * 0.7)
    parts = _open(width, height, label)
    _value_axis(parts, left=left, right=width - 8, top=top, plot_h=plot_h, top_value=top_value)
    every = max(1, math.ceil(len(points) / 8))
    for i, (name, value) in enumerate(points):
        h = plot_h * max(value, 0) / top_value
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(f'<rect class="chart-bar" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                     f'height="{h:.1f}" rx="2"><title>{escape(name)}: {_fmt(value)}{escape(unit)}</title></rect>')
        if (len(points) - 1 - i) % every == 0:  # the newest point always has its label
            parts.append(f'<text class="chart-axis" x="{x + bar_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                         f"{escape(name)}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def hbar_chart(items: Sequence[tuple[str, float]], *, label: str, unit: str = "", width: int = 640,
               empty: str = "No data yet") -> Markup:
    """Horizontal bars, one row per (label, value), e.g. credits per model."""
    row_h = 28
    height = max(row_h * len(items) + 8, 60)
    if not items or all(v <= 0 for _, v in items):
        return _empty(width, 60, label, empty)
    name_w = 180
    plot_w = width - name_w - 70
    top_value = max(v for _, v in items) or 1
    parts = _open(width, height, label)
    for i, (name, value) in enumerate(items):
        y = 4 + i * row_h
        w = max(2.0, plot_w * max(value, 0) / top_value)
        short = name if len(name) <= 26 else name[:25] + "…"
        parts.append(f'<text class="chart-label" x="{name_w - 8}" y="{y + 18}" text-anchor="end">{escape(short)}</text>')
        parts.append(f'<rect class="chart-bar" x="{name_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 10}" rx="3">'
                     f"<title>{escape(name)}: {_fmt(value)}{escape(unit)}</title></rect>")
        parts.append(f'<text class="chart-value" x="{name_w + w + 6:.1f}" y="{y + 18}">{_fmt(value)}{escape(unit)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(values: Sequence[float | None], *, label: str, unit: str = "", x_labels: tuple[str, str] = ("", ""),
               width: int = 640, height: int = 180, empty: str = "No data yet") -> Markup:
    """A line over evenly spaced points (None: no data at that point, a gap); x_labels name both ends."""
    known = [v for v in values if v is not None]
    if not known or all(v <= 0 for v in known):
        return _empty(width, height, label, empty)
    left, bottom, top = 44, 22, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    top_value = _nice_max(max(known))
    step = plot_w / max(len(values) - 1, 1)
    parts = _open(width, height, label)
    _value_axis(parts, left=left, right=width - 8, top=top, plot_h=plot_h, top_value=top_value)
    segments: list[list[str]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        x, y = left + i * step, top + plot_h * (1 - v / top_value)
        segments[-1].append(f"{x:.1f},{y:.1f}")
    for seg in segments:
        if len(seg) == 1:
            x, y = seg[0].split(",")
            parts.append(f'<circle class="chart-dot" cx="{x}" cy="{y}" r="2.5"/>')
        elif seg:
            parts.append(f'<polyline class="chart-line" fill="none" points="{" ".join(seg)}"/>')
    parts.append(f'<text class="chart-axis" x="{left}" y="{height - 5}">{escape(x_labels[0])}</text>')
    parts.append(f'<text class="chart-axis" x="{width - 8}" y="{height - 5}" text-anchor="end">'
                 f"{escape(x_labels[1])}</text>")
    last = known[-1]
    parts.append(f"<desc>latest {_fmt(last)}{escape(unit)}</desc></svg>")
    return Markup("".join(parts))
