"""How ``edgectl get`` and friends print: kubectl's output conventions, one place.

Tables are rich tables with coloured phases on a terminal, and plain space-aligned text (kubectl's layout:
upper-case headers, columns three spaces apart) in pipes and files, so scripts and golden tests read stable
text. ``-o json|yaml`` prints the full objects (a ``List`` for several), ``-o name`` prints ``kind/name``.
``EDGECTL_NOW`` (ISO 8601) fixes the clock that ages are computed from, for reproducible output.
"""

from __future__ import annotations

import json
import os
import re
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


KINDS = {"device": "Device", "group": "DeviceGroup", "model": "Model", "rollout": "Rollout", "artifact": "Artifact",
         "event": "Event", "token": "DeviceToken"}  # fmt: skip
API_VERSION = "edgereconciler.io/v1alpha1"


def shaped(kind: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """An object as kubectl prints one: ``apiVersion``, ``kind`` and ``metadata`` first (name, labels), then the
    object's own fields (its ``name`` stays too, for scripts written before)."""
    name = item.get("name") or item.get("id") or (item.get("involvedObject") or {}).get("name")
    metadata: dict[str, Any] = {"name": name}
    if item.get("labels"):
        metadata["labels"] = item["labels"]
    return {"apiVersion": API_VERSION, "kind": KINDS.get(kind, kind.title()), "metadata": metadata, **item}


def output_option(function):
    """``-o``: wide, json, yaml, name, or ``jsonpath=TEMPLATE`` (kubectl's subset: ``{.items[*].metadata.name}``)."""

    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is None or value in OUTPUTS or value.startswith("jsonpath="):
            return value
        raise click.BadParameter(f"{value!r}: one of {', '.join(OUTPUTS)} or jsonpath=TEMPLATE")

    return click.option("-o", "--output", callback=check,
                        help="wide, json, yaml, name, or jsonpath=TEMPLATE.")(function)  # fmt: skip


def jsonpath(body: Any, template: str) -> str:
    """kubectl's ``-o jsonpath`` for the common cases: text with ``{.field.sub}``, ``{.list[*].field}`` and
    ``{.list[0]}`` in it; a list of results prints space-separated."""
    out, rest = [], template
    while "{" in rest:
        text, _, rest = rest.partition("{")
        expression, _, rest = rest.partition("}")
        out.append(text.replace("\\n", "\n"))
        found = _walk([body], [part for part in re.split(r"\.|(?=\[)", expression.strip()) if part])
        out.append(" ".join(_scalar(v) for v in found))
    out.append(rest.replace("\\n", "\n"))
    return "".join(out)


def _walk(values: list[Any], parts: list[str]) -> list[Any]:
    for part in parts:
        step = []
        for value in values:
            if part == "[*]":
                step.extend(value if isinstance(value, list) else value.values() if isinstance(value, dict) else [])
            elif part.startswith("[") and part.endswith("]") and part[1:-1].lstrip("-").isdigit():
                index = int(part[1:-1])
                if isinstance(value, list) and -len(value) <= index < len(value):
                    step.append(value[index])
            elif isinstance(value, dict) and part in value:
                step.append(value[part])
        values = step
    return values


def _scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else "" if value is None else str(value)


def select(rows: list, objects: list, columns: Sequence[Column], selector: str | None,
           sort_by: str | None) -> tuple[list, list]:  # fmt: skip
    """``--field-selector phase=Failed,model!=x`` and ``--sort-by COLUMN`` over the table's columns (by header,
    ``LAST SEEN`` as ``lastSeen`` or ``last-seen``); rows and objects stay paired."""
    names = {}
    for column in columns:
        for alias in (column.key, column.header, column.header.replace(" ", "-"), column.header.replace(" ", "")):
            names[alias.lower()] = column.key
    pairs = list(zip(rows, objects, strict=True))
    for term in filter(None, (selector or "").split(",")):
        negate = "!=" in term
        key, separator, value = term.partition("!=" if negate else "=")
        column = names.get(key.strip().lower().lstrip("."))
        if column is None or not separator:
            raise click.UsageError(f"--field-selector {term!r}: give COLUMN=VALUE or COLUMN!=VALUE; columns: "
                                   f"{', '.join(c.key for c in columns)}")  # fmt: skip
        pairs = [(r, o) for r, o in pairs if (str(r.get(column) or "") == value.strip()) != negate]
    if sort_by:
        column = names.get(sort_by.strip().lower().lstrip("."))
        if column is None:
            raise click.UsageError(f"--sort-by {sort_by!r}: one of {', '.join(c.key for c in columns)}")
        pairs.sort(key=lambda pair: _order(pair[0].get(column)))
    return [r for r, _ in pairs], [o for _, o in pairs]


def _order(value: Any) -> tuple:
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (1, 0, "" if value is None else str(value))


def emit(
    kind: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    objects: Sequence[Mapping[str, Any]],
    output: str | None,
    no_headers: bool = False,
    single: bool = False,
) -> None:
    """Print ``rows`` as a table, or ``objects`` as json/yaml/name/jsonpath. ``single``: one named object was
    asked for."""
    objects = [shaped(kind, item) for item in objects]
    if output and output.startswith("jsonpath="):
        body: Any = objects[0] if single and objects else {"apiVersion": "v1", "kind": "List", "items": objects}
        click.echo(jsonpath(body, output.removeprefix("jsonpath=")))
        return
    if output in ("json", "yaml"):
        body = objects[0] if single and objects else {"apiVersion": "v1", "kind": "List", "items": list(objects)}
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
