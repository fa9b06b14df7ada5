"""A person's actions through the controller's operator API, on a real `edgectl run` process (local backend, a
real Git daemon): an abort through `edgectl rollout abort --controller` returns the devices in the cycle it wakes,
the status commit names who did it, a restarted controller keeps it, and a retry starts again; an action the
rollout's phase makes no sense for is refused with the phase; no token, an unknown token or a standby is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import urllib3

from reconciler.cluster import LocalBackend

from ..device_fleet import free_port
from ..git_server import GitServer, git
from .test_controller import register

EDGECTL = Path(sys.executable).parent / "edgectl"
ROLLOUT = "vibration-anomaly-2"
TOKEN = "s3cret-token-of-alice-0123456789"


class Running:
    """`edgectl run` with an operator port and a long interval: only a webhook or an action makes it cycle."""

    def __init__(self, url: str, root: Path) -> None:
        (root / "tokens").write_text(f"# who may act\n{TOKEN} alice\n")
        self.port, self.log = free_port(), root / "controller.log"
        self.process = subprocess.Popen(
            [str(EDGECTL), "run", "--repo", url, "--state-dir", str(root / "state"), "--interval", "3600",
             "--listen", f"127.0.0.1:{self.port}", "--device-api", "", "--operator-tokens", str(root / "tokens")],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )  # fmt: skip
        deadline = time.monotonic() + 120  # stops a hung test; times nothing
        while self.get("/readyz") != 200:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the controller never became ready"
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> int:
        try:
            return urllib3.request("GET", self.url + path, timeout=5, retries=False).status
        except urllib3.exceptions.HTTPError:
            return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def edgectl(*args: str | Path, token: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"EDGECTL_TOKEN_FILE": str(token)} if token else {})}
    return subprocess.run([str(EDGECTL), *map(str, args)], capture_output=True, text=True, timeout=180, env=env)


def on_new_version(state: Path) -> set[str]:
    backend = LocalBackend(state)
    try:
        return {d for (d, _), spec in backend.assignments().items() if spec.version == "2.0.0"}
    finally:
        backend.close()


def test_an_abort_through_the_operator_api_acts_now_and_is_recorded(git_server: GitServer, tmp_path: Path):
    url, _ = git_server.create("fleet", status_branch="main")
    register(tmp_path / "state", 60)
    token = tmp_path / "alice.token"
    token.write_text(TOKEN + "\n")
    controller = Running(url, tmp_path)
    try:
        assert on_new_version(tmp_path / "state")  # the first cycle started the canary
        # Refused: no token, a wrong token, an action the phase makes no sense for, an unknown rollout.
        anonymous = urllib3.request("POST", f"{controller.url}/v1/rollouts/{ROLLOUT}/abort", body=b"{}",
                                    headers={"Content-Type": "application/json"}, retries=False)  # fmt: skip
        assert anonymous.status == 401
        (tmp_path / "wrong.token").write_text("not-the-token-at-all-000000\n")
        wrong = edgectl("rollout", "abort", ROLLOUT, "--controller", controller.url, token=tmp_path / "wrong.token")
        assert wrong.returncode == 1 and "unknown bearer token" in wrong.stderr
        retry = edgectl("rollout", "retry", ROLLOUT, "--controller", controller.url, token=token)
        assert retry.returncode == 1 and "only an Aborted rollout is retried; it is Progressing" in retry.stderr
        nobody = edgectl("rollout", "pause", "nope", "--controller", controller.url, token=token)
        assert nobody.returncode == 1 and "no Rollout nope" in nobody.stderr

        aborted = edgectl("rollout", "abort", ROLLOUT, "--reason", "bad outputs in plant 7", "--controller",
                          controller.url, token=token)  # fmt: skip
        assert aborted.returncode == 0, aborted.stderr
        assert f"abort {ROLLOUT}: now Aborted (Abort:" in aborted.stdout
        assert on_new_version(tmp_path / "state") == set()  # in the cycle it woke: no poll, no pull request
        subjects = git("log", "--format=%s%n%b", "main", cwd=git_server.base / "fleet.git")
        assert "bad outputs in plant 7 (alice, operator API)" in subjects
        again = edgectl("rollout", "abort", ROLLOUT, "--controller", controller.url, token=token)
        assert again.returncode == 1 and "the rollout is Aborted" in again.stderr
    finally:
        controller.stop()

    # A restarted controller keeps the abort (it is in its record, not only in memory); a retry starts again.
    controller = Running(url, tmp_path)
    try:
        assert on_new_version(tmp_path / "state") == set()
        retried = edgectl("rollout", "retry", ROLLOUT, "--controller", controller.url, token=token)
        assert retried.returncode == 0 and "now Progressing" in retried.stdout, retried.stderr
        assert on_new_version(tmp_path / "state")
        woken = edgectl("reconcile", "--controller", controller.url, token=token)
        assert woken.returncode == 0 and "reconciling" in woken.stdout
        # Suspended, the controller reconciles nothing until resumed, across a restart too.
        held = edgectl("suspend", "--reason", "change freeze", "--controller", controller.url, token=token)
        assert held.returncode == 0 and "suspended by alice" in held.stdout, held.stderr
    finally:
        controller.stop()
    controller = Running(url, tmp_path)
    try:
        assert "Suspended by alice" in (tmp_path / "controller.log").read_text()  # its first cycle after the start
        again = edgectl("suspend", "--controller", controller.url, token=token)
        assert again.returncode == 1 and "suspended already" in again.stderr
        resumed = edgectl("resume", "--controller", controller.url, token=token)
        assert resumed.returncode == 0 and "resumed by alice" in resumed.stdout
    finally:
        controller.stop()
