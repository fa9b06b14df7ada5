"""Human-readable views of a loaded fleet: a one-line summary and rich tables for terminals.

``edgectl validate`` prints only the summary line, so rich is imported by the tables alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from reconciler.api import FleetTree


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary_line(tree: FleetTree) -> str:
    """``1 Fleet, 3 DeviceProfiles, ...`` with model versions counted too."""
    counts = tree.counts()
    versions = sum(len(m.spec.versions) for m in tree.models.values())
    parts = [_plural(n, kind) for kind, n in counts.items() if kind != "Fleet" or n]
    parts[-2] += f" ({_plural(versions, 'version')})"
    return ", ".join(parts)


def _selector_text(selector) -> str:
    parts = [f"{k}={v}" for k, v in selector.match_labels.items()]
    for req in selector.match_expressions:
        values = ",".join(req.values)
        parts.append(f"{req.key} {req.operator} ({values})" if values else f"{req.operator} {req.key}")
    return ", ".join(parts) or "(all devices)"


def print_overview(tree: FleetTree, title: str, console: Console | None = None) -> None:
    """Tables of profiles, groups, models and rollouts."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.rule(title)
    profiles = Table("PROFILE", "RUNTIME", "FORMAT", "PRECISIONS", "ACCEL", "SELECTOR", title="Device profiles")
    for p in tree.profiles.values():
        precisions = ",".join(p.spec.precisions) + (" (int-only)" if p.spec.integer_only else "")
        profiles.add_row(
            p.name, p.spec.runtime, p.spec.format, precisions, p.spec.accelerator, _selector_text(p.spec.selector)
        )
    groups = Table("GROUP", "SELECTOR", title="Device groups")
    for g in tree.groups.values():
        groups.add_row(g.name, _selector_text(g.spec.selector))
    models = Table("MODEL", "TASK", "VERSIONS", "RECIPES", title="Models")
    for m in tree.models.values():
        recipes = ", ".join(f"{r.profile}: {'→'.join(p.kind for p in r.passes) or 'convert'}" for r in m.spec.recipes)
        models.add_row(m.name, m.spec.task, ", ".join(v.version for v in m.spec.versions), recipes)
    rollouts = Table("ROLLOUT", "MODEL", "VERSION", "GROUPS", "STEPS", title="Rollouts")
    for r in tree.rollouts.values():
        steps = " → ".join(f"{s.percent}%" for s in r.spec.steps)
        rollouts.add_row(
            r.name + (" (suspended)" if r.spec.suspend else ""),
            r.spec.model,
            r.spec.version,
            ", ".join(r.spec.groups),
            steps,
        )
    for table in (profiles, groups, models, rollouts):
        console.print(table)
