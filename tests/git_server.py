"""Real Git remotes for the gitops tests: bare repos served by ``git daemon`` on loopback (so pushes run
server hooks, as on a real Git server), seeded and changed with the git command line as a person would."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FLEET_EXAMPLE = Path(__file__).resolve().parents[1] / "fleet-example"


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


@dataclass
class GitServer:
    base: Path
    port: int

    def create(
        self, name: str, seed: Path | None = FLEET_EXAMPLE, status_branch: str | None = None
    ) -> tuple[str, Path]:
        """A bare repo with one commit of ``seed``; returns (git:// URL, a working clone). ``status_branch``:
        the Fleet's ``spec.statusBranch`` instead of the example's (``main``: status commits on the fleet's
        branch, where the tamper tests edit them)."""
        bare = self.base / f"{name}.git"
        git("init", "-q", "--bare", "-b", "main", str(bare))
        work = self.base / f"{name}-work"
        git("clone", "-q", str(bare), str(work))
        git("config", "user.email", "dev@acme.example", cwd=work)
        git("config", "user.name", "A Developer", cwd=work)
        if seed is not None:
            shutil.copytree(seed, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.keras", "*.npz"))
            fleet = work / "fleet.yaml"
            if status_branch is not None and fleet.exists():
                text = re.sub(r"(?m)^  statusBranch: .*$", f"  statusBranch: {status_branch}", fleet.read_text())
                fleet.write_text(text)
        else:
            (work / "README.md").write_text("fleet\n")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "Initial fleet", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        return f"git://127.0.0.1:{self.port}/{name}.git", work

    def hook(self, name: str, hook: str, script: str) -> None:
        path = self.base / f"{name}.git" / "hooks" / hook
        path.write_text(script)
        path.chmod(0o755)


@contextmanager
def git_server_at(tmp_path: Path) -> Iterator[GitServer]:
    """``git daemon`` on a free loopback port, serving the bare repos under ``tmp_path/git-server``."""
    base = tmp_path / "git-server"
    base.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", f"--base-path={base}", "--export-all", "--enable=receive-pack",
         "--listen=127.0.0.1", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield GitServer(base, port)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
