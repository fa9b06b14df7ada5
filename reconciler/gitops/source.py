"""The fleet repo as the controller sees it: a bare clone, fetched on demand, read at exact commits.

Who calls it: the controller loop (fetch, files at the head), the status writer (commits on top of the
head), ``edgectl plan`` (files at two refs). Nothing is checked out: specs are read from the commit's tree,
so what is applied is exactly what the commit says, never a half-updated working directory.

URLs: ``file://``, plain paths, ``git://``, ``https://`` (token or user/password) and ``ssh://`` /
``user@host:path`` (key file). Credentials come from files or the environment and are never logged; every
error message names the URL without its userinfo.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pygit2

from reconciler.api import Limits, SourceFile
from reconciler.errors import EdgeReconcilerError, PermanentError, TemporaryError

from .files import SPEC_SUFFIXES, read_fleet_dir


class GitError(EdgeReconcilerError):
    """Fetching, reading or pushing the fleet repo failed; only its two kinds below are raised."""


class TemporaryGitError(GitError, TemporaryError):
    """The remote did not answer (network, timeout, 5xx) or moved during a push: the next cycle may pass."""


class PermanentGitError(GitError, PermanentError):
    """The remote refused us or is not what the configuration says: a person fixes the URL, branch or
    credentials, or the server's policy."""


_NEEDS_A_PERSON = (
    "authentication", "credentials", "permission denied", "certificate", "host key", "hostkey",
    "status code: 401", "status code: 403", "status code: 404", "not found", "does not appear to be a git",
    "failed to resolve path", "unsupported url protocol", "invalid argument",
)  # fmt: skip
"""libgit2 reports most transport failures as a plain ``pygit2.GitError``; these parts of its message mean a
retry cannot help (wrong credentials, an unknown repository, a malformed URL). Anything else (refused or
reset connections, timeouts, DNS, 5xx) is taken as temporary: a network that comes back is the common case."""


def transport_error(message: str, cause: BaseException | None = None) -> GitError:
    """The kind of GitError a failed fetch or push is, from libgit2's exception and message (``KeyError``: a
    ref or remote the clone lacks, which the configuration names)."""
    if isinstance(cause, (pygit2.AuthError, pygit2.CertificateError, KeyError)):
        return PermanentGitError(message)
    lowered = str(cause or message).lower()
    kind = PermanentGitError if any(part in lowered for part in _NEEDS_A_PERSON) else TemporaryGitError
    return kind(message)


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to the remote. Values are read when needed, never stored in logs or status."""

    username: str = "git"
    password_file: Path | None = None
    """HTTPS: a token or password in a file."""
    ssh_key: Path | None = None
    """SSH: a private key file (its .pub beside it is used when present)."""

    @classmethod
    def from_env(cls) -> Credentials | None:
        """EDGE_RECONCILER_GIT_USERNAME, EDGE_RECONCILER_GIT_PASSWORD_FILE, EDGE_RECONCILER_GIT_SSH_KEY."""
        password, key = (
            os.environ.get("EDGE_RECONCILER_GIT_PASSWORD_FILE"),
            os.environ.get("EDGE_RECONCILER_GIT_SSH_KEY"),
        )
        if not password and not key:
            return None
        return cls(
            os.environ.get("EDGE_RECONCILER_GIT_USERNAME", "git"),
            Path(password) if password else None,
            Path(key) if key else None,
        )

    def callbacks(self) -> pygit2.RemoteCallbacks:
        creds = self

        class _Callbacks(pygit2.RemoteCallbacks):
            def credentials(self, url, username_from_url, allowed_types):
                if allowed_types & pygit2.enums.CredentialType.SSH_KEY and creds.ssh_key:
                    public = Path(f"{creds.ssh_key}.pub")
                    return pygit2.Keypair(username_from_url or creds.username,
                                          str(public) if public.exists() else None, str(creds.ssh_key), "")  # fmt: skip
                if allowed_types & pygit2.enums.CredentialType.USERPASS_PLAINTEXT and creds.password_file:
                    return pygit2.UserPass(creds.username, creds.password_file.read_text().strip())
                return None

        return _Callbacks()


APPLIED_REF = "refs/edge-reconciler/applied"
BRANCH_KEY = "edge-reconciler.branch"
"""The branch a clone was made for, kept in the clone's own config."""


