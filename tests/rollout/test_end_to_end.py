"""Rollouts end to end: a real Git remote, the controller on the local backend, real agents (download, verify,
A/B install, health check) for 20 devices, artifacts from the build pipeline served through TUF.

A good version walks 5 % -> 25 % -> 100 % to Succeeded; an offline device does not block it. A version whose
health check fails aborts at the first step, exactly one rollback commit names the measured failure rate, and
every device of that step ends on the previous version."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.plan import bucket

from ..device_fleet import FLEET, MODEL, Fleet, skew_golden
from ..git_server import GitServer, git

ROLLOUT = "vibration-anomaly-2"
LABELS = {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east",
          "edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64"}  # fmt: skip
ROLLOUT_YAML = """apiVersion: edgereconciler.io/v1alpha1
kind: Rollout
metadata:
  name: vibration-anomaly-2
spec:
  model: vibration-anomaly
  version: "2.0.0"
  groups: [us-factories]
  steps:
    - percent: 5
    - percent: 25
    - percent: 100
  maxUnavailable: 1
  offlineAfter: 15s
  analysis:
    maxFailureRate: 0.05
    minDevicesReporting: 1
"""


def fleet_repo(git_server: GitServer, tmp_path: Path) -> str:
    seed = tmp_path / "seed"
    shutil.copytree(FLEET, seed, ignore=shutil.ignore_patterns("*.keras", "*.npz"))
    (seed / "rollouts" / "digits-cnn-1-1.yaml").unlink()
    (seed / "rollouts" / f"{ROLLOUT}.yaml").write_text(ROLLOUT_YAML)
    return git_server.create("fleet", seed, status_branch="main")[0]


def status_of(git_server: GitServer) -> dict:
    return yaml.safe_load(git("show", f"main:status/rollouts/{ROLLOUT}.yaml", cwd=git_server.base / "fleet.git"))


def rollback_commits(git_server: GitServer) -> list[str]:
    return [s for s in git("log", "--format=%s", "main", cwd=git_server.base / "fleet.git").splitlines()
            if s.startswith("rollback:")]  # fmt: skip


def setup(fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store, devices: int = 20, backend=None):
    """The controller and one agent per device, on ``backend`` (default: the fleet's local backend)."""
    url = fleet_repo(git_server, tmp_path)
    names = [f"factory-{i:02d}" for i in range(devices)]
    if backend is None:
        backend = fleet.backend
        for name in names:
            backend.register_device(name, LABELS)
    config = ControllerConfig(url, fleet.root / "controller-state", store=build_store.root)
    controller = Controller(config, backend)
    agents = {name: fleet.agent(name, backend=backend) for name in names}
    return controller, agents, names


@pytest.fixture(params=["local", "kubernetes"])
def backend(request, tmp_path: Path):
    """None for the local backend; a KubernetesBackend over 20 real Nodes of this test's own label."""
    if request.param == "local":
        yield None
        return
    from reconciler.cluster import kubernetes_backend

    from ..kube_nodes import edge_nodes

    kubeconfig = request.getfixturevalue("kubeconfig")
    run = f"e2e{int(time.time() * 1000) % 10**8}"
    kube = kubernetes_backend(kubeconfig, namespace=run, node_selector=f"test.edgereconciler.io/run={run}")
    kube.install()
    with edge_nodes(kube, run, [f"factory-{i:02d}" for i in range(20)], LABELS):
        yield kube


def test_a_good_version_walks_every_step_to_succeeded(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store, backend
):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    controller, agents, names = setup(fleet, git_server, tmp_path, build_store, backend=backend)
    devices = controller.backend
    offline = names[-1]  # this device never runs its agent
    steps_seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        controller.cycle()
        status = status_of(git_server)
        steps_seen.append(status["step"])
        if status["phase"] == "Succeeded":
            break
        for name, agent in agents.items():
            if name != offline:
                agent.cycle()
        time.sleep(0.5)  # the offline device counts as unavailable once offlineAfter (15 s) has passed
    assert status["phase"] == "Succeeded", status
    decisions = [h["decision"] for h in status["history"]]
    assert decisions[0] == "Start" and decisions[-1] == "Succeed" and decisions.count("Promote") == 2
    assert sorted(set(steps_seen)) == [1, 2, 3]
    assert rollback_commits(git_server) == []
    devices.sync()
    healthy = {d for (d, _), s in devices.statuses().items() if s.phase == "Healthy" and s.installed_version == "2.0.0"}
    assert healthy == set(names) - {offline}
    assert devices.assignments()[(offline, MODEL)].version == "2.0.0"  # waiting for it when it comes back
    if backend is not None:  # mirrored where kubectl reads it (kubectl get edge / get fleetrollouts)
        from kubernetes import client

        mirror = client.CustomObjectsApi(backend.api).get_namespaced_custom_object(
            "edgereconciler.io", "v1alpha1", backend.namespace, "fleetrollouts", ROLLOUT
        )
        assert (mirror["status"]["phase"], mirror["status"]["version"]) == ("Succeeded", "2.0.0")
        assert mirror["status"]["ready"] == f"{len(names) - 1}/{len(names)}"
        assert mirror["status"]["observedGeneration"] == mirror["metadata"]["generation"]


def test_a_failing_canary_aborts_and_the_step_returns_to_the_previous_version(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    # the device reproduces other outputs than the build recorded
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2, edit=skew_golden))
    controller, agents, names = setup(fleet, git_server, tmp_path, build_store)
    # The first step that holds any device is where the canaries are (5 % of 20 devices may hold none).
    percents = [5, 25, 100]
    first = next(i for i, p in enumerate(percents) if any(bucket(ROLLOUT, n) < p * 100 for n in names))
    canaries = {n for n in names if bucket(ROLLOUT, n) < percents[first] * 100}
    for _ in range(6):
        started = time.monotonic()
        outcome = controller.cycle()
        aborted = status_of(git_server)["phase"] == "Aborted"
        for agent in agents.values():
            agent.cycle()
        if aborted:
            back = all(fleet.backend.statuses()[(n, MODEL)].installed_version == "1.0.0" for n in canaries)
            print(f"\nabort cycle -> canaries back on 1.0.0: {time.monotonic() - started:.2f} s "
                  f"({len(canaries)} device(s), one controller cycle and one agent cycle: {back})")  # fmt: skip
            break
    status = status_of(git_server)
    assert status["phase"] == "Aborted" and status["step"] == first + 1
    [message] = rollback_commits(git_server)
    expected = f"failureRate 1 > 0.05 on {len(canaries)} device(s); returning to 1.0.0"
    assert f"aborted at step {first + 1} of {len(percents)} ({percents[first]}%): {expected}" in message
    # The next cycles write the stable version to the canaries, and their agents install it.
    for _ in range(2):
        outcome = controller.cycle()
        for agent in agents.values():
            agent.cycle()
    assert outcome.rollbacks == [] and len(rollback_commits(git_server)) == 1
    for name in names:
        state = fleet.backend.statuses()[(name, MODEL)]
        assert (state.phase, state.installed_version) == ("Healthy", "1.0.0"), name
