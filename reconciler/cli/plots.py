"""Plots as inline SVG: what ``edgectl report`` draws, in a page that needs no script, font or network.

Pure (no I/O). Two shapes cover the report: lines over time (rollout progress, drift over time) and grouped bars
(latency per version and profile, drift per figure against its threshold). Each plot is an ``<svg class="plot">``
whose ``data-series`` and ``data-points`` say what it holds, so a test (or a person's script) can check a page
without reading pixels. Text is escaped; numbers are formatted, never trusted as markup.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 64
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")


def lines(title: str, series: Mapping[str, Sequence[tuple[float, float]]], y_label: str,
          marks: Sequence[tuple[float, str]] = (), time_axis: bool = True) -> str:  # fmt: skip
    """A line per series of (x, y) points; ``marks``: vertical lines at x with a label (decisions)."""
    points = [p for values in series.values() for p in values]
    if not points:
        return _empty(title)
    xs, ys = [p[0] for p in points] + [m[0] for m in marks], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = _nice(max(ys)) if max(ys) > 0 else 1.0
    sx = lambda x: LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)  # noqa: E731
    sy = lambda y: HEIGHT - BOTTOM - y / y1 * (HEIGHT - TOP - BOTTOM)  # noqa: E731
    parts = [_frame(title, y_label, y1, sy)]
    for at, label in marks:
        x = sx(at)
        parts.append(f'<line class="mark" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" '
                     f'stroke="#999" stroke-dasharray="3,3"><title>{_text(label)}</title></line>')  # fmt: skip
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(values))
        parts.append(f'<polyline class="series" data-name="{_text(name)}" fill="none" stroke="{color}" '
                     f'stroke-width="2" points="{path}"/>')  # fmt: skip
        parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in values)
    parts.append(_axis_labels(x0, x1, sx, time_axis))
    parts.append(_legend(list(series)))
    return _svg(title, parts, len(series), len(points))


def bars(title: str, groups: Mapping[str, Mapping[str, float]], y_label: str,
         limits: Mapping[str, float] | None = None) -> str:  # fmt: skip
    """Grouped bars: per group (x), one bar per series; ``limits``: a short line per group (a threshold)."""
    names = sorted({name for values in groups.values() for name in values})
    values = [v for group in groups.values() for v in group.values()] + list((limits or {}).values())
    if not values:
        return _empty(title)
    y1 = _nice(max(values)) if max(values) > 0 else 1.0
    sy = lambda y: HEIGHT - BOTTOM - y / y1 * (HEIGHT - TOP - BOTTOM)  # noqa: E731
    parts = [_frame(title, y_label, y1, sy)]
    slot = (WIDTH - LEFT - RIGHT) / max(len(groups), 1)
    width = slot * 0.8 / max(len(names), 1)
    for g, (group, members) in enumerate(groups.items()):
        left = LEFT + g * slot + slot * 0.1
        for s, name in enumerate(names):
            if name not in members:
                continue
            value = members[name]
            parts.append(f'<rect class="bar" data-name="{_text(name)}" x="{left + s * width:.1f}" '
                         f'y="{sy(value):.1f}" width="{max(width - 1, 1):.1f}" height="{sy(0) - sy(value):.1f}" '
                         f'fill="{COLORS[s % len(COLORS)]}"><title>{_text(group)} {_text(name)}: '
                         f'{value:.4g}</title></rect>')  # fmt: skip
        if limits and group in limits:
            y = sy(limits[group])
            parts.append(f'<line class="limit" x1="{left:.1f}" y1="{y:.1f}" x2="{left + slot * 0.8:.1f}" '
                         f'y2="{y:.1f}" stroke="#000" stroke-width="2"><title>threshold '
                         f'{limits[group]:.4g}</title></line>')  # fmt: skip
        x = LEFT + g * slot + slot / 2
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="10" text-anchor="end" '
                     f'transform="rotate(-30 {x:.1f} {HEIGHT - BOTTOM + 14})">{_text(group)}</text>')  # fmt: skip
    if len(names) > 1:
        parts.append(_legend(names))
    return _svg(title, parts, len(names), sum(len(m) for m in groups.values()))


def _svg(title: str, parts: list[str], series: int, points: int) -> str:
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{_text(title)}" data-series="{series}" '
            f'data-points="{points}">' + "".join(parts) + "</svg>")  # fmt: skip


def _empty(title: str) -> str:
    return (f'<svg class="plot empty" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} 40" width="{WIDTH}" '
            f'height="40" data-series="0" data-points="0"><text x="8" y="24" font-size="13">{_text(title)}: '
            "nothing recorded yet</text></svg>")  # fmt: skip


def _frame(title: str, y_label: str, y1: float, sy) -> str:
    ticks = "".join(
        f'<line x1="{LEFT}" y1="{sy(v):.1f}" x2="{WIDTH - RIGHT}" y2="{sy(v):.1f}" stroke="#eee"/>'
        f'<text x="{LEFT - 6}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.4g}</text>'
        for v in (y1 * i / 4 for i in range(5))
    )
    return (f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{_text(title)}</text>{ticks}'
            f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>'
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>'
            f'<text x="12" y="{(TOP + HEIGHT - BOTTOM) / 2:.0f}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {(TOP + HEIGHT - BOTTOM) / 2:.0f})">{_text(y_label)}</text>')  # fmt: skip


def _axis_labels(x0: float, x1: float, sx, time_axis: bool) -> str:
    labels = []
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        text = datetime.fromtimestamp(x, UTC).strftime("%m-%d %H:%M") if time_axis else f"{x:.4g}"
        labels.append(f'<text x="{sx(x):.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="10" '
                      f'text-anchor="middle">{text}</text>')  # fmt: skip
    return "".join(labels)


def _legend(names: list[str]) -> str:
    items = []
    for i, name in enumerate(names[: len(COLORS)]):
        x = LEFT + (i % 4) * 160
        y = HEIGHT - 24 + (i // 4) * 12
        items.append(f'<rect x="{x}" y="{y - 8}" width="10" height="10" fill="{COLORS[i]}"/>'
                     f'<text x="{x + 14}" y="{y + 1}" font-size="10">{_text(name[:28])}</text>')  # fmt: skip
    return "".join(items)


def _nice(value: float) -> float:
    """The next 1, 2 or 5 times a power of ten at or above ``value`` (a readable top of the axis)."""
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)
