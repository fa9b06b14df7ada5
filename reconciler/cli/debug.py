"""``edgectl debug -l SELECTOR --level debug --for 30m``: raise the log level of some devices' agents for a while,
and have them upload their recent log lines; ``edgectl logs DEVICE`` reads the lines.

``debug`` is a commit, like the rollout actions: it writes ``debug/NAME.yaml`` (a DebugSession) in the checkout
and commits it on the fleet's branch, removing the files of sessions already over; push it to reach the
controller. Nothing needs undoing: each agent drops the level at ``until`` by its own clock.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click


@click.command()
@click.option("-l", "--selector", required=True, help="The devices, by label selector (k=v, k in (a,b), ...).")
@click.option("--level", type=click.Choice(["debug", "info", "warning"]), default="debug", show_default=True)
@click.option("--for", "duration", default="30m", show_default=True, help="How long (1h, 30m, ...; at most 24h).")
@click.option("--reason", default="", help="Why (kept in the document and the commit message).")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="A checkout of the fleet repo, on the fleet's branch.")  # fmt: skip
def debug(selector: str, level: str, duration: str, reason: str, repo: Path) -> None:
    """Raise some devices' agents to LEVEL for a while, with their log lines uploaded (a commit)."""
    import pygit2
    import yaml

    from reconciler.api.types import LabelSelector, parse_duration
    from reconciler.gitops.edit import commit_files
    from reconciler.gitops.source import GitError

    try:
        parsed = LabelSelector.parse(selector)
        span = parse_duration(duration)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if span.total_seconds() <= 0 or span.total_seconds() > 24 * 3600:
        raise click.UsageError("--for must be more than 0 and at most 24h: a session is a visit, not a setting")
    now = datetime.now(UTC).replace(microsecond=0)
    until = now + span
    try:
        checkout = pygit2.Repository(str(repo))
        by = checkout.default_signature.name
    except (pygit2.GitError, KeyError):
        by = "edgectl"
    name = f"debug-{now.strftime('%Y%m%d-%H%M%S')}"
    document = {
        "apiVersion": "edgereconciler.io/v1alpha1", "kind": "DebugSession", "metadata": {"name": name},
        "spec": {"selector": parsed.model_dump(mode="json", by_alias=True, exclude_defaults=True), "level": level,
                 "until": until.isoformat().replace("+00:00", "Z"), "reason": reason, "by": by},
    }  # fmt: skip
    files: dict[str, bytes | None] = {f"debug/{name}.yaml": yaml.safe_dump(document, sort_keys=False).encode()}
    for old in sorted((repo / "debug").glob("*.yaml")):  # sessions already over: their files go
        try:
            body = yaml.safe_load(old.read_text())
            ended = datetime.fromisoformat(str(body["spec"]["until"]).replace("Z", "+00:00")) <= now
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            continue
        if ended:
            files[f"debug/{old.name}"] = None
    message = f"debug: {level} logs from {selector} until {document['spec']['until']}"
    try:
        commit = commit_files(repo, files, message + (f"\n\n{reason}" if reason else ""))
    except GitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"debug: committed {commit[:12]} (debug/{name}.yaml, until {document['spec']['until']}); push it "
               "to reach the controller")  # fmt: skip


@click.command()
@click.argument("device")
@click.option("--tail", type=int, default=200, show_default=True, help="Lines shown (the newest).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".edge-reconciler"), show_default=True,
              help="The controller's state directory (its telemetry store keeps the lines).")  # fmt: skip
def logs(device: str, tail: int, state_dir: Path) -> None:
    """Log lines DEVICE's agent uploaded during ``edgectl debug`` sessions."""
    from reconciler.telemetry.store import TELEMETRY_FILE, TelemetryStore

    path = state_dir / TELEMETRY_FILE
    if not path.exists():
        click.echo(f"error: no telemetry store at {path} (--state-dir: the controller's)", err=True)
        sys.exit(1)
    store = TelemetryStore(path)
    try:
        lines = store.device_logs(device, tail)
    finally:
        store.close()
    if not lines:
        click.echo(f"no log lines from {device} (edgectl debug -l ... names the devices that send them)", err=True)
        sys.exit(1)
    for line in lines:
        click.echo(f"{line['time']} {line['level'].upper():8} {line['logger']}: {line['message']}")
