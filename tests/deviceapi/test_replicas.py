"""Two `edgectl run --leader-elect` processes against one real API server, each with its own state directory and
device API, sharing the fleet CA (the chart's Secret), the API server and the telemetry store's file (the chart's
state volume): a device enrolled at one replica is served by the other, reports and telemetry sent to either reach
the leader's view, a revocation refuses at both, both are ready, and a Git webhook that reaches the standby makes
the leader reconcile."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import urllib3
from kubernetes import client

from reconciler.cluster import AssignmentStatus, kubernetes_backend
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.client import DeviceClient, DeviceRefusedError
from reconciler.telemetry.aggregate import aggregate
from reconciler.telemetry.store import TelemetryStore

from ..device_fleet import free_port
from ..waiting import eventually

pytestmark = pytest.mark.kube
EDGECTL = Path(sys.executable).parent / "edgectl"
LABELS = {
    "acme.example/site-type": "factory", "acme.example/network": "ethernet",
    "topology.kubernetes.io/region": "us-east", "edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64",
}  # fmt: skip
SECRET = b"push-secret"
_runs = itertools.count()


class Replica:
    def __init__(self, name: str, root: Path, args: list[str]) -> None:
        self.name, self.log = name, root / f"{name}.log"
        self.operator, self.device_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [str(EDGECTL), "run", *args, "--state-dir", str(root / name), "--listen", f"127.0.0.1:{self.operator}",
             "--device-api", f"127.0.0.1:{self.device_port}", "--webhook-secret-file", str(root / "webhook"),
             "--telemetry-store", str(root / "telemetry.sqlite")],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env={**os.environ, "POD_NAME": name},
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.device_port}"

    def lines(self, message: str) -> int:
        text = self.log.read_text() if self.log.exists() else ""
        return sum(1 for line in text.splitlines() if f'"msg": "{message}"' in line)

    def get(self, path: str) -> int:
        try:
            return urllib3.request("GET", f"http://127.0.0.1:{self.operator}{path}", timeout=5, retries=False).status
        except urllib3.exceptions.HTTPError:
            return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


def test_two_replicas_serve_one_fleet(kubeconfig: Path, tmp_path: Path, fleet_bare_repo: Path):
    namespace = f"replicas{next(_runs)}-{int(time.time()) % 100000}"
    selector = f"test.edgereconciler.io/ns={namespace}"
    core = client.CoreV1Api(kubernetes_backend(kubeconfig).api)
    nodes = [f"{namespace}-edge-{i}" for i in range(8)]
    for name in nodes:
        labels = {**LABELS, "test.edgereconciler.io/ns": namespace, "kubernetes.io/hostname": name}
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    FleetCA.load_or_create(tmp_path / "ca")  # the CA both replicas mount
    (tmp_path / "webhook").write_bytes(SECRET)
    args = ["--repo", str(fleet_bare_repo), "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
            "--namespace", namespace, "--node-selector", selector, "--interval", "3600", "--ca-dir",
            str(tmp_path / "ca"), "--leader-elect"]  # fmt: skip
    kubernetes_backend(kubeconfig, namespace).install()
    replicas = [Replica("replica-a", tmp_path, args), Replica("replica-b", tmp_path, args)]
    try:
        eventually(lambda: all(r.lines("device API") for r in replicas), "both device APIs listen")
        leader = eventually(lambda: next((r for r in replicas if r.lines("reconciled")), None), "a first cycle")
        standby = next(r for r in replicas if r is not leader)
        assert [r.get("/readyz") for r in replicas] == [200, 200]  # the standby serves devices too

        observer = kubernetes_backend(kubeconfig, namespace)
        observer.sync()
        assigned = eventually(lambda: observer.sync() or observer.assignments(), "assignments")
        device, model = sorted(assigned)[0]

        token = subprocess.run([str(EDGECTL), "device", "token", "create", "--device", device, "--backend",
                                "kubernetes", "--kubeconfig", str(kubeconfig), "-n", namespace],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        identity = tmp_path / "device-identity"
        at_standby = DeviceClient(standby.url, device, identity, tmp_path / "ca" / "ca.crt", token=token)
        at_leader = DeviceClient(leader.url, device, identity, tmp_path / "ca" / "ca.crt")
        at_standby.ensure_identity()  # enrolled by the standby, served by the leader at once
        assert model in at_leader.assignments()
        assert model in at_standby.assignments()

        version = assigned[(device, model)].version
        at_leader.report(model, AssignmentStatus(phase="Healthy", installed_version=version, observed_generation=1))
        summary = {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "TelemetrySummary", "device": device,
                   "model": model, "version": version, "requests": 5, "errors": 1,
                   "latencyMs": {"buckets": [10.0, "+Inf"], "counts": [5, 0]}, "predictions": [4, 1],
                   "inputs": {}}  # fmt: skip
        for replica_client in (at_leader, at_standby):
            answer = replica_client.pool.request("POST", replica_client.telemetry_url, json=summary)
            assert answer.status == 202 and answer.json() == {"accepted": 1}
        observer.sync()
        rows = TelemetryStore(tmp_path / "telemetry.sqlite").window(model, [version], datetime.now(UTC) - timedelta(
            hours=1))  # fmt: skip
        stored = aggregate(rows, model, version, {device})
        assert (stored.requests, stored.errors, sum(r["summaries"] for r in rows)) == (10, 2, 2)
        assert observer.statuses()[(device, model)].phase == "Healthy"

        # A push's webhook that reaches the standby: the leader reconciles (its interval is an hour).
        cycles = leader.lines("reconciled")
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        hook = urllib3.request("POST", f"http://127.0.0.1:{standby.operator}/hooks/git", body=body,
                               headers={"X-Hub-Signature-256": signature}, timeout=5)  # fmt: skip
        assert hook.status == 202
        eventually(lambda: leader.lines("reconciled") > cycles, "the leader reconciles after the standby's webhook")
        assert standby.lines("reconciled") == 0

        revoked = subprocess.run([str(EDGECTL), "device", "revoke", device, "--backend", "kubernetes",
                                  "--kubeconfig", str(kubeconfig), "-n", namespace],
                                 capture_output=True, text=True)  # fmt: skip
        assert revoked.returncode == 0, revoked.stderr

        def refused(device_client: DeviceClient) -> bool:
            try:
                device_client.assignments()
            except DeviceRefusedError as exc:
                return exc.reason == "revoked"
            return False

        eventually(lambda: refused(at_leader) and refused(at_standby), "both replicas refuse the revoked device")
    finally:
        for replica in replicas:
            replica.stop()
        for name in nodes:
            core.delete_node(name)
