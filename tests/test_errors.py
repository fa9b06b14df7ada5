"""The two kinds of failure, checked on real failures: a loop waits on a TemporaryError and stalls on a
PermanentError, so a failure filed under the wrong kind either hammers a server or hides a broken setup."""

from __future__ import annotations

import json
import re
import threading
from http import HTTPStatus
from pathlib import Path

import pytest

import reconciler.errors as errors
from reconciler.agent.agent import Agent, AgentConfig
from reconciler.agent.download import DiskBudgetError, DownloadConfig, Downloader, DownloadError, OversizeError
from reconciler.cluster import (
    ClusterError,
    LocalBackend,
    PermanentClusterError,
    TemporaryClusterError,
    kubernetes_backend,
    leader_elector,
)
from reconciler.errors import DEFAULT_RETRY_AFTER, EdgeReconcilerError, PermanentError, TemporaryError
from reconciler.gitops.source import GitError, GitSource, PermanentGitError, TemporaryGitError, read_repo
from reconciler.gitops.status import StatusWriter
from reconciler.httpserver import BackgroundServer, JSONHandler
from reconciler.plan import Desired
from reconciler.signing import FetchError, KeyFileError, Refusal, RefusedError, TrustError, TrustPolicy
from tests.git_server import GitServer, git

# --- the hierarchy ---------------------------------------------------------------------------------------


def test_the_public_names_are_the_listed_ones():
    public = {name for name in vars(errors) if not name.startswith("_") and name[0].isupper()}
    assert set(errors.__all__) == public


@pytest.mark.parametrize(
    ("kind", "bases", "not_a"),
    [
        (TemporaryGitError, (GitError, TemporaryError), PermanentError),
        (PermanentGitError, (GitError, PermanentError), TemporaryError),
        (TemporaryClusterError, (ClusterError, TemporaryError), PermanentError),
        (PermanentClusterError, (ClusterError, PermanentError), TemporaryError),
        (FetchError, (TrustError, TemporaryError), PermanentError),
        (KeyFileError, (TrustError, PermanentError), TemporaryError),
        (DownloadError, (TemporaryError,), PermanentError),
        (DiskBudgetError, (DownloadError, TemporaryError), PermanentError),
        (OversizeError, (DownloadError, TemporaryError), PermanentError),
    ],
)
def test_every_error_is_one_kind_and_still_its_packages_own(kind, bases, not_a):
    error = kind("x")
    assert isinstance(error, (*bases, EdgeReconcilerError)) and all(isinstance(error, b) for b in bases)
    assert not isinstance(error, not_a)


def test_a_refusal_is_neither_kind():
    refused = RefusedError(Refusal.TAMPERED, "model.onnx differs")
    assert isinstance(refused, TrustError) and not isinstance(refused, EdgeReconcilerError)


def test_retry_after_has_a_default_and_is_never_negative():
    assert TemporaryGitError("x").retry_after == DEFAULT_RETRY_AFTER
    assert TemporaryClusterError("x", retry_after=2.5).retry_after == 2.5
    assert TemporaryError("x", retry_after=-1).retry_after == 0.0
    assert str(TemporaryGitError("fetch failed", retry_after=1)) == "fetch failed"


def test_the_drawing_in_the_docstring_matches_the_classes():
    """Every class drawn under a kind is one (the drawing is what people read)."""
    classes = {c.__name__: c for c in (TemporaryGitError, PermanentGitError, TemporaryClusterError,
                                       PermanentClusterError, FetchError, KeyFileError, DownloadError)}  # fmt: skip
    kind = None
    drawn = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^\s*(?:[│ ]*)[├└]── (\w+)", line)
        if not match:
            continue
        name = match.group(1)
        if name in ("TemporaryError", "PermanentError"):
            kind = getattr(errors, name)
        else:
            assert kind is not None and issubclass(classes[name], kind), name
            drawn.append(name)
    assert sorted(drawn) == sorted(classes)


# --- Git -----------------------------------------------------------------------------------------------


class _Answering(BackgroundServer):
    """Answers every request with one status, message and headers: a server that says no."""

    def __init__(self, status: int, message: str, headers: dict[str, str]) -> None:
        self.status, self.message, self.headers = status, message, headers
        super().__init__(("127.0.0.1", 0), _Answer)


