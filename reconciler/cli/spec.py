"""``edgectl validate`` and ``edgectl schema export``: the fleet spec, checked and published.

Thin: both call ``reconciler.api``. ``validate`` is what CI runs on every push, so it reads the checkout
from disk (no Git library) and loads only the spec models.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import load_or_exit
from .overview import summary_line


@click.command()
@click.argument("path", default=".", type=click.Path(path_type=str))
def validate(path: str) -> None:
    """Check every fleet document under PATH; print each error as file:line: Kind/name: field: message."""
    tree = load_or_exit(path)
    click.echo(f"{path}: {summary_line(tree)}: valid")


@click.group()
def schema() -> None:
    """JSON Schemas of the fleet documents (for editors and CI)."""


@schema.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schema_export(directory: Path) -> None:
    """Write one JSON Schema per document kind into DIRECTORY."""
    from reconciler.api.schema import export_schemas

    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in export_schemas().items():
            (directory / name).write_text(text)
            click.echo(f"wrote {directory / name}")
    except OSError as exc:
        raise click.ClickException(f"cannot write the schemas into {directory}: {exc.strerror or exc}") from None
