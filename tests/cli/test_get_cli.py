"""`edgectl get` and `describe` through the real entry point: golden tables (plain text in pipes), wide,
json, yaml and name output from a fleet repo's committed status files, the local backend and the real
Kubernetes API server; NotFound and bad selectors fail clearly; `rollout status` exits by the outcome."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reconciler.cluster import AssignmentStatus, LocalBackend, kubernetes_backend
from reconciler.plan import Desired

EDGECTL = Path(sys.executable).parent / "edgectl"
GOLDEN = Path(__file__).parent / "golden"
NOW = "2026-01-01T00:12:00+00:00"
ROLLOUT = "vibration-anomaly-2"
STATUS = {
    "apiVersion": "edgereconciler.io/v1alpha1", "kind": "RolloutStatus", "rollout": ROLLOUT,
    "model": "vibration-anomaly", "version": "2.0.0", "phase": "Progressing", "step": 2,
    "stableVersion": "1.0.0", "stepStarted": "2026-01-01T00:00:00+00:00", "observedCommit": "0123456789ab",
    "reason": "Pausing", "message": "pause until 2026-01-01T04:05:00+00:00",
    "devices": {"targeted": 40, "onNewVersion": 20,
                "byVersion": {"1.0.0": {"Healthy": 20}, "2.0.0": {"Downloading": 1, "Failed": 1, "Healthy": 18}}},
    "gates": [{"name": "failureRate", "value": 0.05, "threshold": 0.02, "verdict": "Fail",
               "message": "1 of 20 devices failed"}],
    "history": [{"time": "2026-01-01T00:00:00+00:00", "decision": "Promote", "message": "step 2 of 3 (50%)",
                 "step": 2}],
}  # fmt: skip
GROUP = {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "DeviceGroupStatus", "group": "us-factories",
         "devices": 40, "assignments": {"vibration-anomaly@1.0.0": {"Healthy": 20}, "vibration-anomaly@2.0.0":
                                        {"Downloading": 1, "Failed": 1, "Healthy": 18}}}  # fmt: skip


def edgectl(*args: str | Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "EDGECTL_NOW": NOW, **(env or {})}
    return subprocess.run([str(EDGECTL), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=environment)  # fmt: skip


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.email=ops@acme.example", "-c", "user.name=Ops", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def matches_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"


@pytest.fixture
def repo(tmp_path: Path, fleet_example: Path) -> Path:
    """A bare fleet repo whose status files say where vibration-anomaly-2 stands (as the controller writes)."""
    work = Path(shutil.copytree(fleet_example, tmp_path / "work", ignore=shutil.ignore_patterns("*.keras", "*.npz")))
    (work / "status" / "rollouts").mkdir(parents=True)
    (work / "status" / "groups").mkdir()
    (work / "status" / "rollouts" / f"{ROLLOUT}.yaml").write_text(yaml.safe_dump(STATUS, sort_keys=False))
    (work / "status" / "groups" / "us-factories.yaml").write_text(yaml.safe_dump(GROUP, sort_keys=False))
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "fleet", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", f"rollback: {ROLLOUT} (vibration-anomaly 2.0.0) aborted", cwd=work)
    bare = tmp_path / "fleet.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


@pytest.mark.parametrize(
    ("args", "golden"),
    [
        (("get", "rollouts"), "get-rollouts.txt"),
        (("get", "rollouts", "-o", "wide"), "get-rollouts-wide.txt"),
        (("get", "groups"), "get-groups.txt"),
        (("get", "models", "-o", "wide"), "get-models-wide.txt"),
        (("describe", "rollout", ROLLOUT), "describe-rollout.txt"),
        (("get", "rollout", ROLLOUT, "-o", "yaml"), "get-rollout.yaml"),
        (("get", "groups", "us-factories", "-o", "json"), "get-group.json"),
    ],
)
def test_tables_match_their_golden_text(repo: Path, args: tuple[str, ...], golden: str):
    result = edgectl(*args, "--repo", repo)
    assert result.returncode == 0, result.stderr
    # Commit ids depend on the time the fixture committed: the rest is compared byte for byte.
    matches_golden(golden, re.sub(r"(?m)^  [0-9a-f]{12} ", "  <commit> ", result.stdout))


def test_json_yaml_and_name_output(repo: Path):
    as_json = json.loads(edgectl("get", "rollouts", "--repo", repo, "-o", "json").stdout)
    assert as_json["kind"] == "List"
    names = [item["name"] for item in as_json["items"]]
    assert names == ["digits-cnn-1-1", ROLLOUT]
    mine = as_json["items"][1]
    assert mine["status"]["devices"]["byVersion"]["2.0.0"]["Failed"] == 1
    assert mine["spec"]["steps"][0]["percent"] == 10
    one = yaml.safe_load(edgectl("get", "rollout", ROLLOUT, "--repo", repo, "-o", "yaml").stdout)
    assert one["name"] == ROLLOUT and one["status"]["stableVersion"] == "1.0.0"
    assert edgectl("get", "rollouts", "--repo", repo, "-o", "name").stdout.split() == [
        "rollout/digits-cnn-1-1", f"rollout/{ROLLOUT}"]  # fmt: skip
    headless = edgectl("get", "groups", "--repo", repo, "--no-headers").stdout
    assert not headless.startswith("NAME") and "us-factories" in headless
    labelled = edgectl("get", "models", "--repo", repo, "-l", "acme.example/team=predictive-maintenance").stdout
    assert [line.split()[0] for line in labelled.splitlines()[1:]] == ["vibration-anomaly"]


def test_not_found_and_bad_input_fail_clearly(repo: Path, tmp_path: Path):
    missing = edgectl("get", "rollout", "nope", "--repo", repo)
    assert missing.returncode == 1 and 'rollout "nope" not found' in missing.stderr
    unknown = edgectl("get", "widgets", "--repo", repo)
    assert unknown.returncode == 2 and "unknown resource 'widgets'" in unknown.stderr
    selector = edgectl("get", "models", "--repo", repo, "-l", "a=b c")
    assert selector.returncode == 2 and "label selector" in selector.stderr
    no_backend = edgectl("get", "devices", "--state-dir", tmp_path / "nothing")
    assert no_backend.returncode == 1 and "no local backend" in no_backend.stderr


def test_devices_from_the_local_backend(tmp_path: Path, fleet_example: Path):
    backend = LocalBackend(tmp_path / "state")
    cortex = {"edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64"}
    factory = {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east"}
    backend.register_device("factory-1", {**cortex, **factory})
    backend.register_device("factory-2", {**cortex, **factory})
    backend.register_device("lab-1", {**cortex, "edgereconciler.io/ring": "canary"})
    backend.apply([Desired(d, "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu", ROLLOUT, None, True)
                   for d in ("factory-1", "factory-2")])  # fmt: skip
    backend.report_status("factory-1", "vibration-anomaly", AssignmentStatus(
        "Healthy", "2.0.0", "1.0.0", last_seen="2026-01-01T00:11:15+00:00", target_version="2.0.0"))  # fmt: skip
    backend.report_status("factory-2", "vibration-anomaly", AssignmentStatus(
        "Failed", "1.0.0", message="golden outputs differ by 0.5", reason="HealthCheckFailed",
        last_seen="2026-01-01T00:02:00+00:00", target_version="2.0.0"))  # fmt: skip
    backend.close()
    state = tmp_path / "state"
    table = edgectl("get", "devices", "--state-dir", state, "--repo", fleet_example, "-o", "wide")
    assert table.returncode == 0, table.stderr
    matches_golden("get-devices-wide.txt", table.stdout)
    grouped = edgectl("get", "devices", "--state-dir", state, "--repo", fleet_example, "--group", "canary-lab")
    assert [line.split()[0] for line in grouped.stdout.splitlines()[1:]] == ["lab-1"]
    failed = json.loads(edgectl("get", "device", "factory-2", "--state-dir", state, "-o", "json").stdout)
    assert failed["status"]["phase"] == "Failed" and failed["desiredVersion"] == "2.0.0"

    # With the controller's device registry at hand, -o wide says who is enrolled and until when.
    from datetime import UTC, datetime, timedelta

    from reconciler.deviceapi.sqlite_registry import SQLiteRegistry

    registry = SQLiteRegistry(state / "devices.sqlite")
    registry.record_certificate(
        "factory-1", 7, datetime(2026, 2, 1, tzinfo=UTC), None, datetime(2026, 1, 1, tzinfo=UTC)
    )
    registry.create_token(timedelta(hours=1), datetime.now(UTC), device="factory-2")
    registry.close()
    enrolled = edgectl("get", "devices", "--state-dir", state, "-o", "wide").stdout.splitlines()
    assert enrolled[0].split()[-3:] == ["ENROLMENT", "CERT", "EXPIRES"]
    states = {line.split()[0]: line.split()[-2:] for line in enrolled[1:]}
    assert states["factory-1"][0] == "Enrolled" and states["factory-1"][1].startswith("2026-02-01")
    assert states["factory-2"][0] == "Pending" and states["lab-1"][0] == "NotEnrolled"

    # describe device: what a person needs before logging into it, the agent's reason and the device's events.
    from reconciler.cluster import Event

    backend = LocalBackend(state)
    backend.record_event(Event("Device", "factory-2", "HealthCheckFailed", "2.0.0: golden outputs differ by 0.5",
                               "Warning", "vibration-anomaly"), datetime(2026, 1, 1, 0, 2, tzinfo=UTC))  # fmt: skip
    backend.close()
    described = edgectl("describe", "device", "factory-2", "--state-dir", state, "--repo", fleet_example)
    assert described.returncode == 0, described.stderr
    text = described.stdout
    assert "Profile:       arm-cortex-a-cpu" in text and "Enrolment:     Pending" in text
    assert "Phase:     Failed (HealthCheckFailed)" in text and "Message:   golden outputs differ by 0.5" in text
    assert "Installed: 1.0.0" in text and "<waiting for its build>" in text
    assert re.search(r"Warning +HealthCheckFailed +10m +1 +\[vibration-anomaly\] 2.0.0: golden", text), text
    missing = edgectl("describe", "device", "nope", "--state-dir", state)
    assert missing.returncode == 1 and 'device "nope" not found' in missing.stderr and "Traceback" not in missing.stderr
    events = edgectl("get", "events", "--for", "device/factory-2", "--state-dir", state, "-o", "json")
    [item] = json.loads(events.stdout)["items"]
    assert (item["reason"], item["involvedObject"]) == (
        "HealthCheckFailed", {"kind": "Device", "name": "factory-2", "model": "vibration-anomaly"})  # fmt: skip
    none = edgectl("get", "events", "--for", "rollout/x", "--state-dir", state)
    assert (none.returncode, none.stdout, none.stderr.strip()) == (0, "", "No events found.")
    wrong = edgectl("get", "events", "--for", "node/x", "--state-dir", state)
    assert wrong.returncode == 2 and "rollout/NAME or device/NAME" in wrong.stderr


_run = itertools.count()


@pytest.mark.kube
def test_devices_from_the_kubernetes_api(kubeconfig: Path):
    from kubernetes import client

    run = f"cli{next(_run)}-{int(time.time()) % 100000}"
    backend = kubernetes_backend(kubeconfig, namespace=f"edge-{run}", node_selector=f"test.edgereconciler.io/run={run}")
    backend.install()
    core = client.CoreV1Api(backend.api)
    names = [f"{run}-node-{i}" for i in range(3)]
    for name in names:
        labels = {"test.edgereconciler.io/run": run, "edgereconciler.io/hardware": "cortex-a"}
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    try:
        backend.sync()
        backend.apply([Desired(n, "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu", ROLLOUT, None, True)
                       for n in names[:2]])  # fmt: skip
        agent = kubernetes_backend(kubeconfig, namespace=backend.namespace, device=names[0])
        agent.sync()
        agent.report_status(names[0], "vibration-anomaly", AssignmentStatus("Healthy", "2.0.0", target_version="2.0.0"))
        args = ("get", "devices", "--backend", "kubernetes", "--kubeconfig", kubeconfig, "-n", backend.namespace,
                "-l", f"test.edgereconciler.io/run={run}")  # fmt: skip
        listed = edgectl(*args, "-o", "json")
        assert listed.returncode == 0, listed.stderr
        rows = {(item["name"], item["model"]): item for item in json.loads(listed.stdout)["items"]}
        assert set(rows) == {(names[0], "vibration-anomaly"), (names[1], "vibration-anomaly"), (names[2], None)}
        assert rows[(names[0], "vibration-anomaly")]["status"]["phase"] == "Healthy"
        waiting = rows[(names[1], "vibration-anomaly")]["status"] or {}
        assert waiting.get("phase", "Pending") == "Pending" and not waiting.get("installedVersion")
        table = edgectl(*args).stdout.splitlines()
        assert table[0].split() == ["NAME", "MODEL", "VERSION", "INSTALLED", "PHASE", "LAST", "SEEN"]
        assert table[1].split()[:5] == [names[0], "vibration-anomaly", "2.0.0", "2.0.0", "Healthy"]
        assert table[2].split()[:5] == [names[1], "vibration-anomaly", "2.0.0", "<none>", "Pending"]

        # Rollouts from the FleetRollout records the controller keeps (what `kubectl get frol` shows too).
        from reconciler.api.status import RolloutStatus
        from reconciler.cluster import StoredRollout

        assert backend.save_rollouts({ROLLOUT: StoredRollout(RolloutStatus.from_json(STATUS), synced=True)}) == 1
        mirrored = edgectl("get", "rollouts", "--backend", "kubernetes", "--kubeconfig", kubeconfig,
                           "-n", backend.namespace)  # fmt: skip
        assert mirrored.returncode == 0, mirrored.stderr
        lines = mirrored.stdout.splitlines()
        assert lines[0].split() == ["NAME", "MODEL", "VERSION", "PHASE", "STEP", "READY", "AGE"]
        assert lines[1].split()[:6] == [ROLLOUT, "vibration-anomaly", "2.0.0", "Progressing", "2", "18/40"]
    finally:
        for name in names:
            core.delete_node(name)


def test_rollout_status_exits_by_the_outcome(repo: Path, tmp_path: Path):
    waiting = edgectl("rollout", "status", ROLLOUT, "--repo", repo, "--timeout", "3s", "--interval", "0.5")
    assert waiting.returncode == 3 and "did not finish within 3s" in waiting.stderr
    assert "Progressing at step 2/3 (50%), 18/40 devices healthy on 2.0.0" in waiting.stdout
    for phase, code in (("Succeeded", 0), ("Aborted", 1)):
        work = tmp_path / phase
        subprocess.run(["git", "clone", "-q", str(repo), str(work)], check=True)
        path = work / "status" / "rollouts" / f"{ROLLOUT}.yaml"
        path.write_text(yaml.safe_dump({**STATUS, "phase": phase}, sort_keys=False))
        git("commit", "-qam", f"status: {phase}", cwd=work)
        git("push", "-q", "origin", f"HEAD:{phase.lower()}", cwd=work)
        done = edgectl("rollout", "status", ROLLOUT, "--repo", work, "--timeout", "30s")
        assert done.returncode == code, done.stdout + done.stderr
        assert phase in done.stdout


@pytest.mark.timeout(60)  # a watch that never prints must fail, not hang the suite
def test_watch_prints_again_when_the_status_changes(repo: Path, tmp_path: Path):
    watcher = subprocess.Popen([str(EDGECTL), "get", "rollouts", "--repo", str(repo), "-w"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "EDGECTL_NOW": NOW})  # fmt: skip
    try:
        assert watcher.stdout is not None
        first = [watcher.stdout.readline() for _ in range(3)]
        assert first[0].split()[:2] == ["NAME", "MODEL"] and "Progressing" in first[2]
        work = tmp_path / "push"
        subprocess.run(["git", "clone", "-q", str(repo), str(work)], check=True)
        path = work / "status" / "rollouts" / f"{ROLLOUT}.yaml"
        path.write_text(yaml.safe_dump({**STATUS, "phase": "Succeeded", "step": 3}, sort_keys=False))
        git("commit", "-qam", "status: succeeded", cwd=work)
        git("push", "-q", "origin", "main", cwd=work)
        again = [watcher.stdout.readline() for _ in range(2)]  # no headers the second time, as kubectl -w
        assert again[0].split()[0] == "digits-cnn-1-1"
        assert again[1].split()[:6] == [ROLLOUT, "vibration-anomaly", "2.0.0", "Succeeded", "3/3", "(100%)"]
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_a_remote_url_is_fetched_and_followed(git_server, tmp_path: Path):
    """`--repo URL`: the remote's branch as the controller sees it, fetched again on every read."""
    url, work = git_server.create("fleet-url")
    before = edgectl("get", "rollouts", "--repo", url, "-o", "name", env={"HOME": str(tmp_path)})
    assert before.returncode == 0, before.stderr
    assert before.stdout.split() == ["rollout/digits-cnn-1-1", "rollout/vibration-anomaly-2"]
    (work / "rollouts" / "digits-cnn-1-1.yaml").unlink()
    git("commit", "-qam", "retire digits-cnn-1-1", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    after = edgectl("get", "rollouts", "--repo", url, "-o", "name", env={"HOME": str(tmp_path)})
    assert after.stdout.split() == ["rollout/vibration-anomaly-2"]
