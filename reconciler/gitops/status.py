"""Commit status files to the fleet repo and push them, without losing anyone's commits.

Who calls it: the controller, at most once per reconcile for status and once per rollback decision. The
controller owns the files it writes (``status/`` by default); a commit replaces exactly those paths in the
tree of the branch head, so the same change can be re-applied on any newer head:

1. build the new tree from the current remote head with the files replaced (``None`` removes a file);
2. if that tree equals the head's, there is nothing to commit (restart-safe: same state, no new commit);
3. commit on top of the head and push;
4. when the remote moved (non-fast-forward, or the server refused the update), fetch and go back to 1,
   with exponential backoff; a refusal that persists becomes a GitError that names the server's message:
   permanent when the server's policy said no (a hook, a protected branch: a person decides), temporary when
   the branch kept moving under us (busy, not wrong).

pygit2 reports a server-side refusal only through ``RemoteCallbacks.push_update_reference``; it is
collected there and treated as a failure, never ignored.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pygit2

from .source import GitSource, PermanentGitError, TemporaryGitError, redact, transport_error


@dataclass(frozen=True)
class Author:
    name: str = "edge-reconciler"
    email: str = "edge-reconciler@localhost"


@dataclass(frozen=True)
class Pushed:
    commit: str
    attempts: int


@dataclass(frozen=True)
class _Refused:
    message: str
    by_policy: bool
    """The server looked at the update and said no (not a race with another pusher)."""


_RACES = ("non-fast-forward", "non-fastforward", "fetch first", "failed to lock", "failed to update ref", "stale")
"""Server refusals that mean the branch moved or was busy: re-applying on the new head answers them."""


class StatusWriter:
    def __init__(
        self,
        source: GitSource,
        author: Author | None = None,
        attempts: int = 6,
        backoff: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        signing_key: Path | None = None,
        branch: str | None = None,
        start_from: str | None = None,
    ) -> None:
        """``signing_key``: an SSH private key that signs every commit (``git log --show-signature`` checks it
        against an allowed-signers line for the author's e-mail). ``branch``: where to commit (default: the
        source's branch); a branch the remote lacks is started with a commit of the files alone, or on top of
        ``start_from`` (a commit) when given: a branch a person can open a pull request from."""
        self.source = source
        self.branch = branch or source.branch
        self.start_from = start_from
        self.signing_key = signing_key
        self.author = author or Author()
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep

    def commit(self, files: Mapping[str, bytes | None], message: str) -> Pushed | None:
        """Replace ``files`` on the branch head in one commit and push it; None when nothing changed."""
        last = _Refused("", by_policy=False)
        own = self.branch == self.source.branch
        tracking = self.source.remote_ref if own else f"refs/remotes/origin/{self.branch}"
        for attempt in range(1, self.attempts + 1):
            head = self.source.fetch() if own else self.source.fetch_branch(self.branch)
            repo = self.source.repo
            start = head if head is not None else self.start_from
            parent = repo[start].peel(pygit2.Commit) if start is not None else None
            base = parent.tree if parent is not None else repo[repo.TreeBuilder().write()]
            tree = self._tree_with(base, files)
            if tree == base.id and parent is not None:
                return None
            parents = [parent.id] if parent is not None else []
            signature = pygit2.Signature(self.author.name, self.author.email)
            if self.signing_key is None:
                commit = repo.create_commit(None, signature, signature, message, tree, parents)
            else:
                content = repo.create_commit_string(signature, signature, message, tree, parents)
                commit = repo.create_commit_with_signature(content, ssh_sign(content.encode(), self.signing_key))
            refused = self._push(commit)
            if refused is None:
                repo.references.create(tracking, commit, force=True)
                return Pushed(str(commit), attempt)
            last = refused
            if attempt < self.attempts:
                self.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
        kind = PermanentGitError if last.by_policy else TemporaryGitError
        raise kind(f"push to {redact(self.source.url)} refused {self.attempts} times; last: {last.message}")

    def _tree_with(self, base: pygit2.Tree, files: Mapping[str, bytes | None]) -> pygit2.Oid:
        repo = self.source.repo
        index = pygit2.Index()
        index.read_tree(base)
        for path, content in sorted(files.items()):
            if content is None:
                if path in index:
                    index.remove(path)
            else:
                index.add(pygit2.IndexEntry(path, repo.create_blob(content), pygit2.enums.FileMode.BLOB))
        return index.write_tree(repo)

    def _push(self, commit: pygit2.Oid) -> _Refused | None:
        """Push ``commit`` as the branch; returns why it was refused, or None."""
        repo, branch = self.source.repo, self.branch
        local = f"refs/edge-reconciler/push/{branch}"
        repo.references.create(local, commit, force=True)
        refusals: list[str] = []
        base = self.source.callbacks()

        class _Callbacks(pygit2.RemoteCallbacks):
            def credentials(self, url, username_from_url, allowed_types):
                return base.credentials(url, username_from_url, allowed_types) if base else None

            def push_update_reference(self, refname, message):
                if message is not None:
                    refusals.append(f"{refname}: {message}")

        try:
            repo.remotes["origin"].push([f"{local}:refs/heads/{branch}"], callbacks=_Callbacks())
        except pygit2.GitError as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else "push failed"
            if "non-bare" in message:
                message += " (the controller pushes status: serve the fleet repo bare, e.g. git clone --bare)"
                raise PermanentGitError(f"push to {redact(self.source.url)}: {message}") from exc
            error = transport_error(f"push to {redact(self.source.url)}: {message}", exc)
            if isinstance(error, PermanentGitError):
                raise error from exc
            return _Refused(message, by_policy=False)  # most often the remote moved (non-fast-forward): re-apply
        if not refusals:
            return None
        text = "; ".join(refusals)
        return _Refused(text, by_policy=not any(race in text.lower() for race in _RACES))


def ssh_sign(data: bytes, key: Path) -> str:
    """An SSH signature (namespace ``git``) of ``data``, armored, as git stores it in a commit's gpgsig header."""
    result = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", "git", "-f", str(key)], input=data,
                            capture_output=True, timeout=30)  # fmt: skip
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip() or "ssh-keygen failed"
        raise PermanentGitError(f"cannot sign the status commit with {key}: {detail}")
    return result.stdout.decode()
