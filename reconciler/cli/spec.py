"""``edgectl validate`` and ``edgectl schema export``: the fleet spec, checked and published.

Thin: both call ``reconciler.api``. ``validate`` is what CI runs on every push, so it reads the checkout
from disk (no Git library) and loads only the spec models.
"""

from __future__ import annotations

from pathlib import Path

import click

from .overview import summary_line


@click.command()
@click.argument("path", default=".", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def validate(path: str, output: str) -> None:
    """Check every fleet document under PATH; print each error as file:line: Kind/name: field: message."""
    import json
    import sys

    from reconciler.api import SpecErrors, load_fleet
    from reconciler.gitops.files import FleetPathError, read_fleet_dir

    root, only = _repo_of(Path(path))
    try:
        tree, errors = load_fleet(read_fleet_dir(root)), []
    except FleetPathError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except SpecErrors as exc:
        tree, errors = None, list(exc.errors)
    mine = [e for e in errors if only is None or e.path == only]
    elsewhere = len(errors) - len(mine)
    if output == "json":
        body = {"path": path, "valid": not mine, "errors": [
            {"file": e.path, "line": e.line, "kind": e.kind, "name": e.name, "field": e.field, "message": e.message}
            for e in mine], "errorsElsewhere": elsewhere}  # fmt: skip
        click.echo(json.dumps(body, indent=2))
        sys.exit(1 if mine else 0)
    for error in mine:
        click.echo(str(error), err=True)
    if mine:
        files = len({e.path for e in mine})
        click.echo(f"{len(mine)} error(s) in {files} file(s)", err=True)
        sys.exit(1)
    if only is not None:
        note = f"; {elsewhere} error(s) in other files of {root}" if elsewhere else f" in {root}"
        click.echo(f"{path}: valid{note}")
        return
    assert tree is not None
    click.echo(f"{path}: {summary_line(tree)}: valid")


def _repo_of(path: Path) -> tuple[Path, str | None]:
    """A file is checked with its fleet repo (the nearest folder above it with a fleet.yaml): its references to
    other documents resolve, and only its own errors are reported. A folder, or a file of no fleet repo, is
    checked as it is."""
    if not path.is_file():
        return path, None
    for folder in path.resolve().parents:
        if (folder / "fleet.yaml").exists():
            return folder, path.resolve().relative_to(folder).as_posix()
    return path, None


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
