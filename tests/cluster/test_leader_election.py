"""Leader election on a real API server: one holder at a time, a graceful stop hands over in a retry period, a
crashed leader only after its Lease expires; two `edgectl run --leader-elect` processes, only one reconciles."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from reconciler.cluster import kubernetes_backend, leader_elector

pytestmark = pytest.mark.kube
EDGECTL = Path(sys.executable).parent / "edgectl"
_run = itertools.count()


def namespace(kubeconfig: Path) -> str:
    name = f"lease{next(_run)}-{int(time.time()) % 100000}"
    api = kubernetes_backend(kubeconfig).api
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def test_one_holder_handover_and_expiry(kubeconfig: Path):
    ns = namespace(kubeconfig)
    timing = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}
    first = leader_elector(kubeconfig, ns, "controller", "first", **timing)
    second = leader_elector(kubeconfig, ns, "controller", "second", **timing)
    assert first.try_acquire_or_renew() and first.is_leader
    assert not second.try_acquire_or_renew() and not second.is_leader
    assert first.try_acquire_or_renew()  # a renew keeps it

    first.stop(release=True)  # graceful: the Lease is free at once
    assert not first.is_leader
    assert second.try_acquire_or_renew()

    # A crash (no release): the other candidate waits for the Lease to expire, then takes it.
    second.stop(release=False)
    third = leader_elector(kubeconfig, ns, "controller", "third", **timing)
    assert not third.try_acquire_or_renew()
    start = time.monotonic()
    while not third.try_acquire_or_renew():
        assert time.monotonic() - start < 10, "the expired Lease was never taken over"
        time.sleep(0.25)
    assert time.monotonic() - start >= 1.0  # it had to wait for the expiry, not a moment less
    lease = client.CoordinationV1Api(kubernetes_backend(kubeconfig).api).read_namespaced_lease("controller", ns)
    assert lease.spec.holder_identity == "third" and lease.spec.lease_transitions == 2


def test_two_controller_processes_only_the_leader_reconciles(kubeconfig: Path, tmp_path: Path, fleet_bare_repo: Path):
    ns = namespace(kubeconfig)

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [str(EDGECTL), "run", "--repo", str(fleet_bare_repo), "--backend", "kubernetes",
             "--kubeconfig", str(kubeconfig), "--namespace", ns, "--node-selector", f"test.edgereconciler.io/ns={ns}",
             "--state-dir", str(tmp_path / name), "--interval", "0.5", "--listen", "", "--device-api", "",
             "--leader-elect"],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), env={**os.environ, "POD_NAME": name},
        )  # fmt: skip
        return process, log

    def cycles(log: Path) -> int:
        return sum(1 for line in log.read_text().splitlines() if '"msg": "reconciled"' in line)

    (a, a_log), (b, b_log) = start("replica-a"), start("replica-b")
    try:
        deadline = time.monotonic() + 60
        while cycles(a_log) + cycles(b_log) < 6 and time.monotonic() < deadline:
            time.sleep(0.5)
        counts = {"replica-a": cycles(a_log), "replica-b": cycles(b_log)}
        leader = max(counts, key=counts.__getitem__)
        standby = "replica-b" if leader == "replica-a" else "replica-a"
        assert counts[leader] >= 6 and counts[standby] == 0, counts
        assert "standing by" in (a_log if standby == "replica-a" else b_log).read_text()
        lease = client.CoordinationV1Api(kubernetes_backend(kubeconfig).api).read_namespaced_lease(
            "edge-reconciler-controller", ns)  # fmt: skip
        assert lease.spec.holder_identity == leader

        # The leader stops gracefully: it releases the Lease and the standby takes over within seconds.
        leading = a if leader == "replica-a" else b
        leading.send_signal(signal.SIGTERM)
        leading.wait(30)
        standby_log = a_log if standby == "replica-a" else b_log
        deadline = time.monotonic() + 20
        while cycles(standby_log) == 0 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert cycles(standby_log) > 0, "the standby never took over"
        took_over = next(line for line in standby_log.read_text().splitlines() if "became the leader" in line)
        assert json.loads(took_over)["identity"] == standby
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
