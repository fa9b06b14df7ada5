"""``edgectl report [--rollout NAME] -o report.html``: one self-contained HTML page to send to people who do not
run ``edgectl``.

Everything comes from the fleet repo, as the controller committed it: rollout progress over time from the history
of each rollout's status file (one point per status commit that changed it, decisions marked), latency per
version and hardware profile and drift per figure from the models' drift status files (now, and drift over time
from their history). The page holds its plots as inline SVG (:mod:`.plots`) and its styles inline: no script,
font or request leaves it, so it opens the same from a mail attachment, a CI artifact or an air-gapped laptop.
"""

from __future__ import annotations

import html
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from .plots import bars, lines
from .view import FleetView, load_view

HISTORY = 1000
"""Status commits read at most (the newest)."""
FIGURES = 32
"""Figures drawn per drift plot (the farthest past their threshold first)."""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 980px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
.Fail, .Aborted { color: #b00020; } .Pass, .Succeeded { color: #1b7f3a; } .meta { color: #666; font-size: 13px; }
svg.plot { display: block; margin: 12px 0; }
"""


@click.command()
@click.option("--repo", default=".", show_default=True, help="Fleet repo: a checkout, a bare repository or a URL.")
@click.option("--rollout", "only", help="Only this rollout (and its model's latency and drift).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML file to write.")  # fmt: skip
def report(repo: str, only: str | None, out: Path) -> None:
    """Write an HTML report: rollout progress, latency per version and profile, drift per figure."""
    view = load_view(repo)
    if only is not None and only not in view.tree.rollouts:
        click.echo(f'Error (NotFound): rollout "{only}" not found in {repo}', err=True)
        sys.exit(1)
    page = render(view, only)
    out.write_text(page, encoding="utf-8")
    click.echo(f"wrote {out} ({len(page.encode()) // 1024} KiB)")


def render(view: FleetView, only: str | None = None) -> str:
    from reconciler.api.status import DriftStatus, RolloutStatus
    from reconciler.api.types import parse_moment
    from reconciler.gitops.source import file_history

    paths = view.status.paths
    head = view.status_commit or view.commit
    rollouts = [only] if only else sorted(view.tree.rollouts)
    models = sorted({view.tree.rollouts[r].spec.model for r in rollouts} if only else set(view.tree.models))
    fleet = view.tree.fleet.metadata.name
    sections = [f"<h1>edge-reconciler report: {_e(fleet)}</h1>",
                f'<p class="meta">Fleet repo at {_e((view.commit or "working tree")[:12])}; written '
                f'{datetime.now(UTC).isoformat(timespec="seconds")}.</p>',
                "<h2>Rollouts</h2>"]  # fmt: skip
    for name in rollouts:
        status = view.status.rollout(name)
        spec = view.tree.rollouts[name].spec
        history = file_history(view.git_dir, head, [paths.rollout(name)], HISTORY) if view.git_dir and head else []
        points = [(t, RolloutStatus.from_yaml(files[paths.rollout(name)], name)) for t, files in history]
        if not points:
            points = [(datetime.now(UTC).timestamp(), status)]
        series: dict[str, list[tuple[float, float]]] = {"Healthy on new version": [], "Failed": [], "Targeted": []}
        for at, seen in points:
            phases = seen.devices.by_phase()
            series["Healthy on new version"].append((at, seen.devices.healthy_on(spec.version)))
            series["Failed"].append((at, phases.get("Failed", 0) + phases.get("RolledBack", 0)))
            series["Targeted"].append((at, seen.devices.targeted))
        marks = [(t.timestamp(), f"{d.decision} (step {d.step + 1}): {d.message}")
                 for d in status.history if (t := parse_moment(d.time)) is not None]  # fmt: skip
        sections.append(f'<h3 id="rollout-{_e(name)}">{_e(name)}: {_e(spec.model)} {_e(spec.version)} '
                        f'<span class="{_e(status.phase)}">{_e(status.phase)}</span>, step {status.state.step + 1} '
                        f"of {len(spec.steps)}</h3>")  # fmt: skip
        sections.append(lines(f"{name}: rollout progress", series, "devices", marks))
        if status.gates:
            rows = "".join(f'<tr><td>{_e(g.name)}</td><td>{"n/a" if g.value is None else f"{g.value:.4g}"}</td>'
                           f'<td>{g.threshold:g}</td><td class="{_e(g.verdict)}">{_e(g.verdict)}</td>'
                           f"<td>{_e(g.message)}</td></tr>" for g in status.gates)  # fmt: skip
            sections.append("<table><tr><th>gate</th><th>value</th><th>threshold</th><th>verdict</th><th></th></tr>"
                            f"{rows}</table>")  # fmt: skip
        if status.history:
            rows = "".join(f"<tr><td>{_e(d.time)}</td><td>{_e(d.decision)}</td><td>{d.step + 1}</td>"
                           f"<td>{_e(d.message)}</td></tr>" for d in status.history)  # fmt: skip
            sections.append(f"<table><tr><th>time</th><th>decision</th><th>step</th><th></th></tr>{rows}</table>")
    for model in models:
        drift = view.status.drift.get(model)
        sections.append(f"<h2>{_e(model)}</h2>")
        if drift is None or not drift.versions:
            sections.append("<p>No telemetry in the drift window (no drift status file yet).</p>")
            continue
        latency = {f"{version} / {profile}": dict(scope.latency_ms)
                   for version, found in sorted(drift.versions.items())
                   for profile, scope in sorted(found.profiles.items()) if scope.latency_ms}  # fmt: skip
        sections.append(bars(f"{model}: latency per version and profile", latency, "ms"))
        for version, found in sorted(drift.versions.items()):
            figures = found.fleet.figures
            ranked = sorted(figures, key=lambda f: figures[f].threshold - figures[f].ks)[:FIGURES]
            sections.append(bars(f"{model} {version}: drift per figure (KS; line: threshold)",
                                 {f: {"KS": figures[f].ks} for f in ranked}, "KS distance",
                                 {f: figures[f].threshold for f in ranked}))  # fmt: skip
            if found.drifted:
                named = ", ".join(found.fleet.drifted) or "none fleet-wide"
                sections.append(f"<p>Drifted since {_e(found.since)}: {_e(named)}; {found.drifted_devices} "
                                f"device(s) on their own ({_e(', '.join(sorted(found.devices)))}).</p>")  # fmt: skip
        path = paths.drift(model)
        history = file_history(view.git_dir, head, [path], HISTORY) if view.git_dir and head else []
        over_time: dict[str, list[tuple[float, float]]] = {}
        watched = {f"{v} {f}" for v, found in drift.versions.items() for f in found.fleet.drifted}
        for at, files in history:
            for version, found in DriftStatus.from_yaml(files[path], model).versions.items():
                for figure, value in found.fleet.figures.items():
                    if f"{version} {figure}" in watched:
                        over_time.setdefault(f"{version} {figure}", []).append((at, value.ks))
        if over_time:
            sections.append(lines(f"{model}: drifted figures over time (KS)", over_time, "KS distance"))
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>edge-reconciler report: '
            f"{_e(fleet)}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")  # fmt: skip


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