def redact(url: str) -> str:
    """The URL without userinfo: ``https://user:token@host/x`` -> ``https://host/x``."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^@/]+@", r"\1", url)


class GitSource:
    def __init__(
        self,
        url: str,
        workdir: Path,
        branch: str = "main",
        credentials: Credentials | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.url = url
        self.workdir = Path(workdir)
        self.branch = branch
        self.credentials = credentials
        self.limits = limits or Limits()
        self._repo: pygit2.Repository | None = None

    @property
    def remote_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    @property
    def repo(self) -> pygit2.Repository:
        if self._repo is None:
            if (self.workdir / "HEAD").exists():
                repo = pygit2.Repository(str(self.workdir))
                self._check_belongs(repo)
                self._repo = repo
            else:
                self.workdir.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._repo = pygit2.init_repository(str(self.workdir), bare=True)
                    self._repo.remotes.create("origin", self.url)
                    self._repo.config[BRANCH_KEY] = self.branch
                except (pygit2.GitError, ValueError) as exc:
                    message = f"cannot set up a clone of {redact(self.url)} in {self.workdir}: {exc}"
                    raise PermanentGitError(message) from exc
        return self._repo

    def open(self) -> None:
        """Open or set up the clone now, so that a clone of another repository is refused at start."""
        _ = self.repo

    def _check_belongs(self, repo: pygit2.Repository) -> None:
        """A clone made for another repository or branch is never used: its status commits would be pushed to
        the old remote, its rollout state read as this one's."""
        try:
            url = repo.remotes["origin"].url
        except KeyError:
            url = None
        branch = self.branch  # a clone from before the key: taken as made for this branch
        if BRANCH_KEY in repo.config:
            branch = repo.config[BRANCH_KEY]
        if url != self.url or branch != self.branch:
            raise PermanentGitError(
                f"{self.workdir} is a clone of {redact(url or '?')} (branch {branch}), not of {redact(self.url)} "
                f"(branch {self.branch}): use a state directory of its own, or --reset-state to start this one "
                "over"
            )

    def callbacks(self) -> pygit2.RemoteCallbacks | None:
        return self.credentials.callbacks() if self.credentials else None

    def fetch(self) -> str:
        """Fetch the branch; returns its head commit id."""
        refspec = f"+refs/heads/{self.branch}:{self.remote_ref}"
        try:
            self.repo.remotes["origin"].fetch([refspec], callbacks=self.callbacks())
        except (pygit2.GitError, KeyError, OSError) as exc:
            message = f"fetch {redact(self.url)}: {_one_line(exc).replace(self.url, redact(self.url))}"
            raise transport_error(message, exc) from exc
        return self.head()

    def fetch_branch(self, branch: str) -> str | None:
        """Fetch another branch of the same remote (the status branch); its head, or None when the remote has
        no such branch (a branch deleted there is forgotten here too)."""
        ref = f"refs/remotes/origin/{branch}"
        if ref in self.repo.references:
            self.repo.references.delete(ref)
        try:
            self.repo.remotes["origin"].fetch([f"+refs/heads/{branch}:{ref}"], callbacks=self.callbacks())
        except (pygit2.GitError, KeyError, OSError) as exc:
            message = f"fetch {redact(self.url)} {branch}: {_one_line(exc).replace(self.url, redact(self.url))}"
            raise transport_error(message, exc) from exc
        found = self.repo.references.get(ref)
        return str(found.target) if found is not None else None

    def tracking_head(self, branch: str) -> str | None:
        """Another branch's head as fetched (or pushed) last; None when it was never seen."""
        found = self.repo.references.get(f"refs/remotes/origin/{branch}")
        return str(found.target) if found is not None else None

    def head(self) -> str:
        try:
            return str(self.repo.references[self.remote_ref].target)
        except KeyError:
            raise PermanentGitError(f"{redact(self.url)} has no branch {self.branch}") from None

    def files_at(self, commit: str, ignore: Iterable[str] = ()) -> list[SourceFile]:
        """Every spec file of ``commit``'s tree (hidden paths and ``ignore`` prefixes skipped)."""
        prefixes = tuple(p.rstrip("/") + "/" for p in ignore)
        try:
            tree = self.repo[commit].peel(pygit2.Tree)
        except (KeyError, ValueError) as exc:
            raise PermanentGitError(f"commit {commit} is not in the clone of {redact(self.url)}") from exc
        return tree_files(self.repo, tree, prefixes, self.limits)

    def read_blob(self, commit: str, path: str) -> bytes | None:
        try:
            entry = self.repo[commit].peel(pygit2.Tree)[path]
        except KeyError:
            return None
        return self.repo[entry.id].data

    def changed_paths(self, old: str, new: str) -> set[str]:
        """Paths that differ between two commits (a tree-to-tree diff, no file contents read)."""
        diff = self.repo.diff(self.repo[old].peel(pygit2.Tree), self.repo[new].peel(pygit2.Tree))
        return {delta.new_file.path for delta in diff.deltas} | {delta.old_file.path for delta in diff.deltas}

    def last_change_outside(self, commit: str, owned: str, limit: int = 1000) -> str:
        """The newest first-parent ancestor (or ``commit`` itself) that changed anything outside ``owned``:
        the controller's own status commits are skipped, so signatures are checked on people's commits."""
        prefix = owned.rstrip("/") + "/"
        current = self.repo[commit].peel(pygit2.Commit)
        for _ in range(limit):
            if not current.parents:
                return str(current.id)
            changed = self.changed_paths(str(current.parents[0].id), str(current.id))
            if not changed or not all(path.startswith(prefix) for path in changed):
                return str(current.id)
            current = current.parents[0]
        return str(current.id)

    def applied(self) -> str | None:
        """The last commit the controller applied (a ref in the clone, which also keeps that commit's objects
        after a force-push drops it from the branch)."""
        try:
            return str(self.repo.references[APPLIED_REF].target)
        except KeyError:
            return None

    def mark_applied(self, commit: str) -> None:
        self.repo.references.create(APPLIED_REF, pygit2.Oid(hex=commit), force=True)

    def contains(self, head: str, commit: str) -> bool:
        """Whether ``commit`` is ``head`` or one of its ancestors (False after a rewrite dropped it)."""
        try:
            return head == commit or self.repo.descendant_of(pygit2.Oid(hex=head), pygit2.Oid(hex=commit))
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def commits_between(self, since: str, head: str) -> list[str]:
        """Every commit reachable from ``head`` and not from ``since`` (merged branches too), oldest first."""
        walker = self.repo.walk(pygit2.Oid(hex=head), pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
        walker.hide(pygit2.Oid(hex=since))
        return [str(commit.id) for commit in walker]

    def only_under(self, commit: str, prefix: str) -> bool:
        """Whether ``commit`` changes nothing outside ``prefix`` (against its first parent)."""
        current = self.repo[commit].peel(pygit2.Commit)
        if not current.parents:
            return False
        owned = prefix.rstrip("/") + "/"
        return all(path.startswith(owned) for path in self.changed_paths(str(current.parents[0].id), commit))

    def last_change_of(self, head: str, path: str, limit: int = 10_000) -> str:
        """The newest first-parent ancestor of ``head`` (or ``head``) that wrote ``path`` as it is at ``head``."""
        current = self.repo[head].peel(pygit2.Commit)
        wanted = _entry_id(current.tree, path)
        for _ in range(limit):
            if not current.parents or _entry_id(current.parents[0].tree, path) != wanted:
                return str(current.id)
            current = current.parents[0]
        return str(current.id)

    def committer_email(self, commit: str) -> str:
        return self.repo[commit].peel(pygit2.Commit).committer.email

    def verify_commit_signature(self, commit: str, allowed_signers: Path) -> str | None:
        """None when ``commit`` carries an SSH signature by a key in ``allowed_signers`` (for its committer's
        e-mail); otherwise the reason it does not, for status."""
        signature, payload = self.repo[commit].gpg_signature
        if not signature:
            return f"commit {commit[:12]} is not signed"
        principal = self.repo[commit].committer.email
        with tempfile.NamedTemporaryFile(suffix=".sig") as sig:
            sig.write(signature)
            sig.flush()
            command = ["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers), "-I", principal, "-n", "git"]
            result = subprocess.run([*command, "-s", sig.name], input=payload, capture_output=True, timeout=30)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
            return (
                f"commit {commit[:12]} signature is not from an allowed signer ({detail[-1] if detail else 'refused'})"
            )
        return None


def _entry_id(tree: pygit2.Tree, path: str) -> pygit2.Oid | None:
    try:
        return tree[path].id
    except KeyError:
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def tree_files(repo: pygit2.Repository, tree: pygit2.Tree, ignore: tuple[str, ...], limits: Limits) -> list[SourceFile]:
    """Every spec file of ``tree`` (hidden paths and paths under the ``ignore`` prefixes skipped)."""
    files: list[SourceFile] = []

    def walk(tree: pygit2.Tree, base: str) -> None:
        for entry in tree:
            path = f"{base}{entry.name}"
            if entry.name.startswith(".") or (path + "/").startswith(ignore) or path.startswith(ignore):
                continue
            if entry.type_str == "tree":
                walk(repo[entry.id], f"{path}/")
            elif entry.type_str == "blob" and entry.name.endswith(SPEC_SUFFIXES):
                blob = repo[entry.id]
                if blob.size > limits.max_file_bytes:
                    files.append(SourceFile(path, read_error=f"file is {blob.size} bytes, over the limit of "
                                                             f"{limits.max_file_bytes}"))  # fmt: skip
                else:
                    files.append(SourceFile(path, blob.data))

    walk(tree, "")
    return sorted(files, key=lambda f: f.path)


@dataclass(frozen=True)
class RepoFiles:
    """A fleet repo's files at one commit of a local repository (``commit`` None: a plain directory)."""

    files: list[SourceFile]
    commit: str | None = None
    git_dir: str | None = None


def read_repo(path: str | os.PathLike[str], ref: str | None = None, limits: Limits | None = None) -> RepoFiles:
    """The files of a local fleet repo: at ``ref`` when given, at HEAD of a bare repository, else the working
    directory as it is on disk (what a person is editing)."""
    limits = limits or Limits()
    found = pygit2.discover_repository(str(path))
    if found is None:
        if ref is not None:
            raise PermanentGitError(f"{path} is not a Git repository; cannot read {ref}")
        return RepoFiles(read_fleet_dir(path, limits))
    repo = pygit2.Repository(found)
    if ref is None and not repo.is_bare:
        return RepoFiles(read_fleet_dir(path, limits), None, found)
    try:
        commit = repo.revparse_single(ref or "HEAD").peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise PermanentGitError(f"{ref or 'HEAD'} is not a commit in {path}") from exc
    root = commit.tree
    workdir = Path(repo.workdir or found).resolve()
    inside = Path(path).resolve()
    if inside != workdir and inside.is_relative_to(workdir):  # a fleet repo in a sub-folder of a larger repo
        try:
            root = root[inside.relative_to(workdir).as_posix()].peel(pygit2.Tree)
        except KeyError as exc:
            raise PermanentGitError(f"{inside.relative_to(workdir)} does not exist at {ref}") from exc
    return RepoFiles(tree_files(repo, root, (), limits), str(commit.id), found)


def branch_head(git_dir: str, branch: str) -> str | None:
    """The head of ``branch`` in the repository at ``git_dir``: the local branch (a bare repository, or a
    checkout that has it), else the remote-tracking one (a checkout after ``git fetch``); None without either."""
    repo = pygit2.Repository(git_dir)
    for ref in (f"refs/heads/{branch}", f"refs/remotes/origin/{branch}"):
        found = repo.references.get(ref)
        if found is not None:
            return str(found.peel(pygit2.Commit).id)
    return None


def export_tree(git_dir: str | os.PathLike[str], commit: str, directory: Path) -> Path:
    """Write the files of ``commit`` into a new ``directory`` (a bare clone has no work tree): what a build
    reads, exactly as merged, whatever the branch moved to since."""
    repo = pygit2.Repository(str(git_dir))
    try:
        tree = repo[commit].peel(pygit2.Commit).tree
    except (KeyError, ValueError) as exc:
        raise GitError(f"commit {commit} is not in {git_dir}") from exc
    Path(directory).mkdir(parents=True, exist_ok=False)
    repo.checkout_tree(tree, directory=str(directory), strategy=pygit2.enums.CheckoutStrategy.FORCE)
    return Path(directory)


def files_at_commit(git_dir: str, commit: str) -> list[SourceFile]:
    repo = pygit2.Repository(git_dir)
    return tree_files(repo, repo[commit].peel(pygit2.Commit).tree, (), Limits())


def decision_commits(git_dir: str, start: str | list[str], rollout: str, limit: int = 5, scan: int = 2000) -> list[str]:
    """``SHORT-ID first line`` of the newest commits that record a decision of ``rollout``: its rollback
    commits and the status commits whose body names it (advance, pause, promote, succeed). ``start``: one
    commit, or several (the fleet's branch and the status branch), walked together newest first."""
    repo = pygit2.Repository(git_dir)
    heads = []
    for ref in [start] if isinstance(start, str) else start:
        try:
            heads.append(repo.revparse_single(ref).peel(pygit2.Commit).id)
        except (KeyError, ValueError, pygit2.GitError):
            continue
    if not heads:
        return []
    walker = repo.walk(heads[0], pygit2.enums.SortMode.TIME)
    for other in heads[1:]:
        walker.push(other)
    found: list[str] = []
    for index, commit in enumerate(walker):
        if index >= scan or len(found) >= limit:
            break
        message = commit.message
        first = message.splitlines()[0] if message else ""
        if first.startswith(f"rollback: {rollout} ") or f"\n{rollout}: " in message:
            found.append(f"{str(commit.id)[:12]} {first}")
    return found


def file_history(git_dir: str, start: str, paths: list[str], limit: int = 1000) -> list[tuple[int, dict[str, bytes]]]:
    """Each change of ``paths`` along the first-parent history from ``start``, oldest first: (commit time in Unix
    seconds, path -> content at that commit, for the paths that exist there). Commits that change none of them
    are left out; at most ``limit`` commits are walked (the newest)."""
    repo = pygit2.Repository(git_dir)
    commit = repo[start].peel(pygit2.Commit)
    found: list[tuple[int, dict[str, bytes]]] = []
    last: dict[str, pygit2.Oid] | None = None
    walked: list[pygit2.Commit] = []
    while commit is not None and len(walked) < limit:
        walked.append(commit)
        commit = commit.parents[0] if commit.parents else None
    for each in reversed(walked):
        ids = {}
        for path in paths:
            try:
                ids[path] = each.tree[path].id
            except KeyError:
                continue
        if ids and ids != last:
            found.append((each.commit_time, {path: repo[oid].data for path, oid in ids.items()}))
        last = ids
    return found
