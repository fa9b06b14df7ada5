"""What the read-only commands look at: a fleet repo's specs and the status files the controller wrote.

``--repo`` may be a working checkout (read as it is on disk), a bare repository (its HEAD), or a remote URL
(fetched into a cache clone on every read, so ``rollout status`` follows the controller's commits).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
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

    local, source = not is_url(repo), None
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
    fetch = source.fetch_branch if not local else None
    status, status_commit = status_on_branch(fleet.tree, fleet.status, git_dir, fetch)
    return FleetView(fleet.tree, status, at, git_dir, status_commit)


def status_on_branch(tree: FleetTree, status: FleetStatus, git_dir: str | None,
                     fetch: Callable[[str], str | None] | None = None) -> tuple[FleetStatus, str | None]:  # fmt: skip
    """The status the controller keeps on the Fleet's ``spec.statusBranch`` and that branch's head (``fetch``: get
    it from the remote first, for a URL); ``status`` (the fleet branch's own files) and None when the fleet keeps
    status on its own branch or the repository has no status branch (yet)."""
    from reconciler.gitops.source import GitError, branch_head, files_at_commit

    name = tree.fleet.spec.status_branch
    if not name or name == tree.fleet.spec.branch or git_dir is None:
        return status, None
    try:
        head = fetch(name) if fetch is not None else branch_head(git_dir, name)
    except GitError as exc:
        click.echo(f"warning: status branch {name}: {exc}", err=True)
        head = None
    if head is None:
        return status, None
    return FleetStatus.from_files(files_at_commit(git_dir, head), status.paths), head
