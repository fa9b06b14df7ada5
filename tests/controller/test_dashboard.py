"""The operator port's page in a real headless Chromium (Debian's `chromium`): after a cycle with a failing
canary it shows what a person looks for first: the fleet Ready at its commit, the rollout's phase and step, its
gates, devices per version and phase, and the failing device with its agent's reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from reconciler.cluster import AssignmentStatus, LocalBackend
from reconciler.controller.dashboard import Snapshot, commit_base, render
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.controller.server import ControllerServer

from ..git_server import GitServer
from .test_controller import register

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, tmp_path: Path) -> str:
    """The page's DOM as the browser built it (and a screenshot, to know it painted)."""
    assert CHROMIUM, "chromium is missing: scripts/bootstrap --test installs it"
    flags = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    subprocess.run([*flags, f"--screenshot={tmp_path / 'page.png'}", "--window-size=1280,900", url],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert (tmp_path / "page.png").stat().st_size > 10_000
    return subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                          check=True).stdout  # fmt: skip


def test_the_page_shows_rollouts_gates_devices_and_failure_reasons(git_server: GitServer, tmp_path: Path):
    url, _ = git_server.create("fleet")
    register(tmp_path / "state", 40)
    backend = LocalBackend(tmp_path / "state")
    controller = Controller(ControllerConfig(url, tmp_path / "state"), backend)
    assert controller.cycle().stalled is None
    canary = sorted(d for (d, _), spec in backend.assignments().items() if spec.version == "2.0.0")[0]
    backend.report_status(canary, "vibration-anomaly", AssignmentStatus(
        "Failed", "1.0.0", reason="HealthCheckFailed", target_version="2.0.0",
        message="2.0.0 failed its health check: golden outputs differ by 0.5 <tolerance 0.1>"))  # fmt: skip
    controller.cycle()
    server = ControllerServer(("127.0.0.1", 0), page=lambda: render(controller.snapshot)).start()
    try:
        dom = browse(server.url + "/", tmp_path)
    finally:
        server.close()
    assert "<title>edge-reconciler: acme-edge</title>" in dom
    assert 'Fleet acme-edge <span class="Ready">Ready</span>' in dom
    assert 'id="rollout-vibration-anomaly-2"' in dom and "step 1 of 3 (10%)" in dom
    assert "<td>failureRate</td>" in dom
    assert "<code>vibration-anomaly@2.0.0</code>" in dom and '<span class="Failed">Failed: 1</span>' in dom
    assert "<code>vibration-anomaly@1.0.0</code>" in dom and '<span class="Pending">Pending: ' in dom
    row = dom[dom.index('id="failing"') :]
    assert canary in row and "HealthCheckFailed" in row
    assert "golden outputs differ by 0.5 &lt;tolerance 0.1&gt;" in row  # the agent's text, escaped


def test_commit_links_only_for_web_remotes_without_credentials():
    assert commit_base("https://github.com/acme/fleet.git") == "https://github.com/acme/fleet/commit/"
    assert commit_base("https://token@github.com/acme/fleet.git") is None
    assert commit_base("ssh://git@github.com/acme/fleet.git") is None
    page = render(Snapshot("acme", "0123456789abcdef", None, 3, commit_url="https://git.acme.example/fleet/commit/"))
    assert b'<a href="https://git.acme.example/fleet/commit/0123456789abcdef"><code>0123456789ab</code></a>' in page
    stalled = render(Snapshot("acme", None, "spec error <x>", 1))
    assert b'<span class="Stalled">Stalled</span>' in stalled and b"spec error &lt;x&gt;" in stalled
