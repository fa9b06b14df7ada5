"""``edgectl rollout pause|resume|promote|abort|retry NAME``: a person's actions, each one a commit.

Thin: it sets an annotation on the Rollout in a working checkout of the fleet repo (``--repo``, default the
current directory) and commits it with a clear message; ``git push`` (or a pull request) takes it to the
controller, which reads it on its next cycle. Nothing is hidden in the controller's state.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ANNOTATION = "edgereconciler.io"


def _act(repo: Path, name: str, key: str, value: str | None, action: str) -> None:
    from reconciler.gitops.edit import commit_annotation
    from reconciler.gitops.source import GitError

    try:
        edited = commit_annotation(repo, name, f"{ANNOTATION}/{key}", value, f"rollout {name}: {action}")
    except GitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{action}: committed {edited.commit[:12]} ({edited.path}); push it to reach the controller")


def _count(repo: Path, name: str, key: str) -> int:
    from reconciler.gitops.edit import current_annotation

    try:
        return int(current_annotation(repo, name, f"{ANNOTATION}/{key}") or 0)
    except ValueError:
        return 0


_repo = click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
                     show_default=True, help="Working checkout of the fleet repo.")  # fmt: skip


@click.group()
def rollout() -> None:
    """Act on a rollout: every action is a commit in the fleet repo."""


@rollout.command()
@click.argument("name")
@_repo
def pause(name: str, repo: Path) -> None:
    """Hold NAME where it is (devices keep what they run)."""
    _act(repo, name, "paused", "true", "pause")


@rollout.command()
@click.argument("name")
@_repo
def resume(name: str, repo: Path) -> None:
    """Let a paused NAME continue."""
    _act(repo, name, "paused", None, "resume")


@rollout.command()
@click.argument("name")
@_repo
def promote(name: str, repo: Path) -> None:
    """Continue past the current pause of NAME."""
    count = _count(repo, name, "promotions") + 1
    _act(repo, name, "promotions", str(count), f"promote (promotion {count})")


@rollout.command()
@click.argument("name")
@click.option("--reason", default="aborted by a person", show_default=True)
@_repo
def abort(name: str, reason: str, repo: Path) -> None:
    """Abort NAME and return its devices to the previous version."""
    _act(repo, name, "abort", reason, f"abort ({reason})")


@rollout.command()
@click.argument("name")
@_repo
def retry(name: str, repo: Path) -> None:
    """Start an aborted NAME again from its first step."""
    from reconciler.gitops.edit import commit_annotation, find_rollout

    count = _count(repo, name, "retries") + 1
    path, index = find_rollout(Path(repo).resolve(), name)
    text = path.read_text()
    from reconciler.gitops.edit import set_annotation

    path.write_text(set_annotation(text, index, f"{ANNOTATION}/abort", None))
    edited = commit_annotation(repo, name, f"{ANNOTATION}/retries", str(count), f"rollout {name}: retry ({count})")
    click.echo(f"retry: committed {edited.commit[:12]} ({edited.path}); push it to reach the controller")


@rollout.command("status")
@click.argument("name")
@click.option("--repo", default=".", show_default=True,
              help="Fleet repo the controller commits to (a URL or bare repository follows new commits).")  # fmt: skip
@click.option("--timeout", default="10m", show_default=True, help="Give up after this long (30s, 10m, 1h).")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between reads.")
@click.option("-w/--no-watch", "--watch", default=True, help="Wait for the end (default) or print once.")
def rollout_status(name: str, repo: str, timeout: str, interval: float, watch: bool) -> None:
    """Wait for NAME to finish: exit 0 Succeeded, 1 Aborted, 3 timed out (for CI pipelines)."""
    import time

    from reconciler.api.types import parse_duration

    from .view import load_view

    try:
        limit = parse_duration(timeout).total_seconds()
    except ValueError as exc:
        raise click.UsageError(f"--timeout: {exc}") from None
    deadline = time.monotonic() + limit
    said = None
    while True:
        view = load_view(repo)
        if name not in view.tree.rollouts:
            click.echo(f'Error: rollout "{name}" not found in {repo}', err=True)
            sys.exit(1)
        line, phase = _status_line(view, name)
        if line != said:
            click.echo(line)
            said = line
        if phase == "Succeeded":
            sys.exit(0)
        if phase == "Aborted":
            sys.exit(1)
        if not watch:
            sys.exit(0 if phase == "Succeeded" else 1 if phase == "Aborted" else 3)
        if time.monotonic() >= deadline:
            click.echo(f"error: rollout {name} did not finish within {timeout}", err=True)
            sys.exit(3)
        time.sleep(interval)


def _status_line(view, name: str) -> tuple[str, str]:
    spec, status = view.tree.rollouts[name].spec, view.rollout_status(name)
    if not status.describes(spec.model, spec.version):
        return f"Waiting for the controller to pick up {spec.model} {spec.version}...", "Pending"
    step = min(status.state.step, len(spec.steps) - 1)
    healthy, targeted = status.ready
    why = f": {status.state.message}" if status.state.message else ""
    return (f"{name} {status.phase} at step {step + 1}/{len(spec.steps)} ({spec.steps[step].percent}%), "
            f"{healthy}/{targeted} devices healthy on {spec.version}{why}"), str(status.phase)  # fmt: skip
