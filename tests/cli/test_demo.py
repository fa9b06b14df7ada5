"""`edgectl demo`, the README's first command, end to end: real builds, a controller and twelve agent
processes; 2.0.0 succeeds step by step, the defective 2.1.0 is caught by the canary and rolled back, and
what it leaves behind (Git history, device slots, status) says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from reconciler.cluster import LocalBackend

EDGECTL = Path(sys.executable).parent / "edgectl"
ROLLOUT = "vibration-anomaly-2"


def test_demo_rolls_out_then_rolls_back(tmp_path: Path, fleet_example: Path):
    workdir = tmp_path / "demo"
    result = subprocess.run([str(EDGECTL), "demo", "--workdir", str(workdir), "--fleet-example", str(fleet_example)],
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"{ROLLOUT} 2.0.0 Succeeded" in out
    assert f"{ROLLOUT} 2.1.0 Aborted: failureRate" in out
    assert "answers with vibration-anomaly 2.0.0" in out

    # Merge is enough: the controller built 1.0.0 and 2.0.0 for both profiles, each once, and its builder signed
    # them; the owner's out-of-band 2.1.0 was published as released, never built over.
    jobs = [json.loads(p.read_text()) for p in (workdir / "controller" / "builds").glob("*/job.json")]
    results = {(j["version"], j["profile"]): json.loads((workdir / "controller" / "builds" / j["key"] /
                                                         "result.json").read_text()) for j in jobs}  # fmt: skip
    assert sorted(results) == [(v, p) for v in ("1.0.0", "2.0.0") for p in ("arm-cortex-a-cpu", "coral-npu")]
    assert {r["state"] for r in results.values()} == {"Succeeded"}
    for (version, profile), result in results.items():
        release = json.loads(Path(result["released"], "release.json").read_text())
        counter = 1 if version == "1.0.0" else 2  # the version's place in the Model's versions
        assert (release["version"], release["profiles"], release["counter"]) == (version, [profile], counter)
    assert "first canary Healthy on 2.0.0" in out

    # main carries people's changes and the controller's one decision (the rollback); status has its branch.
    log = subprocess.run(["git", "--git-dir", str(workdir / "fleet.git"), "log", "--format=%an|%s", "main"],
                         capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    rollbacks = [line for line in log if line.startswith("edge-reconciler|rollback: ")]
    assert len(rollbacks) == 1 and "(vibration-anomaly 2.1.0) aborted at step 1 of 3 (25%)" in rollbacks[0]
    assert rollbacks[0].endswith("returning to 2.0.0")
    assert sum(1 for line in log if line.startswith("Dana (fleet owner)|")) == 2
    assert [line for line in log if line.startswith("edge-reconciler|")] == rollbacks  # no status floods main
    assert "status commits on edgereconciler/status" in out

    status_file = subprocess.run(["git", "--git-dir", str(workdir / "fleet.git"), "show",
                                  f"edgereconciler/status:status/rollouts/{ROLLOUT}.yaml"], capture_output=True,
                                 text=True, check=True).stdout  # fmt: skip
    status = yaml.safe_load(status_file)
    assert (status["version"], status["phase"], status["stableVersion"]) == ("2.1.0", "Aborted", "2.0.0")
    assert status["devices"]["byVersion"] == {"2.0.0": {"Healthy": 12}}

    backend = LocalBackend(workdir / "controller")
    try:
        reports = backend.statuses()
    finally:
        backend.close()
    assert len(reports) == 12
    assert {(s.phase, s.installed_version) for s in reports.values()} == {("Healthy", "2.0.0")}
    # The canaries installed 2.1.0 into their other slot, failed its health check, and kept 2.0.0 active.
    states = [json.loads(p.read_text()) for p in workdir.glob("devices/*/models/vibration-anomaly/state.json")]
    failed = [state["failed"] for state in states if "failed" in state]
    assert failed and all(f["reason"] == "HealthCheckFailed" and "golden outputs differ" in f["message"]
                          for f in failed)  # fmt: skip
    # The reasons reach the operator without logging into a device: the status file names the failing canaries
    # with their agents' messages (kept after the rollback returned them), and so does describe.
    named = status["failingDevices"]
    assert named and {f["version"] for f in named} == {"2.1.0"}
    assert all(f["reason"] == "HealthCheckFailed" and "golden outputs differ" in f["message"] for f in named)
    assert "Failing devices:" in out and all(f["device"] in out for f in named)

    backend = LocalBackend(workdir / "controller")
    try:
        events = backend.events()
    finally:
        backend.close()
    decisions = [(e.reason, e.type) for e in events if e.involved == f"rollout/{ROLLOUT}"]
    assert ("Abort", "Warning") in decisions and ("Succeed", "Normal") in decisions
    assert {f["device"] for f in named} <= {e.name for e in events if e.reason == "HealthCheckFailed"}
    command = [EDGECTL, "get", "events", "--for", f"rollout/{ROLLOUT}", "--state-dir", workdir / "controller"]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "Warning" in shown and "Abort" in shown and "HealthCheckFailed" not in shown
