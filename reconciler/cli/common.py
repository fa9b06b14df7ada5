"""What several commands share: loading a fleet checkout with the errors reported one way, the default
artifact store, the backend options and the device registry they point at. Commands import this module, never
each other, so that each one loads on its own.

Importing it must stay cheap (``edgectl --help`` of every command that names the store pays for it): the
spec loader comes only when a command loads a fleet.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from reconciler.api import FleetTree
    from reconciler.deviceapi.registry import DeviceRegistry

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


def backend_options(function: Callable) -> Callable:
    """``--backend``, ``--state-dir``, ``--kubeconfig`` (or ``$KUBECONFIG``), ``--context``, ``-n/--namespace``:
    where the controller keeps the fleet."""
    options = [
        click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True),
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path(".edge-reconciler"),
            show_default=True,
            help="Local backend: the controller's state directory.",
        ),
        click.option(
            "--kubeconfig",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Kubernetes backend: a kubeconfig (default: $KUBECONFIG as kubectl reads it, else in-cluster "
            "credentials).",
        ),
        click.option("--context", help="Kubernetes backend: the kubeconfig context (default: its current one)."),
        click.option(
            "--namespace",
            "-n",
            default="edge-system",
            show_default=True,
            help="Kubernetes backend: the controller's namespace.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def open_registry(backend: str, state_dir: Path, kubeconfig: Path | None, namespace: str,
                  create: bool = False, context: str | None = None) -> DeviceRegistry | None:  # fmt: skip
    """The device registry the controller's device API shares (no watches: one command, fresh reads). None when
    the local backend has none and ``create`` is False: listing and revoking never make one."""
    from reconciler.errors import EdgeReconcilerError

    try:
        if backend == "kubernetes":
            from reconciler.cluster import kubernetes_backend
            from reconciler.deviceapi.kube_registry import KubernetesRegistry

            api = kubernetes_backend(kubeconfig, namespace, context=context).api
            return KubernetesRegistry(api, namespace, watch=False)
        from reconciler.deviceapi.registry import REGISTRY_FILE
        from reconciler.deviceapi.sqlite_registry import SQLiteRegistry

        if not create and not (state_dir / REGISTRY_FILE).is_file():
            return None
        return SQLiteRegistry(state_dir / REGISTRY_FILE)
    except EdgeReconcilerError as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    """``error: message`` on stderr, exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)
