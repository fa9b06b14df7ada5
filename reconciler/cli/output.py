"""How ``edgectl get`` and friends print: kubectl's output conventions, one place.

Tables are rich tables with coloured phases on a terminal, and plain space-aligned text (kubectl's layout:
upper-case headers, columns three spaces apart) in pipes and files, so scripts and golden tests read stable
text. ``-o json|yaml`` prints the full objects (a ``List`` for several), ``-o name`` prints ``kind/name``.
``EDGECTL_NOW`` (ISO 8601) fixes the clock that ages are computed from, for reproducible output.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import yaml

OUTPUTS = ("wide", "json", "yaml", "name")
GOOD = {"Healthy", "Succeeded", "Ready", "True"}
BAD = {"Failed", "RolledBack", "Aborted", "Stalled", "Unavailable", "False"}
WORST_FIRST = ("Failed", "RolledBack", "Unavailable", "Verifying", "Downloading", "Installing", "Testing",
               "Staged", "Pending", "Healthy")  # fmt: skip
"""Phases from the worst to the best: a summary names the worst state first (Fleet's style)."""


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    wide: bool = False
    """Shown only with ``-o wide``."""


def now() -> datetime:
    fixed = os.environ.get("EDGECTL_NOW")
    return datetime.fromisoformat(fixed.replace("Z", "+00:00")) if fixed else datetime.now(UTC)


def age(stamp: str | None, at: datetime | None = None) -> str:
    """kubectl's short ages: 45s, 12m, 3h, 5d; ``<unknown>`` without a time."""
    if not stamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int(((at or now()) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def human_size(value: float, separator: str = " ") -> str:
    """``86.1 KiB``; ``separator=""`` keeps a table cell one word (``86.1KiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{separator}{unit}" if unit == "B" else f"{value:.1f}{separator}{unit}"
        value /= 1024
    return str(value)


def summarize(phases: Mapping[str, int]) -> str:
    """``Failed(1) Downloading(2)``: the phases that are not Healthy, worst first; ``Healthy`` when all are."""
    order = {phase: i for i, phase in enumerate(WORST_FIRST)}
    parts = [f"{p}({n})" for p, n in sorted(phases.items(), key=lambda i: (order.get(i[0], 5), i[0]))
             if n and p not in GOOD]  # fmt: skip
    if parts:
        return " ".join(parts)
    return "Healthy" if any(phases.values()) else "-"


def emit(
    kind: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    objects: Sequence[Mapping[str, Any]],
    output: str | None,
    no_headers: bool = False,
    single: bool = False,
) -> None:
    """Print ``rows`` as a table, or ``objects`` as json/yaml/name. ``single``: one named object was asked for."""
    if output in ("json", "yaml"):
        body: Any = objects[0] if single and objects else {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        if output == "json":
            click.echo(json.dumps(body, indent=2, sort_keys=False, default=str))
        else:
            click.echo(yaml.safe_dump(body, sort_keys=False, default_flow_style=False).rstrip())
        return
    if output == "name":
        for row in rows:
            click.echo(f"{kind}/{row['name']}")
        return
    shown = [c for c in columns if output == "wide" or not c.wide]
    if not rows:
        click.echo(f"No {kind}s found.", err=True)
        return
    table = [[_cell(row.get(c.key)) for c in shown] for row in rows]
    if sys.stdout.isatty():
        _rich_table(shown, table, no_headers)
        return
    lines = table if no_headers else [[c.header for c in shown], *table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(shown))]
    for line in lines:
        click.echo("   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "<none>"
    return str(value)


def _rich_table(columns: Sequence[Column], table: list[list[str]], no_headers: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Table(box=None, show_header=not no_headers, header_style="bold", pad_edge=False, padding=(0, 3, 0, 0))
    for column in columns:
        out.add_column(column.header, no_wrap=column.header in ("NAME", "ID"))
    for line in table:
        out.add_row(*(Text(cell, style=phase_style(cell)) for cell in line))
    Console().print(out)


def phase_style(cell: str) -> str:
    word = cell.split("(")[0].split(" ")[0]
    if word in BAD:
        return "red"
    if word in GOOD:
        return "green"
    if word in WORST_FIRST or word in ("Progressing", "Paused"):
        return "yellow"
    return ""
