"""``edgectl run``: the controller process.

Thin: it builds the backend, the Git source and the HTTP endpoint from options, installs signal handlers
for a graceful stop (finish the cycle in progress, then exit), and logs one JSON line per cycle. ``--once``
runs a single reconcile and exits 0, or 1 when the cycle stalled (spec errors, unsigned head, Git down).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import click


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's extra fields."""

    _plain: frozenset[str] = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        body = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                "logger": record.name, "msg": record.getMessage()}  # fmt: skip
        body.update({k: v for k, v in vars(record).items() if k not in self._plain and not k.startswith("_")})
        return json.dumps(body, default=str)


def _telemetry_sink(path: Path):
    """Append every summary a device sends to a JSON Lines file (the rollout engine reads it)."""
    import threading

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def store(summary: dict) -> None:
        with lock, path.open("a") as out:
            out.write(json.dumps(summary, sort_keys=True) + "\n")

    return store


def _repo_url(repo: str) -> str:
    return str(Path(repo).resolve()) if "://" not in repo and "@" not in repo else repo


@click.command()
@click.option("--repo", required=True, help="Fleet repo: URL (https, ssh, git, file) or a local path.")
@click.option("--branch", default="main", show_default=True)
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True)
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Kubeconfig (default: in-cluster credentials).")  # fmt: skip
@click.option("--namespace", default="edge-system", show_default=True, help="Namespace of ModelAssignments.")
@click.option("--node-selector", help="Label selector of the Nodes that are edge devices (default: all).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".edge-reconciler"),
              show_default=True, help="Git clone, local backend database.")  # fmt: skip
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), help="Artifact store to serve and assign.")
@click.option("--releases", type=click.Path(file_okay=False, path_type=Path),
              help="Owner-signed release folders to verify and publish to agents (needs --tuf-keys).")  # fmt: skip
@click.option("--tuf-keys", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Online TUF keys: targets.key, snapshot.key, timestamp.key (edgectl tuf init).")  # fmt: skip
@click.option("--once", is_flag=True, help="Reconcile once and exit.")
@click.option("--interval", type=float, default=60.0, show_default=True, help="Seconds between fetches.")
@click.option("--listen", default="127.0.0.1:8080", show_default=True,
              help="HTTP address for artifacts, webhook and metrics ('' to disable).")  # fmt: skip
@click.option("--webhook-secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--allowed-signers", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Apply only heads signed by these SSH keys (ssh-keygen allowed_signers format).")  # fmt: skip
@click.option("--leader-elect", is_flag=True,
              help="Kubernetes: run cycles only while holding the Lease (several replicas, one writer).")  # fmt: skip
@click.option("--leader-election-id", default="edge-reconciler-controller", show_default=True,
              help="Name of the Lease (in --namespace).")  # fmt: skip
@click.option("--install-crds/--no-install-crds", default=True, show_default=True,
              help="Apply the CRDs at start (off when the Helm chart installs them: less RBAC).")  # fmt: skip
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True)
def run(
    repo: str,
    branch: str,
    backend: str,
    kubeconfig: Path | None,
    namespace: str,
    node_selector: str | None,
    state_dir: Path,
    store: Path | None,
    releases: Path | None,
    tuf_keys: Path | None,
    once: bool,
    interval: float,
    listen: str,
    webhook_secret_file: Path | None,
    allowed_signers: Path | None,
    leader_elect: bool,
    leader_election_id: str,
    install_crds: bool,
    log_format: str,
) -> None:
    """Reconcile devices toward the fleet repo, and write status back to it."""
    from reconciler.cluster import ClusterError, LocalBackend, kubernetes_backend, leader_elector
    from reconciler.controller.loop import Controller, ControllerConfig
    from reconciler.controller.server import ControllerServer
    from reconciler.gitops.source import Credentials, GitSource

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

    if leader_elect and (backend != "kubernetes" or once):
        raise click.UsageError("--leader-elect needs --backend kubernetes and a long-running controller")
    if releases is not None and tuf_keys is None:
        raise click.UsageError("--releases needs --tuf-keys (the keys that sign what agents may fetch)")
    config = ControllerConfig(_repo_url(repo), state_dir, branch, interval, allowed_signers, store, releases, tuf_keys)
    try:
        if backend == "kubernetes":
            target = kubernetes_backend(kubeconfig, namespace, node_selector)
            if install_crds:
                target.install()
            if not once:
                target.start_watches()
        else:
            target = LocalBackend(state_dir)
    except ClusterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    source = GitSource(config.repo_url, state_dir / "git", branch, Credentials.from_env())
    controller = Controller(config, target, source)

    if once:
        outcome = controller.cycle()
        if outcome.stalled:
            click.echo(f"stalled: {outcome.stalled}", err=True)
            sys.exit(1)
        click.echo(
            f"reconciled {outcome.commit}: {outcome.applied} applied, {outcome.deleted} deleted, "
            f"status {'commit ' + outcome.status_commit if outcome.status_commit else 'unchanged'}"
        )
        return

    elector = None
    if leader_elect:
        import os
        import socket

        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = leader_elector(kubeconfig, namespace, leader_election_id, identity).run()

    def ready() -> bool:
        return controller.cycles_done > 0 and (elector is None or elector.is_leader)

    server = None
    if listen:
        host, _, port = listen.rpartition(":")
        secret = webhook_secret_file.read_bytes().strip() if webhook_secret_file else None
        blobs = store / "blobs" / "sha256" if store else None
        server = ControllerServer((host or "127.0.0.1", int(port)), blobs, state_dir / "tuf",
                                  controller.metrics.registry, secret, controller.wake.set,
                                  _telemetry_sink(state_dir / "telemetry" / "received.jsonl"),
                                  ready=ready).start()  # fmt: skip
        logging.getLogger("edge_reconciler.controller").info("listening", extra={"url": server.url})

    def stop(signum: int, _frame: object) -> None:
        controller.stop.set()
        controller.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        controller.run(is_leader=lambda: elector is None or elector.is_leader)
    finally:
        if elector is not None:
            elector.stop()
        if server is not None:
            server.close()
