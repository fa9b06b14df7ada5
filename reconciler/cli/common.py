"""What several commands share: loading a fleet checkout with the errors reported one way, and the default
artifact store. Commands import this module, never each other, so that each one loads on its own.

Importing it must stay cheap (``edgectl --help`` of every command that names the store pays for it): the
spec loader comes only when a command loads a fleet.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from reconciler.api import FleetTree

STORE_SHOWN = "$EDGE_RECONCILER_STORE or ~/.cache/edge-reconciler/store"
DEFAULT_STORE = Path(os.environ.get("EDGE_RECONCILER_STORE", Path.home() / ".cache" / "edge-reconciler" / "store"))


def load_or_exit(path: str) -> FleetTree:
    """Load a fleet repo or exit 1 with every error, one per line (no traceback)."""
    from reconciler.api import SpecErrors, load_fleet
    from reconciler.gitops.files import FleetPathError, read_fleet_dir

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