class _Answer(JSONHandler):
    owner: _Answering

    def do_GET(self) -> None:
        body = json.dumps({"kind": "Status", "message": self.owner.message}).encode()
        self.send_bytes(HTTPStatus(self.owner.status), body, "application/json", self.owner.headers)


@pytest.fixture
def answering():
    servers: list[_Answering] = []

    def start(status: int, message: str = "", headers: dict[str, str] | None = None) -> str:
        server = _Answering(status, message, headers or {})
        server.serve()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.close()


def test_a_fetch_from_a_path_that_does_not_exist_needs_a_person(tmp_path: Path):
    with pytest.raises(PermanentGitError, match="nonexistent"):
        GitSource("file:///nonexistent", tmp_path / "clone").fetch()


@pytest.mark.parametrize("url", ["git://127.0.0.1:1/fleet.git", "http://127.0.0.1:1/fleet.git"])
def test_a_remote_that_does_not_answer_is_temporary(tmp_path: Path, url: str):
    with pytest.raises(TemporaryGitError, match="Connection refused") as caught:
        GitSource(url, tmp_path / "clone").fetch()
    assert caught.value.retry_after > 0


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, PermanentGitError), (403, PermanentGitError), (404, PermanentGitError), (503, TemporaryGitError)],
)
def test_an_http_remote_is_classified_by_its_answer(tmp_path: Path, answering, status: int, kind: type):
    url = answering(status, headers={"WWW-Authenticate": 'Basic realm="git"'} if status == 401 else {})
    with pytest.raises(kind):
        GitSource(f"{url}/fleet.git", tmp_path / "clone").fetch()


def test_a_missing_branch_and_a_missing_ref_need_a_person(tmp_path: Path):
    bare = tmp_path / "empty.git"
    git("init", "-q", "--bare", str(bare))
    with pytest.raises(PermanentGitError, match="no branch main"):
        GitSource(bare.as_uri(), tmp_path / "clone").fetch()
    with pytest.raises(PermanentGitError, match="not a Git repository"):
        read_repo(tmp_path / "nowhere", ref="HEAD")


def test_a_push_to_a_non_bare_repo_needs_a_person(tmp_path: Path):
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work))
    git("-c", "user.name=a", "-c", "user.email=a@example.com", "commit", "-q", "--allow-empty", "-m", "x", cwd=work)
    writer = StatusWriter(GitSource(str(work), tmp_path / "clone"), sleep=lambda _: None)
    with pytest.raises(PermanentGitError, match="non-bare"):
        writer.commit({"status/x.yaml": b"a: 1\n"}, "status")


def test_a_push_the_servers_hook_refuses_needs_a_person(git_server: GitServer, tmp_path: Path):
    url, _ = git_server.create("fleet", seed=None)
    git_server.hook("fleet", "pre-receive", "#!/bin/sh\necho 'status commits need review' >&2\nexit 1\n")
    writer = StatusWriter(GitSource(url, tmp_path / "clone"), attempts=2, sleep=lambda _: None)
    with pytest.raises(PermanentGitError, match="refused 2 times"):
        writer.commit({"status/x.yaml": b"a: 1\n"}, "status")


# --- Kubernetes and the local backend -------------------------------------------------------------------


def _kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        f'clusters: [{{name: c, cluster: {{server: "{server}"}}}}]\n'
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
    )
    return path


def test_an_unreachable_api_server_is_temporary(tmp_path: Path):
    backend = kubernetes_backend(_kubeconfig(tmp_path, "http://127.0.0.1:1"))
    with pytest.raises(TemporaryClusterError, match="list nodes"):
        backend.sync()


