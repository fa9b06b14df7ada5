"""The build report (``edgectl build --report DIR``): every candidate of every build, as one HTML page.

Pure (no I/O): results in, a page out. Self-contained (inline CSS and SVG, no scripts, no CDN), so it opens
from a CI artifact as it is. Per build: a table of candidates (size, latency, the task's metric and its change
against the source, peak memory, verdict) and a plot of size against the task's metric, the Pareto front
drawn as a line through its points.
"""

from __future__ import annotations

from html import escape

from .metrics import headline
from .pipeline import UNPRUNED, ProfileBuild, Variant

WIDTH, HEIGHT, MARGIN = 520, 300, 48
STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
.selected{font-weight:bold}.fail{color:#b00}.pareto{color:#06c}h2{margin-top:2em}svg{background:#fafafa}"""


def render_report(results: list[ProfileBuild]) -> str:
    sections = [_section(result) for result in results]
    body = "\n".join(sections) or "<p>Nothing was built for this scope.</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Build report</title><style>{STYLE}</style>"
            f"</head><body><h1>Build report</h1>{body}</body></html>\n")  # fmt: skip


def _section(result: ProfileBuild) -> str:
    title = escape(f"{result.model} {result.version} for {result.profile}")
    reference = result.reference_metrics or {"accuracy": result.reference_accuracy or 0.0}
    rows = []
    for variant in result.variants:
        m = variant.measurement
        if m is None:
            rows.append(f"<tr class='fail'><td>{escape(variant.name)}</td><td colspan='6'>"
                        f"{escape(variant.error or 'not measured')}</td></tr>")  # fmt: skip
            continue
        figure, delta = headline(m.metrics or {"accuracy": m.accuracy or 0.0}, reference)
        verdict = _verdict(variant)
        css = "selected" if variant.selected else ("fail" if variant.failures or variant.error else "")
        latency = "n/m" if m.latency_p95_ms is None else f"{m.latency_p95_ms:.3f}"
        mark = " <span class=pareto>◆</span>" if variant.pareto else ""
        rows.append(f"<tr class='{css}'><td>{escape(variant.name)}{mark}</td><td>{m.size_bytes}</td><td>{latency}</td>"
                    f"<td>{escape(figure)}</td><td>{escape(delta)}</td><td>{m.peak_memory_bytes / 2**20:.1f}</td>"
                    f"<td>{escape(verdict)}</td></tr>")  # fmt: skip
    table = ("<table><tr><th>variant (◆ Pareto front)</th><th>size (bytes)</th><th>p95 ms</th><th>metric</th>"
             "<th>vs source</th><th>memory MiB</th><th>result</th></tr>" + "".join(rows) + "</table>")  # fmt: skip
    error = f"<p class='fail'>{escape(result.error)}</p>" if result.error else ""
    return f"<h2>{title}</h2>{error}{_sources(result)}{table}{_plot(result.variants)}"


def _sources(result: ProfileBuild) -> str:
    """Where each figure comes from: the build machine measures, the emulated target only checks outputs (its time
    is not a device's), and the lab devices benchmark after publication."""
    host, target = result.measured_on.get("host"), result.measured_on.get("target")
    lines = []
    if host:
        lines.append(f"build machine: {host.get('machine')}, {host.get('cpus')} cpus (size, latency, memory, metric)")
    if target and target.get("status") == "checked":
        figures = (target.get("variants") or {}).get(result.selected.name if result.selected else "", {})
        difference = figures.get("maxDifference")
        shown = f"outputs within {difference:.3g} of the build machine's" if difference is not None else "checked"
        lines.append(f"emulated {target.get('isa')} {target.get('cpu')} ({target.get('runtime')} "
                     f"{target.get('version')}): {shown}; emulated time is not a device figure")  # fmt: skip
    elif target:
        lines.append(f"target check not run: {target.get('reason')}")
    if result.artifact is not None:
        lines.append(f"lab devices: benchmarked before a rollout's first step; edgectl get benchmarks "
                     f"{result.artifact.id[:12]}")  # fmt: skip
    return "<ul class=sources>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>" if lines else ""


def _verdict(variant: Variant) -> str:
    if variant.selected:
        return "selected"
    if variant.name == UNPRUNED:
        return "baseline: the source without structured pruning (never shipped)"
    if variant.failures:
        return "; ".join(str(f) for f in variant.failures)
    if not variant.eligible:
        return "not a precision of the profile"
    return "pass"


def _quality(variant: Variant) -> tuple[str, float] | None:
    m = variant.measurement
    if m is None:
        return None
    metrics = m.metrics or {"accuracy": m.accuracy or 0.0}
    for name in ("mae", "auroc", "accuracy"):
        if name in metrics:
            return name, metrics[name]
    return None


def _plot(variants: list[Variant]) -> str:
    """Size (x) against the task's metric (y), every measured candidate a dot, the Pareto front a line."""
    points = [(v, v.measurement.size_bytes, q[1], q[0]) for v in variants
              if v.measurement is not None and (q := _quality(v)) is not None]  # fmt: skip
    if not points:
        return ""
    sizes, values = [p[1] for p in points], [p[2] for p in points]

    def x(size: float) -> float:
        low, high = min(sizes), max(sizes)
        return MARGIN + (size - low) / ((high - low) or 1) * (WIDTH - 2 * MARGIN)

    def y(value: float) -> float:
        low, high = min(values), max(values)
        return HEIGHT - MARGIN - (value - low) / ((high - low) or 1) * (HEIGHT - 2 * MARGIN)

    marks = []
    for variant, size, value, _ in points:
        colour = "#06c" if variant.pareto else ("#b00" if variant.failures else "#888")
        name = escape(variant.name)
        marks.append(f"<circle cx='{x(size):.1f}' cy='{y(value):.1f}' r='{6 if variant.selected else 4}' "
                     f"fill='{colour}'><title>{name}: {size} bytes, {value:.4g}</title></circle>"
                     f"<text x='{x(size) + 7:.1f}' y='{y(value) - 6:.1f}' font-size='11'>{name}</text>")  # fmt: skip
    front = sorted((p for p in points if p[0].pareto), key=lambda p: p[1])
    line = " ".join(f"{x(p[1]):.1f},{y(p[2]):.1f}" for p in front)
    metric = points[0][3]
    axes = (f"<line x1='{MARGIN}' y1='{HEIGHT - MARGIN}' x2='{WIDTH - MARGIN}' y2='{HEIGHT - MARGIN}' stroke='#444'/>"
            f"<line x1='{MARGIN}' y1='{MARGIN}' x2='{MARGIN}' y2='{HEIGHT - MARGIN}' stroke='#444'/>"
            f"<text x='{WIDTH / 2}' y='{HEIGHT - 12}' text-anchor='middle'>size (bytes)</text>"
            f"<text x='14' y='{HEIGHT / 2}' transform='rotate(-90 14 {HEIGHT / 2})' text-anchor='middle'>"
            f"{escape(metric)}</text>")  # fmt: skip
    dashed = "fill='none' stroke='#06c' stroke-dasharray='4 3'"
    polyline = f"<polyline points='{line}' {dashed}/>" if len(front) > 1 else ""
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' role='img' "
            f"aria-label='size against {escape(metric)}'>{axes}{polyline}{''.join(marks)}</svg>")  # fmt: skip
