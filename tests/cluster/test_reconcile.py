"""Reconcile against both backends: the real kube-apiserver (Nodes + ModelAssignments) and SQLite.

The hashed share of devices gets assignments at each step, raising the percent only adds devices, and a
reconcile that changes nothing sends no write (counted at the HTTP layer for Kubernetes)."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from reconciler.api import FleetTree, load_fleet
from reconciler.cluster import AssignmentStatus, LocalBackend, kubernetes_backend
from reconciler.controller.reconcile import reconcile
from reconciler.gitops.files import read_fleet_dir
from reconciler.plan import Desired, RolloutPosition, bucket

ROLLOUT = "vibration-anomaly-2"
LABELS = {
    "acme.example/site-type": "factory",
    "acme.example/network": "ethernet",
    "topology.kubernetes.io/region": "us-east",
    "edgereconciler.io/hardware": "cortex-a",
    "kubernetes.io/arch": "arm64",
}
_run = itertools.count()


@pytest.fixture(scope="module")
def tree() -> FleetTree:
    return load_fleet(read_fleet_dir(Path(__file__).resolve().parents[2] / "fleet-example"))


class CountingRequests:
    """Counts HTTP requests per method that a kubernetes ApiClient sends."""

    def __init__(self, api: client.ApiClient) -> None:
        self.counts: Counter[str] = Counter()
        pool = api.rest_client.pool_manager
        original = pool.request

        def request(method: str, url: str, *args, **kwargs):
            self.counts[method.upper()] += 1
            return original(method, url, *args, **kwargs)

        pool.request = request

    def writes(self) -> int:
        return sum(n for method, n in self.counts.items() if method != "GET")


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[tuple[object, CountingRequests, list[str]]]:
    """A KubernetesBackend over 200 real Nodes of this test's own run label, in its own namespace."""
    run = f"run{next(_run)}-{int(time.time()) % 100000}"
    backend = kubernetes_backend(kubeconfig, namespace=f"edge-{run}", node_selector=f"test.edgereconciler.io/run={run}")
    backend.install()
    core = client.CoreV1Api(backend.api)
    names = [f"{run}-node-{i:03d}" for i in range(200)]
    for name in names:
        labels = {**LABELS, "test.edgereconciler.io/run": run, "kubernetes.io/hostname": name}
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    try:
        yield backend, CountingRequests(backend.api), names
    finally:
        backend.stop_watches()
        for name in names:
            core.delete_node(name)


def expected_in(names: list[str], percent: int) -> set[str]:
    return {n for n in names if bucket(ROLLOUT, n) < percent * 100}


def test_kubernetes_rollout_writes_the_hashed_quarter_then_the_rest_and_nothing_on_a_noop(
    kube, tree: FleetTree, kubeconfig: Path
):
    backend, requests, names = kube
    first = reconcile(tree, backend, {ROLLOUT: RolloutPosition(25)})
    quarter = expected_in(names, 25)
    assert 30 < len(quarter) < 70
    assert {d.device for d in first.changes.apply} == quarter
    assert first.applied == len(quarter) == requests.counts["PATCH"]

    objects = client.CustomObjectsApi(backend.api).list_namespaced_custom_object(
        "edgereconciler.io", "v1alpha1", backend.namespace, "modelassignments"
    )
    stored = {o["spec"]["device"]: o for o in objects["items"]}
    assert set(stored) == quarter
    sample = stored[min(quarter)]
    assert sample["metadata"]["name"] == f"{min(quarter)}.vibration-anomaly"
    assert sample["spec"]["version"] == "2.0.0" and sample["spec"]["profile"] == "arm-cortex-a-cpu"
    assert {m["manager"] for m in sample["metadata"]["managedFields"]} == {"edge-reconciler"}

    before = requests.writes()
    noop = reconcile(tree, backend, {ROLLOUT: RolloutPosition(25)})
    assert not noop.changes and requests.writes() == before

    # An agent reads only its own assignments (label selector), and never lists Nodes.
    device = min(quarter)
    agent_view = kubernetes_backend(kubeconfig, namespace=backend.namespace, device=device)
    agent_view.sync(inventory=False)
    assert set(agent_view.assignments()) == {(device, "vibration-anomaly")} and agent_view.devices() == []
    assert agent_view.assignments_for(device)["vibration-anomaly"][0].version == "2.0.0"

    everyone = reconcile(tree, backend, {ROLLOUT: RolloutPosition(100, "1.0.0")})
    assert {d.device for d in everyone.changes.apply} == set(names) - quarter
    assert requests.writes() == before + 200 - len(quarter)


def test_watches_keep_the_view_current_and_a_noop_sends_no_request_at_all(kube, tree: FleetTree):
    backend, requests, names = kube
    backend.start_watches()
    reconcile(tree, backend, {ROLLOUT: RolloutPosition(100)})
    assert len(backend.assignments()) == 200
    requests.counts.clear()
    result = reconcile(tree, backend, {ROLLOUT: RolloutPosition(100)})
    assert not result.changes and sum(requests.counts.values()) == 0

    # An agent reports status; a relabelled node leaves the group: the watch sees both.
    backend.report_status(names[0], "vibration-anomaly", AssignmentStatus("Healthy", installed_version="2.0.0"))
    core = client.CoreV1Api(backend.api)
    core.patch_node(names[1], {"metadata": {"labels": {"acme.example/decommissioned": "yes"}}})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        phase = backend.statuses().get((names[0], "vibration-anomaly"))
        moved = next(d for d in backend.devices() if d.name == names[1]).labels.get("acme.example/decommissioned")
        if phase and phase.phase == "Healthy" and moved:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("watch did not deliver the status update and the node relabel")
    result = reconcile(tree, backend, {ROLLOUT: RolloutPosition(100)})
    assert result.changes.delete == [(names[1], "vibration-anomaly")] and result.deleted == 1


