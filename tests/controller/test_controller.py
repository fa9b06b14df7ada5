"""The controller end to end on real Git (git daemon) and the local backend: a commit becomes assignments
and one status commit; an unchanged repo writes nothing; spec errors and unsigned heads stall without
applying; a controller killed between any two of its writes converges with no duplicate status commits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from reconciler.api.status import RolloutStatus, load_with_status
from reconciler.cluster import AssignmentStatus, LocalBackend, StoredRollout
from reconciler.controller.loop import FAULTS, Controller, ControllerConfig
from reconciler.plan import bucket

from ..git_server import GitServer, git

EDGECTL = Path(sys.executable).parent / "edgectl"
FACTORY = {
    "acme.example/site-type": "factory",
    "acme.example/network": "ethernet",
    "topology.kubernetes.io/region": "us-east",
    "edgereconciler.io/hardware": "cortex-a",
    "kubernetes.io/arch": "arm64",
}


def register(state: Path, count: int) -> list[str]:
    backend = LocalBackend(state)
    names = [f"factory-{i:03d}" for i in range(count)]
    for name in names:
        backend.register_device(name, FACTORY)
    backend.close()
    return names


def status_commits(git_server: GitServer, name: str = "fleet") -> list[str]:
    log = git("log", "--format=%an|%s", "main", cwd=git_server.base / f"{name}.git").splitlines()
    return [line for line in log if line.startswith("edge-reconciler|")]


def test_a_commit_becomes_assignments_and_one_status_commit(git_server: GitServer, tmp_path: Path):
    url, _ = git_server.create("fleet", status_branch="main")
    names = register(tmp_path / "state", 100)
    controller = Controller(ControllerConfig(url, tmp_path / "state"), LocalBackend(tmp_path / "state"))
    first = controller.cycle()
    assert first.stalled is None
    expected = {n for n in names if bucket("vibration-anomaly-2", n) < 10 * 100}
    assignments = controller.backend.assignments()
    # Every targeted device is assigned: the hashed 10 % the new version, the others the stable one.
    assert {d for d, _ in assignments} == set(names) and first.applied == len(names)
    assert {d for (d, _), a in assignments.items() if a.version == "2.0.0"} == expected
    assert {a.version for (d, _), a in assignments.items() if d not in expected} == {"1.0.0"}
    assert first.status_commit is not None
    assert len(status_commits(git_server)) == 1

    again = controller.cycle()
    assert (again.applied, again.status_commit) == (0, None)
    assert len(status_commits(git_server)) == 1

    # The status file records where the rollout stands; the controller's own commits are not spec changes.
    rendered = yaml.safe_load(
        git("show", "main:status/rollouts/vibration-anomaly-2.yaml", cwd=git_server.base / "fleet.git")
    )
    assert (rendered["phase"], rendered["step"], rendered["stableVersion"]) == ("Progressing", 1, "1.0.0")
    assert rendered["devices"]["onNewVersion"] == len(expected) and rendered["observedCommit"] == first.commit
    assert rendered["lastDecision"]["decision"] == "Start"


def test_spec_errors_stall_without_applying(git_server: GitServer, tmp_path: Path):
    url, work = git_server.create("fleet", status_branch="main")
    register(tmp_path / "state", 50)
    rollout = work / "rollouts" / "vibration-anomaly-2.yaml"
    rollout.write_text(rollout.read_text().replace("percent: 100", "percent: 90"))
    git("commit", "-qam", "Broken steps", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    controller = Controller(ControllerConfig(url, tmp_path / "state"), LocalBackend(tmp_path / "state"))
    outcome = controller.cycle()
    assert (
        outcome.stalled and "spec error" in outcome.stalled and "rollouts/vibration-anomaly-2.yaml" in outcome.stalled
    )
    assert controller.backend.assignments() == {}
    # The reason is in status, committed once: the same stall commits nothing more.
    assert len(status_commits(git_server)) == 1
    report = yaml.safe_load(git("show", "main:status/controller.yaml", cwd=git_server.base / "fleet.git"))
    assert report["ready"] is False and "spec error" in report["message"]
    assert controller.cycle().status_commit is None and len(status_commits(git_server)) == 1


def test_an_unsigned_head_is_not_applied(git_server: GitServer, tmp_path: Path):
    url, work = git_server.create("fleet", status_branch="main")
    register(tmp_path / "state", 50)
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed"
    allowed.write_text(f"dev@acme.example {(tmp_path / 'k.pub').read_text()}")
    controller = Controller(
        ControllerConfig(url, tmp_path / "state", allowed_signers=allowed), LocalBackend(tmp_path / "state")
    )
    outcome = controller.cycle()
    assert outcome.stalled and "not signed" in outcome.stalled
    assert controller.backend.assignments() == {}

    # A signed commit is applied, and the controller's own (unsigned) status commit on top does not stall it.
    for setting in (("gpg.format", "ssh"), ("user.signingkey", str(key))):
        git("config", *setting, cwd=work)
    git("pull", "-q", "origin", "main", cwd=work)
    (work / "notes.yaml").write_text("# reviewed\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-S", "-m", "Signed change", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    for _ in range(2):
        signed = controller.cycle()
        assert signed.stalled is None
    assert controller.backend.assignments()
    report = yaml.safe_load(git("show", "main:status/controller.yaml", cwd=git_server.base / "fleet.git"))
    assert report["ready"] is True


def signing_keys(tmp_path: Path) -> tuple[dict[str, Path], Path]:
    """A person's and the controller's SSH keys, and the allowed-signers file that names both."""
    keys = {}
    for name in ("person", "controller"):
        keys[name] = tmp_path / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys[name])], check=True)
    allowed = tmp_path / "allowed"
    allowed.write_text(f"dev@acme.example {(tmp_path / 'person.pub').read_text()}"
                       f"edge-reconciler@acme.example {(tmp_path / 'controller.pub').read_text()}")  # fmt: skip
    return keys, allowed


def test_every_commit_since_the_last_applied_must_be_signed_and_status_commits_are_signed_by_the_controller(
    git_server: GitServer, tmp_path: Path
):
    url, work = git_server.create("fleet", status_branch="main")
    register(tmp_path / "state", 50)
    keys, allowed = signing_keys(tmp_path)
    for setting in (("gpg.format", "ssh"), ("user.signingkey", str(keys["person"]))):
        git("config", *setting, cwd=work)

    def commit(name: str, signed: bool) -> str:
        git("pull", "-q", "--rebase", "origin", "main", cwd=work)
        (work / f"{name}.yaml").write_text(f"# {name}\n")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-S" if signed else "--no-gpg-sign", "-m", name, cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        return git("rev-parse", "HEAD", cwd=work)

    commit("reviewed", signed=True)
    config = ControllerConfig(url, tmp_path / "state", allowed_signers=allowed, signing_key=keys["controller"])
    controller = Controller(config, LocalBackend(tmp_path / "state"))
    first = controller.cycle()
    assert first.stalled is None and first.status_commit
    bare = git_server.base / "fleet.git"
    shown = git("-c", f"gpg.ssh.allowedSignersFile={allowed}", "log", "--show-signature", "-1", "main", cwd=bare)
    assert 'Good "git" signature for edge-reconciler@acme.example' in shown
    assigned = controller.backend.assignments()

    unsigned = commit("slipped-in", signed=False)
    commit("signed-on-top", signed=True)
    held = controller.cycle()
    assert held.stalled == f"commit {unsigned[:12]} is not signed"
    assert controller.backend.assignments() == assigned
    assert controller.cycle().stalled == held.stalled  # its own stall report on top changes nothing


def test_a_fresh_controller_takes_state_only_from_its_own_signed_status_commits(git_server: GitServer, tmp_path: Path):
    url, work = git_server.create("fleet", status_branch="main")
    keys, allowed = signing_keys(tmp_path)
    for setting in (("gpg.format", "ssh"), ("user.signingkey", str(keys["person"])), ("commit.gpgsign", "true")):
        git("config", *setting, cwd=work)
    git("commit", "-q", "--amend", "--no-edit", cwd=work)  # the seed commit, signed
    git("push", "-q", "-f", "origin", "HEAD:main", cwd=work)

    def controller(state: str) -> Controller:
        register(tmp_path / state, 50)
        config = ControllerConfig(url, tmp_path / state, allowed_signers=allowed, signing_key=keys["controller"])
        return Controller(config, LocalBackend(tmp_path / state))

    first = controller("state-a")
    assert first.cycle().stalled is None
    on_new = {d for (d, _), a in first.backend.assignments().items() if a.version == "2.0.0"}
    # A new backend (another cluster, a lost state directory) resumes from the controller's own signed commits.
    fresh = controller("state-b")
    assert fresh.cycle().stalled is None
    assert {d for (d, _), a in fresh.backend.assignments().items() if a.version == "2.0.0"} == on_new

    git("pull", "-q", "--rebase", "origin", "main", cwd=work)
    status = work / "status" / "rollouts" / "vibration-anomaly-2.yaml"
    status.write_text(re.sub(r"(?m)^step: 1$", "step: 3", status.read_text()))
    git("commit", "-qam", "Skip ahead (signed, but a person's)", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    third = controller("state-c")
    held = third.cycle()
    assert held.stalled.startswith("UntrustedStatus: status/rollouts/vibration-anomaly-2.yaml was last written by")
    assert third.backend.assignments() == {}  # nothing applied from a file a person wrote
    # The controller with a record is not fooled either: it restores its file.
    assert first.cycle().stalled is None
    assert {d for (d, _), a in first.backend.assignments().items() if a.version == "2.0.0"} == on_new


@pytest.mark.parametrize("point", FAULTS.points)
@pytest.mark.parametrize("scenario", ["start", "abort"])
def test_edgectl_run_once_killed_between_its_writes_converges_without_duplicate_commits(
    git_server: GitServer, tmp_path: Path, scenario: str, point: str
):
    url, work = git_server.create("fleet", status_branch="main")
    names = register(tmp_path / "state", 300)
    command = [str(EDGECTL), "run", "--repo", url, "--state-dir", str(tmp_path / "state"), "--once"]
    expected = {n for n in names if bucket("vibration-anomaly-2", n) < 10 * 100}
    if scenario == "abort":
        assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0
        rollout = work / "rollouts" / "vibration-anomaly-2.yaml"
        git("pull", "-q", "origin", "main", cwd=work)
        rollout.write_text(rollout.read_text().replace("  name: vibration-anomaly-2\n",
                                                       "  name: vibration-anomaly-2\n  annotations:\n"
                                                       "    edgereconciler.io/abort: bad outputs\n"))  # fmt: skip
        git("commit", "-qam", "Abort", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        expected = set()
    killed = subprocess.run(command, capture_output=True, timeout=120,
                            env={**os.environ, "EDGE_CONTROLLER_CRASH_AT": point})  # fmt: skip
    reached = killed.returncode == -signal.SIGKILL
    assert reached or (scenario, point) == ("start", "after-rollback-push")  # no rollback when nothing aborts
    final = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    backend = LocalBackend(tmp_path / "state")
    assert {d for (d, _), a in backend.assignments().items() if a.version == "2.0.0"} == expected
    assert len(backend.assignments()) == len(names)
    bare = git_server.base / "fleet.git"
    subjects = [line.split("|", 1)[1] for line in status_commits(git_server)]
    assert len([s for s in subjects if s.startswith("rollback:")]) == (1 if scenario == "abort" else 0)
    assert len([s for s in subjects if s.startswith("status:")]) == (2 if scenario == "abort" else 1)
    report = yaml.safe_load(git("show", "main:status/controller.yaml", cwd=bare))
    assert "lastTamper" not in report  # its own late status file is no tamper
    record = backend.rollouts()["vibration-anomaly-2"]
    assert record.synced and record.pending is None
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "status unchanged" in again.stdout and "0 applied" in again.stdout


def test_a_state_dir_cloned_from_another_repo_is_refused_and_reset_only_on_request(
    git_server: GitServer, tmp_path: Path
):
    first, _ = git_server.create("fleet", status_branch="main")
    other, _ = git_server.create("other-fleet", status_branch="main")
    register(tmp_path / "state", 5)
    state = ["--state-dir", str(tmp_path / "state"), "--once"]
    assert subprocess.run([str(EDGECTL), "run", "--repo", first, *state], capture_output=True).returncode == 0
    before = git("rev-parse", "main", cwd=git_server.base / "fleet.git")

    refused = subprocess.run([str(EDGECTL), "run", "--repo", other, *state], capture_output=True, text=True)
    assert refused.returncode == 1
    assert "is a clone of" in refused.stderr and "--reset-state" in refused.stderr
    assert git("rev-parse", "main", cwd=git_server.base / "fleet.git") == before  # nothing pushed to the old remote
    wrong_branch = subprocess.run([str(EDGECTL), "run", "--repo", first, "--branch", "prod", *state],
                                  capture_output=True, text=True)  # fmt: skip
    assert wrong_branch.returncode == 1 and "(branch main), not of" in wrong_branch.stderr

    LocalBackend(tmp_path / "state").save_rollouts({"ghost": StoredRollout(RolloutStatus("ghost"), synced=True)})
    reset = subprocess.run([str(EDGECTL), "run", "--repo", other, "--reset-state", *state], capture_output=True,
                           text=True)  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    # The first repository's rollout records went with its clone: only the second repository's are left.
    assert "ghost" not in LocalBackend(tmp_path / "state").rollouts()
    assert "status/controller.yaml" in git(
        "ls-tree", "-r", "--name-only", "main", cwd=git_server.base / "other-fleet.git"
    )


def test_a_custom_status_path_holds_every_status_file_and_status_commits_are_not_spec_changes(
    git_server: GitServer, tmp_path: Path
):
    url, work = git_server.create("fleet", status_branch="main")
    register(tmp_path / "state", 40)
    fleet = work / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace("statusPath: status", "statusPath: ops/state"))
    git("commit", "-qam", "Status under ops/state", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    controller = Controller(ControllerConfig(url, tmp_path / "state"), LocalBackend(tmp_path / "state"))
    first = controller.cycle()
    assert first.stalled is None and first.applied == 40
    bare = git_server.base / "fleet.git"
    listed = git("ls-tree", "-r", "--name-only", "main", cwd=bare).splitlines()
    assert "ops/state/rollouts/vibration-anomaly-2.yaml" in listed and "ops/state/controller.yaml" in listed
    assert not any(path.startswith("status/") and path.endswith(".yaml") for path in listed)
    written = yaml.safe_load(git("show", "main:ops/state/rollouts/vibration-anomaly-2.yaml", cwd=bare))
    assert written["observedCommit"] == git("rev-parse", "main~1", cwd=bare)  # the person's commit
    # The controller's own commit under ops/state is not a spec change: nothing more to write.
    assert controller.cycle().status_commit is None and len(status_commits(git_server)) == 1

    # A stall is reported under the configured path too.
    rollout = work / "rollouts" / "vibration-anomaly-2.yaml"
    git("pull", "-q", "origin", "main", cwd=work)
    rollout.write_text(rollout.read_text().replace("percent: 100", "percent: 90"))
    git("commit", "-qam", "Broken steps", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    assert "spec error" in (controller.cycle().stalled or "")
    report = yaml.safe_load(git("show", "main:ops/state/controller.yaml", cwd=bare))
    assert report["ready"] is False and "spec error" in report["message"]


def error_summary(device: str, errors: int, ended: datetime) -> dict:
    return {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "TelemetrySummary", "device": device,
            "model": "vibration-anomaly", "version": "2.0.0", "requests": 100, "errors": errors,
            "latencyMs": {"buckets": [1.0, "+Inf"], "counts": [100, 0]}, "predictions": [], "inputs": {},
            "ended": ended.isoformat()}  # fmt: skip


def test_the_error_rate_gate_reads_the_telemetry_of_its_window(git_server: GitServer, tmp_path: Path):
    """Errors uploaded today but measured before the gate's window (a device back from hours offline) hold
    nothing; the same errors inside the window fail the gate."""
    url, work = git_server.create("fleet", status_branch="main")
    rollout = work / "rollouts" / "vibration-anomaly-2.yaml"
    rollout.write_text(rollout.read_text().replace("    maxLatencyRegression: 10\n",
                                                   "    maxErrorRate: 0.05\n    window: 1h\n"))  # fmt: skip
    git("commit", "-qam", "Gate on errors of the last hour", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    register(tmp_path / "state", 60)
    now = datetime.now(UTC)
    controller = Controller(ControllerConfig(url, tmp_path / "state"), LocalBackend(tmp_path / "state"),
                            clock=lambda: now)  # fmt: skip
    assert controller.cycle().stalled is None
    assigned = controller.backend.assignments()
    for (device, model), spec in assigned.items():
        controller.backend.report_status(device, model, AssignmentStatus("Healthy", installed_version=spec.version,
                                                                         target_version=spec.version))  # fmt: skip
    new = sorted(d for (d, _), spec in assigned.items() if spec.version == "2.0.0")
    assert len(new) >= 2
    for device in new:
        assert controller.telemetry.record(device, error_summary(device, 60, now - timedelta(hours=3)), now) is True
        assert controller.telemetry.record(device, error_summary(device, 1, now), now) is True

    def error_gate():
        [gate] = [g for g in controller.backend.rollouts()["vibration-anomaly-2"].status.gates if g.name == "errorRate"]
        return gate

    controller.cycle()
    assert (error_gate().value, str(error_gate().verdict)) == (0.01, "Pass")  # the 3-hour-old errors are outside
    for device in new:
        controller.telemetry.record(device, error_summary(device, 60, now - timedelta(minutes=5)), now)
    controller.cycle()
    assert error_gate().value == 0.305 and str(error_gate().verdict) == "Fail"


def test_a_tuf_root_other_than_the_one_the_fleet_pins_publishes_nothing(git_server: GitServer, tmp_path: Path):
    """spec.trust.trustRoot is what agents start from: a controller whose TUF repository began from another root
    refuses to publish (agents would refuse everything), and says which file differs."""
    url, work = git_server.create("fleet", status_branch="main")
    root = {"signed": {"_type": "root", "version": 1}, "signatures": []}
    (work / "tuf").mkdir()
    (work / "tuf" / "root.json").write_text(json.dumps(root))
    fleet = work / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace("    mode: offline-key\n", "    mode: offline-key\n"
                                                                      "    trustRoot: tuf/root.json\n"))  # fmt: skip
    git("add", "-A", cwd=work)
    git("commit", "-qm", "Pin the TUF root", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    controller = Controller(ControllerConfig(url, tmp_path / "state"), LocalBackend(tmp_path / "state"))
    head = controller.source.fetch()
    tree = load_with_status(controller.source.files_at(head)).tree
    ours = tmp_path / "state" / "tuf" / "metadata" / "1.root.json"
    ours.parent.mkdir(parents=True)
    ours.write_text(json.dumps({**root, "signed": {**root["signed"], "version": 2}}))
    refusal = controller.pinned_root_refusal(tree, head)
    assert refusal is not None and "tuf/root.json" in refusal and "nothing is" in refusal
    ours.write_text(json.dumps(root, indent=2))  # the same root, written otherwise
    assert controller.pinned_root_refusal(tree, head) is None


def test_a_woken_cycle_commits_device_counts_only_when_due(git_server: GitServer, tmp_path: Path):
    """Device counts alone never make a commit in a cycle woken within the interval: the next due cycle carries
    them; a decision is committed at once."""
    url, work = git_server.create("fleet", status_branch="main")
    register(tmp_path / "state", 60)
    controller = Controller(ControllerConfig(url, tmp_path / "state"), LocalBackend(tmp_path / "state"))
    assert controller.cycle().status_commit is not None  # the start: a decision
    backend = controller.backend
    for (device, model), spec in backend.assignments().items():
        backend.report_status(device, model, AssignmentStatus("Downloading", target_version=spec.version))
    woken = controller.cycle(status_due=False)
    assert woken.stalled is None and woken.status_deferred and woken.status_commit is None
    assert not backend.rollouts()["vibration-anomaly-2"].synced  # not in Git yet: no tamper check meanwhile
    due = controller.cycle()
    assert due.status_commit is not None and backend.rollouts()["vibration-anomaly-2"].synced
    shown = yaml.safe_load(git("show", "main:status/rollouts/vibration-anomaly-2.yaml", cwd=git_server.base /
                                   "fleet.git"))  # fmt: skip
    assert "Downloading" in shown["devices"]["byVersion"]["2.0.0"]
    git("pull", "-q", "origin", "main", cwd=work)
    path = work / "rollouts" / "vibration-anomaly-2.yaml"
    path.write_text(path.read_text().replace("  name: vibration-anomaly-2\n", "  name: vibration-anomaly-2\n"
                                             "  annotations:\n    edgereconciler.io/abort: bad\n"))  # fmt: skip
    git("commit", "-qam", "Abort", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    decided = controller.cycle(status_due=False)
    assert decided.rollbacks and decided.status_commit is not None  # a decision never waits
