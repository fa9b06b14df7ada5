"""``edgectl``: the command line. Thin by design: it parses arguments, calls library entry points,
and turns their results and errors into text and exit codes (0 ok, 1 invalid input, 2 usage).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler.gitops.files import FleetPathError, read_fleet_dir
from reconciler.api import FleetTree, SpecErrors, load_fleet
from reconciler.api.schema import export_schemas

from .agent import agent
from .build import build
from .demo import demo
from .get import describe, get
from .overview import summary_line
from .plan import plan_command
from .reference import docs
from .rollout import rollout
from .run import run
from .trust import export, keys, sign, tuf, verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-reconciler", prog_name="edgectl")
def main() -> None:
    """Deliver machine-learning models to fleets of edge devices, declaratively, from Git."""


def load_or_exit(path: str) -> FleetTree:
    """Load a fleet repo or exit 1 with every error, one per line (no traceback)."""
    try:
        return load_fleet(read_fleet_dir(path))
    except FleetPathError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except SpecErrors as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        files = len({e.path for e in exc.errors})
        click.echo(f"{len(exc.errors)} error(s) in {files} file(s)", err=True)
        sys.exit(1)


@main.command()
@click.argument("path", default=".", type=click.Path(path_type=str))
def validate(path: str) -> None:
    """Check every fleet document under PATH; print each error as file:line: Kind/name: field: message."""
    tree = load_or_exit(path)
    click.echo(f"{path}: {summary_line(tree)}: valid")


@main.group()
def schema() -> None:
    """JSON Schemas of the fleet documents (for editors and CI)."""


@schema.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schema_export(directory: Path) -> None:
    """Write one JSON Schema per document kind into DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in export_schemas().items():
        (directory / name).write_text(text)
        click.echo(f"wrote {directory / name}")


main.add_command(build)
for command in (demo, get, describe, plan_command, docs, keys, tuf, sign, verify, export, run, agent, rollout):
    main.add_command(command)

if __name__ == "__main__":
    main()