def test_a_schema_breaking_spec_is_refused_as_permanent(kube):
    from reconciler.cluster import ClusterError
    from reconciler.plan import Desired

    backend, _, names = kube
    with pytest.raises(ClusterError) as caught:
        backend.apply(
            [Desired(names[0], "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu", ROLLOUT, "not-a-digest", True)]
        )
    assert "ModelAssignment" in str(caught.value)


def test_local_backend_walks_the_same_steps(tmp_path: Path, tree: FleetTree):
    backend = LocalBackend(tmp_path / "state")
    names = [f"local-{i:03d}" for i in range(200)]
    for name in names:
        backend.register_device(name, LABELS)
    first = reconcile(tree, backend, {ROLLOUT: RolloutPosition(25)})
    assert {d.device for d in first.changes.apply} == expected_in(names, 25) == {d for d, _ in backend.assignments()}
    writes = backend.writes
    assert not reconcile(tree, backend, {ROLLOUT: RolloutPosition(25)}).changes
    assert backend.writes == writes
    reconcile(tree, backend, {ROLLOUT: RolloutPosition(100)})
    assert len(backend.assignments()) == 200
    spec, generation = backend.assignment(names[0], "vibration-anomaly")
    assert (spec.version, generation) == ("2.0.0", 1)

    # A second process (an agent) reports through its own connection.
    agent = LocalBackend(tmp_path / "state")
    agent.report_status(names[0], "vibration-anomaly", AssignmentStatus("Healthy", installed_version="2.0.0"))
    assert backend.statuses()[(names[0], "vibration-anomaly")].phase == "Healthy"
    backend.remove_device(names[1])
    assert reconcile(tree, backend, {ROLLOUT: RolloutPosition(100)}).changes.delete == [(names[1], "vibration-anomaly")]


def test_a_lab_assignment_and_its_benchmark_survive_the_crd_schema(kube):
    """The ModelAssignment CRD keeps ``spec.benchmark`` (a field it did not know would be pruned, and the lab
    device would install the version) and accepts the Benchmarked phase with its figures."""
    from reconciler.plan import Desired

    backend, _, names = kube
    lab = Desired(names[0], "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu", ROLLOUT, "a" * 64, False,
                  benchmark=True)  # fmt: skip
    fleet = Desired(names[1], "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu", ROLLOUT, "a" * 64, True)
    backend.apply([lab, fleet])
    backend.sync()
    stored = backend.assignments()
    assert stored[(names[0], "vibration-anomaly")] == lab and stored[(names[1], "vibration-anomaly")] == fleet
    figures = {"labP50Ms": 0.5, "labP95Ms": 0.9, "labMemoryBytes": 30_000_000, "labTemperatureC": 51.2}
    backend.report_status(names[0], "vibration-anomaly",
                          AssignmentStatus("Benchmarked", target_version="2.0.0", extra=figures))  # fmt: skip
    backend.sync()
    status = backend.statuses()[(names[0], "vibration-anomaly")]
    assert (status.phase, status.target_version) == ("Benchmarked", "2.0.0") and dict(status.extra) == figures


def test_local_backend_reads_what_changed_since_its_last_read(tmp_path: Path):
    """Unchanged rows come back as the objects of the last read (no decoding); a changed row, written by another
    process's connection here, is decoded again; a removed one is gone."""
    backend, other = LocalBackend(tmp_path), LocalBackend(tmp_path)
    try:
        for name in ("edge-a", "edge-b"):
            backend.register_device(name, {"site": "one"})
        first = {device.name: device for device in backend.devices()}
        other.register_device("edge-b", {"site": "two"})
        other.remove_device("edge-a")
        other.register_device("edge-c", {"site": "three"})
        second = {device.name: device for device in backend.devices()}
        assert set(second) == {"edge-b", "edge-c"}
        assert second["edge-b"].labels == {"site": "two"} and second["edge-b"] is not first["edge-b"]
        third = {device.name: device for device in backend.devices()}
        assert third["edge-b"] is second["edge-b"] and third["edge-c"] is second["edge-c"]

        other.apply([Desired(n, "m", "1.0.0", "cpu", "r", None, True) for n in ("edge-b", "edge-c")])
        other.report_status("edge-b", "m", AssignmentStatus(phase="Healthy", installed_version="1.0.0"))
        specs, statuses = backend.assignments(), backend.statuses()
        assert set(statuses) == {("edge-b", "m")} and statuses["edge-b", "m"].phase == "Healthy"
        other.report_status("edge-b", "m", AssignmentStatus(phase="Failed", installed_version="1.0.0"))
        assert backend.statuses()["edge-b", "m"].phase == "Failed"
        assert backend.assignments()["edge-c", "m"] is specs["edge-c", "m"]
    finally:
        backend.close()
        other.close()