@pytest.mark.parametrize(
    ("status", "message", "headers", "kind", "retry_after"),
    [
        (401, "Unauthorized", {}, PermanentClusterError, None),
        (403, "nodes is forbidden", {}, PermanentClusterError, None),
        (404, "the server could not find the requested resource", {}, PermanentClusterError, None),
        (422, "spec.version: Invalid value", {}, PermanentClusterError, None),
        (409, "the object has been modified", {}, TemporaryClusterError, 1.0),
        (429, "too many requests", {"Retry-After": "1"}, TemporaryClusterError, 1.0),
        (503, "etcd leader changed", {}, TemporaryClusterError, DEFAULT_RETRY_AFTER),
        # This API server generation answers a server-side apply that breaks the CRD schema with a 500.
        (500, "failed to create typed patch object: .spec.artifact: invalid", {}, PermanentClusterError, None),
    ],
)
def test_an_api_server_answer_is_classified(tmp_path: Path, answering, status, message, headers, kind, retry_after):
    backend = kubernetes_backend(_kubeconfig(tmp_path, answering(status, message, headers)))
    with pytest.raises(kind, match=f"list nodes: {status}") as caught:
        backend.sync()
    if retry_after is not None:
        assert caught.value.retry_after == retry_after


@pytest.mark.kube
def test_the_real_api_server_refusing_a_spec_needs_a_person(kubeconfig: Path):
    """The schema refusal arrives as a 500 on this server generation; it is still not worth a retry."""
    backend = kubernetes_backend(kubeconfig, namespace="edge-errors")
    backend.install()
    bad = Desired("dev-1", "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu", "r", "not-a-digest", True)
    with pytest.raises(PermanentClusterError, match="ModelAssignment"):
        backend.apply([bad])


def test_missing_credentials_and_bad_timing_need_a_person(tmp_path: Path):
    with pytest.raises(PermanentClusterError, match="no Kubernetes credentials"):
        kubernetes_backend(tmp_path / "no-such-kubeconfig")
    with pytest.raises(PermanentClusterError, match="retry_period"):
        leader_elector(_kubeconfig(tmp_path, "http://127.0.0.1:1"), "edge-system", "lease", "me",
                       lease_duration=5, renew_deadline=10, retry_period=2)  # fmt: skip


def test_a_local_database_that_refuses_writes_needs_a_person(tmp_path: Path):
    backend = LocalBackend(tmp_path / "state")
    backend._file._db.execute("PRAGMA query_only = ON")  # what a read-only file or mount does to every write
    with pytest.raises(PermanentClusterError, match="readonly"):
        backend.register_device("dev-1", {"a": "b"})
    backend.close()


# --- device-facing transport ---------------------------------------------------------------------------


def test_a_download_from_an_unreachable_controller_is_temporary(tmp_path: Path):
    downloader = Downloader(tmp_path / "partial", DownloadConfig(attempts=2, reserve_bytes=0), sleep=lambda _: None)
    with pytest.raises(TemporaryError, match="gave up after 2 attempts"):
        downloader.fetch("http://127.0.0.1:1/artifacts/x", 10, "0" * 64, tmp_path / "out")


class _Backend:
    """Fails ``failures`` in turn, then stops the loop: what an agent sees of a cluster that comes and goes."""

    def __init__(self, failures: list[Exception], stop: threading.Event) -> None:
        self.failures, self.stop, self.cycles = failures, stop, 0

    def sync(self, inventory: bool = True) -> None:
        self.cycles += 1
        if self.failures:
            raise self.failures.pop(0)
        self.stop.set()

    def assignments_for(self, device: str) -> dict[str, tuple[Desired, int]]:
        return {}


class _Stop(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


def test_the_agent_loop_outlives_both_kinds_and_waits_as_told(tmp_path: Path):
    stop = _Stop()
    failures: list[Exception] = [
        TemporaryClusterError("list ModelAssignments: 429", retry_after=45.0),
        PermanentClusterError("list ModelAssignments: 403 Forbidden"),
        TemporaryGitError("short", retry_after=1.0),
    ]
    backend = _Backend(failures, stop)
    config = AgentConfig("dev-1", "arm-cortex-a-cpu", tmp_path / "data", "http://127.0.0.1:1/tuf", TrustPolicy(()))
    uploads = []
    Agent(config, backend).run(stop, interval=10.0, after_cycle=lambda: uploads.append(1))
    assert backend.cycles == 4 and len(uploads) == 4
    assert stop.waits == [45.0, 10.0, 10.0, 10.0]


def test_an_unreadable_key_file_needs_a_person(tmp_path: Path):
    from reconciler.signing.keys import load_private_key

    with pytest.raises(PermanentError):
        load_private_key(tmp_path / "missing.pem", None)
