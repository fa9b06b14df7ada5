"""What the read-only commands look at: a fleet repo's specs and the status files the controller wrote.

``--repo`` may be a working checkout (read as it is on disk), a bare repository (its HEAD), or a remote URL
(fetched into a cache clone on every read, so ``rollout status`` follows the controller's commits).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from reconciler.api import FleetTree, SpecErrors
from reconciler.api.status import FleetStatus, GroupStatus, RolloutStatus, load_with_status

CLONES = Path.home() / ".cache" / "edge-reconciler" / "edgectl-clones"


@dataclass
class FleetView:
    tree: FleetTree
    status: FleetStatus = field(default_factory=FleetStatus)
    commit: str | None = None
    git_dir: str | None = None
    """The local repository (or cache clone) the view was read from, for history; None for plain folders."""
    status_commit: str | None = None
    """The head of the Fleet's status branch the status was read from (None: status from ``commit``)."""

    def rollout_status(self, name: str) -> RolloutStatus:
        return self.status.rollout(name)

    def group_status(self, name: str) -> GroupStatus:
        return self.status.group(name)


def is_url(repo: str) -> bool:
    return "://" in repo or ("@" in repo and ":" in repo and not Path(repo).exists())


def load_view(repo: str, ref: str | None = None, branch: str = "main") -> FleetView:
    """Specs and status of ``repo``; exits 1 with the errors when the specs do not load."""
    import pygit2

    from reconciler.gitops.files import FleetPathError
    from reconciler.gitops.source import Credentials, GitError, GitSource, read_repo

    local = not is_url(repo)
    if (
        local
        and Path(repo).is_dir()
        and pygit2.discover_repository(repo) is None
        and not Path(repo, "fleet.yaml").exists()
    ):
        # Not a repository and no Fleet document: reading every YAML file below it (a home, /tmp) helps nobody.
        click.echo(f"error: {repo} is neither a Git repository nor a fleet checkout (no fleet.yaml): pass --repo",
                   err=True)  # fmt: skip
        sys.exit(1)
    try:
        if not local:
            clone = CLONES / hashlib.sha256(repo.encode()).hexdigest()[:16]
            source = GitSource(repo, clone, branch, Credentials.from_env())  # the controller's variables
            commit = source.fetch() if ref is None else ref
            files, at, git_dir = source.files_at(commit), commit, str(clone)
        else:
            read = read_repo(repo, ref)
            files, at, git_dir = read.files, read.commit, read.git_dir
    except (GitError, FleetPathError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    try:
        fleet = load_with_status(files)
    except SpecErrors as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        sys.exit(1)
    status, status_commit = fleet.status, None
    status_branch = fleet.tree.fleet.spec.status_branch
    if status_branch and status_branch != fleet.tree.fleet.spec.branch and git_dir is not None:
        status, status_commit = _status_branch(repo, git_dir, status_branch, fleet.status, branch)
    return FleetView(fleet.tree, status, at, git_dir, status_commit)


def _status_branch(repo: str, git_dir: str, name: str, paths_from: FleetStatus, branch: str):
    """The status the controller keeps on the Fleet's status branch (fetched for a URL), and its head; the
    fleet branch's own status files when there is no such branch (yet)."""
    from reconciler.gitops.source import Credentials, GitError, GitSource, branch_head, files_at_commit

    try:
        if is_url(repo):
            head = GitSource(repo, Path(git_dir), branch, Credentials.from_env()).fetch_branch(name)
        else:
            head = branch_head(git_dir, name)
    except GitError as exc:
        click.echo(f"warning: status branch {name}: {exc}", err=True)
        head = None
    if head is None:
        return paths_from, None
    return FleetStatus.from_files(files_at_commit(git_dir, head), paths_from.paths), head
