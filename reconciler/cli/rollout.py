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
