"""Shared fixtures. The Kubernetes API server is real (kube-apiserver + etcd on loopback, built by
scripts/kube-test-env) and started once per test session, like envtest does for Go controllers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .git_server import GitServer, git_server_at

# Real artifacts, a TUF repository and a device backend, for agent and rollout tests.
pytest_plugins = ["tests.device_fleet"]

ROOT = Path(__file__).resolve().parent.parent
KUBE_TEST_ENV = ROOT / "scripts" / "kube-test-env"
FLEET_EXAMPLE = ROOT / "fleet-example"

# Third-party services must never be called from tests (or from devices).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Path to an admin kubeconfig for a real kube-apiserver started for this test session."""
    state = tmp_path_factory.mktemp("kube")
    started = subprocess.run([str(KUBE_TEST_ENV), "start", str(state)], capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        pytest.fail(f"kube-test-env start failed:\n{started.stderr}", pytrace=False)
    try:
        yield Path(started.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([str(KUBE_TEST_ENV), "stop", str(state)], check=False, timeout=60)


@pytest.fixture
def fleet_example() -> Path:
    return FLEET_EXAMPLE


@pytest.fixture
def fleet_bare_repo(tmp_path: Path) -> Path:
    """The example fleet (without its training data) committed once and cloned bare: what `edgectl run --repo`
    reconciles."""
    import shutil

    skip = shutil.ignore_patterns("*.keras", "*.npz")
    work = Path(shutil.copytree(FLEET_EXAMPLE, tmp_path / "fleet-work", ignore=skip))
    git = ["git", "-c", "user.email=dev@acme.example", "-c", "user.name=Dev"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=work, check=True)
    subprocess.run([*git, "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-qm", "fleet"], cwd=work, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp_path / "fleet.git")], check=True)
    return tmp_path / "fleet.git"


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    """Bare repos served by a real ``git daemon`` on loopback (pushes run server hooks)."""
    with git_server_at(tmp_path) as server:
        yield server
