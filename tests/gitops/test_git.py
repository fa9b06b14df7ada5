"""The Git source and the status writer against real remotes: specs read at exact commits, status
committed once and only when it changed, concurrent pushes that lose nothing, server refusals reported."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from reconciler.api import load_fleet
from reconciler.gitops.source import GitError, GitSource, redact
from reconciler.gitops.status import Author, StatusWriter

from ..git_server import GitServer, git


def test_specs_are_read_at_the_exact_commit_and_status_is_ignored(git_server: GitServer, tmp_path: Path):
    url, work = git_server.create("fleet")
    source = GitSource(url, tmp_path / "clone")
    first = source.fetch()
    tree = load_fleet(source.files_at(first, ignore=["status"]))
    assert set(tree.rollouts) == {"digits-cnn-1-1", "vibration-anomaly-2"}

    (work / "rollouts" / "vibration-anomaly-2.yaml").unlink()
    git("commit", "-qam", "Drop the vibration rollout", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    second = source.fetch()
    assert second != first
    assert set(load_fleet(source.files_at(second)).rollouts) == {"digits-cnn-1-1"}
    assert set(load_fleet(source.files_at(first)).rollouts) == {"digits-cnn-1-1", "vibration-anomaly-2"}
    assert source.changed_paths(first, second) == {"rollouts/vibration-anomaly-2.yaml"}


def test_status_is_committed_once_and_not_again_when_unchanged(git_server: GitServer, tmp_path: Path):
    url, work = git_server.create("fleet")
    source = GitSource(url, tmp_path / "clone")
    writer = StatusWriter(source, Author("edge-reconciler", "bot@acme.example"))
    pushed = writer.commit({"status/rollouts/digits-cnn-1-1.yaml": b"phase: Progressing\n"}, "status: digits")
    assert pushed is not None and pushed.attempts == 1
    assert writer.commit({"status/rollouts/digits-cnn-1-1.yaml": b"phase: Progressing\n"}, "status: digits") is None
    git("pull", "-q", "origin", "main", cwd=work)
    assert (work / "status" / "rollouts" / "digits-cnn-1-1.yaml").read_text() == "phase: Progressing\n"
    assert git("log", "-1", "--format=%an <%ae>|%s", cwd=work) == "edge-reconciler <bot@acme.example>|status: digits"
    assert writer.commit({"status/rollouts/digits-cnn-1-1.yaml": None}, "status: remove") is not None
    assert source.read_blob(source.head(), "status/rollouts/digits-cnn-1-1.yaml") is None


def test_concurrent_pushes_lose_no_commit_on_either_side(git_server: GitServer, tmp_path: Path):
    url, work = git_server.create("fleet")
    writer = StatusWriter(GitSource(url, tmp_path / "clone"), attempts=20, backoff=0.01)
    people = 15

    def developer() -> None:
        for i in range(people):
            (work / "notes.yaml").write_text(f"# edit {i}\n")
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", f"edit {i}", cwd=work)
            for _ in range(20):
                if (
                    subprocess.run(
                        ["git", "push", "-q", "origin", "HEAD:main"], cwd=work, capture_output=True
                    ).returncode
                    == 0
                ):
                    break
                git("pull", "-q", "--rebase", "origin", "main", cwd=work)

    thread = threading.Thread(target=developer)
    thread.start()
    retried = 0
    for i in range(15):
        pushed = writer.commit({f"status/groups/g{i}.yaml": f"n: {i}\n".encode()}, f"status {i}")
        assert pushed is not None
        retried += pushed.attempts - 1
    thread.join(timeout=120)
    check = tmp_path / "check"
    git("clone", "-q", str(git_server.base / "fleet.git"), str(check))
    subjects = git("log", "--format=%s", cwd=check).splitlines()
    assert sorted(s for s in subjects if s.startswith("edit ")) == sorted(f"edit {i}" for i in range(people))
    assert sorted(s for s in subjects if s.startswith("status ")) == sorted(f"status {i}" for i in range(15))
    assert all((check / "status" / "groups" / f"g{i}.yaml").exists() for i in range(15))


def test_a_push_the_server_refuses_is_reported(git_server: GitServer, tmp_path: Path):
    url, _ = git_server.create("fleet")
    git_server.hook("fleet", "pre-receive", "#!/bin/sh\necho 'status commits need review' >&2\nexit 1\n")
    writer = StatusWriter(GitSource(url, tmp_path / "clone"), attempts=3, sleep=lambda _: None)
    with pytest.raises(GitError) as caught:
        writer.commit({"status/x.yaml": b"a: 1\n"}, "status")
    assert "refused 3 times" in str(caught.value) and "hook declined" in str(caught.value)
    check = tmp_path / "check"
    git("clone", "-q", str(git_server.base / "fleet.git"), str(check))
    assert not (check / "status" / "x.yaml").exists()


def test_a_missing_branch_and_an_unreachable_remote_are_clear(git_server: GitServer, tmp_path: Path):
    url, _ = git_server.create("fleet")
    with pytest.raises(GitError, match="no branch release"):
        GitSource(url, tmp_path / "a", branch="release").fetch()
    with pytest.raises(GitError) as caught:
        GitSource("https://user:s3cret@127.0.0.1:9/fleet.git", tmp_path / "b").fetch()
    assert "s3cret" not in str(caught.value) and "https://127.0.0.1:9/fleet.git" in str(caught.value)
    assert redact("ssh://git@host/x") == "ssh://host/x"


def test_signed_head_commits_are_checked_against_allowed_signers(git_server: GitServer, tmp_path: Path):
    url, work = git_server.create("fleet")
    key = tmp_path / "dev_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"dev@acme.example {(tmp_path / 'dev_ed25519.pub').read_text()}")
    source = GitSource(url, tmp_path / "clone")
    unsigned = source.fetch()
    assert "not signed" in source.verify_commit_signature(unsigned, allowed)

    for setting in (("gpg.format", "ssh"), ("user.signingkey", str(key))):
        git("config", *setting, cwd=work)
    (work / "notes.yaml").write_text("# signed\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-S", "-m", "Signed change", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    assert source.verify_commit_signature(source.fetch(), allowed) is None

    other = tmp_path / "other_allowed"
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    other.write_text(f"dev@acme.example {(tmp_path / 'stranger.pub').read_text()}")
    assert "not from an allowed signer" in source.verify_commit_signature(source.head(), other)
