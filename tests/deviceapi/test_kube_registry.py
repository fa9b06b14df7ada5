"""Device identity kept in the API server (EdgeDevice and DeviceToken objects), shared by two device API replicas:
each replica is a ``KubernetesRegistry`` with its own watched caches over one real API server, as two pods are.
What one replica does, the other sees: a token spends once whichever replica is asked (also when both are asked
at once), a certificate issued by one authenticates at the other at once, a revocation refuses everywhere."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client

from reconciler.cluster import TemporaryClusterError, kubernetes_backend
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.identity import Identity, IdentityError, Reason
from reconciler.deviceapi.kube_registry import KubernetesRegistry

from .test_identity import csr_for, pem_cert, refused

pytestmark = pytest.mark.kube
EDGECTL = Path(sys.executable).parent / "edgectl"
_namespaces = itertools.count()


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def namespace(kubeconfig: Path) -> str:
    name = f"identity{next(_namespaces)}-{int(time.time()) % 100000}"
    kubernetes_backend(kubeconfig, name).install()  # the CRDs and the namespace
    return name


@pytest.fixture
def replicas(kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[tuple[Identity, Identity]]:
    """Two replicas: one fleet CA (the chart's Secret), one API server, nothing else shared."""
    ca = FleetCA.load_or_create(tmp_path / "ca")
    registries = [KubernetesRegistry(kubernetes_backend(kubeconfig, namespace).api, namespace) for _ in range(2)]
    yield Identity(ca, registries[0]), Identity(ca, registries[1])
    for registry in registries:
        registry.close()


def eventually(check, timeout: float = 30.0) -> None:
    """Until ``check()`` holds: a watch delivers within milliseconds; the deadline only stops a hung test."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the other replica never saw it"
        time.sleep(0.05)


def test_enrolment_at_one_replica_authenticates_at_the_other_at_once(replicas: tuple[Identity, Identity]):
    a, b = replicas
    token = a.registry.create_token(timedelta(hours=1), now(), labels={"site": "berlin"})
    issued = pem_cert(a.enrol(token, csr_for("cam-1"), now()).certificate)
    # No waiting for B's watch: a certificate newer than what B knows is looked up fresh.
    assert b.authenticate(issued, now()) == "cam-1"
    assert dict(b.registry.device("cam-1").labels) == {"site": "berlin"}
    refused(Reason.TOKEN_USED, b.enrol, token, csr_for("cam-1"), now())

    renewed = pem_cert(b.renew("cam-1", csr_for("cam-1"), now()).certificate)
    assert a.authenticate(renewed, now()) == "cam-1"
    assert a.authenticate(issued, now()) == "cam-1"  # the replaced one, within its grace
    refused(Reason.SUPERSEDED, a.authenticate, issued, now() + timedelta(hours=1))
    assert a.registry.device("cam-1", fresh=True).previous_serial == issued.serial_number


def test_a_token_spends_once_when_both_replicas_are_asked_at_once(replicas: tuple[Identity, Identity]):
    a, b = replicas
    for round_ in range(5):
        token = a.registry.create_token(timedelta(hours=1), now())
        results: list[object] = [None, None]

        def enrol(index: int, identity: Identity, name: str, token: str, results: list[object]) -> None:
            try:
                results[index] = identity.enrol(token, csr_for(name), now()).device
            except IdentityError as exc:
                results[index] = exc.reason

        threads = [threading.Thread(target=enrol, args=(i, r, f"race-{round_}-{i}", token, results))
                   for i, r in enumerate((a, b))]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [r for r in results if isinstance(r, str) and r.startswith("race-")]
        assert len(winners) == 1 and Reason.TOKEN_USED in results, results
        losers = {f"race-{round_}-0", f"race-{round_}-1"} - set(winners)
        assert a.registry.device(losers.pop(), fresh=True) is None  # the loser left nothing behind


def test_a_revocation_at_one_replica_refuses_at_the_other(replicas: tuple[Identity, Identity]):
    a, b = replicas
    token = a.registry.create_token(timedelta(hours=1), now(), device="cam-2")
    certificate = pem_cert(a.enrol(token, csr_for("cam-2"), now()).certificate)
    assert b.authenticate(certificate, now()) == "cam-2"
    assert a.registry.revoke("cam-2", now())

    def refused_at_b() -> bool:
        try:
            b.authenticate(certificate, now())
        except IdentityError as exc:
            return exc.reason == Reason.REVOKED
        return False

    eventually(refused_at_b)
    refused(Reason.DEVICE_REVOKED, b.registry.create_token, timedelta(hours=1), now(), "cam-2")
    assert not b.registry.revoke("never-enrolled", now())


def test_names_are_reserved_and_a_named_token_re_enrols(replicas: tuple[Identity, Identity]):
    a, b = replicas
    first = a.registry.create_token(timedelta(hours=1), now(), labels={"zone": "a"})
    a.enrol(first, csr_for("cam-3"), now())
    refused(Reason.DEVICE_EXISTS, b.enrol, b.registry.create_token(timedelta(hours=1), now()), csr_for("cam-3"), now())

    reserved = b.registry.create_token(timedelta(hours=1), now(), device="cam-4")  # reserves the name
    refused(Reason.DEVICE_EXISTS, a.enrol, a.registry.create_token(timedelta(hours=1), now()), csr_for("cam-4"), now())
    refused(Reason.TOKEN_DEVICE_MISMATCH, a.enrol, reserved, csr_for("cam-5"), now())
    assert a.enrol(reserved, csr_for("cam-4"), now()).device == "cam-4"

    again = b.registry.create_token(timedelta(hours=1), now(), device="cam-3")
    certificate = pem_cert(b.enrol(again, csr_for("cam-3"), now()).certificate)
    assert a.authenticate(certificate, now()) == "cam-3"
    assert dict(a.registry.device("cam-3", fresh=True).labels) == {"zone": "a"}  # a named token keeps labels
    expired = a.registry.create_token(timedelta(seconds=1), now() - timedelta(seconds=5))
    refused(Reason.TOKEN_EXPIRED, b.enrol, expired, csr_for("cam-6"), now())
    refused(Reason.TOKEN_UNKNOWN, b.enrol, expired.split(".")[0] + "." + "x" * 32, csr_for("cam-6"), now())


def test_a_failed_certificate_write_gives_the_token_back(replicas: tuple[Identity, Identity], monkeypatch):
    a, b = replicas
    token = a.registry.create_token(timedelta(hours=1), now())

    def unreachable(*args, **kwargs):
        raise TemporaryClusterError("create EdgeDevice: connection refused")

    monkeypatch.setattr(a.registry._devices, "create", unreachable)
    with pytest.raises(TemporaryClusterError):
        a.enrol(token, csr_for("cam-7"), now())
    monkeypatch.undo()
    [record] = [t for t in a.registry.tokens() if token.startswith(t.id)]
    assert record.used_at is None  # given back, in the API server (this replica's cache holds its own writes)
    assert b.enrol(token, csr_for("cam-7"), now()).device == "cam-7"


def test_edgectl_device_commands_work_on_the_cluster(kubeconfig: Path, namespace: str, tmp_path: Path):
    target = ["--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "-n", namespace]

    def edgectl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(EDGECTL), *args], capture_output=True, text=True, timeout=120)

    created = edgectl("device", "token", "create", "--expires", "30m", "--device", "cam-8", *target)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    registry = KubernetesRegistry(kubernetes_backend(kubeconfig, namespace).api, namespace, watch=False)
    identity = Identity(FleetCA.load_or_create(tmp_path / "ca"), registry)
    identity.enrol(token, csr_for("cam-8"), now())
    listing = edgectl("device", "list", *target)
    assert listing.returncode == 0 and "cam-8" in listing.stdout and "Enrolled" in listing.stdout, listing
    tokens = edgectl("device", "token", "list", "-o", "json", *target)
    assert token.split(".")[0] in tokens.stdout and token.split(".")[1] not in tokens.stdout  # never the secret
    assert edgectl("device", "revoke", "cam-8", *target).returncode == 0
    assert "Revoked" in edgectl("device", "list", *target).stdout
    missing = edgectl("device", "revoke", "nobody", *target)
    assert missing.returncode == 1 and "no device nobody" in missing.stderr
    objects = client.CustomObjectsApi(kubernetes_backend(kubeconfig, namespace).api).list_namespaced_custom_object(
        "edgereconciler.io", "v1alpha1", namespace, "devicetokens")  # fmt: skip
    assert all(token.split(".")[1] not in str(item) for item in objects["items"])  # only the digest is stored
