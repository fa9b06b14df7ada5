"""The device API server over real TLS on loopback, with real certificates from the fleet CA and a real local
backend: enrolment, then mutual TLS for assignments (ETag, 304, long-poll), status, telemetry, resumable
downloads and TUF files. The attacks are in test_attacks.py, which uses the fixtures here."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from reconciler.artifact import sketches
from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import AssignmentStatus, LocalBackend, PermanentClusterError, TemporaryClusterError
from reconciler.deviceapi import protocol
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.identity import Identity
from reconciler.deviceapi.limits import Limits, TokenBucket
from reconciler.deviceapi.server import DeviceAPIServer
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry
from reconciler.plan import Desired
from reconciler.telemetry.store import TelemetryStore
from reconciler.telemetry.summaries import recorder

from ..device_fleet import stored_telemetry

MODEL = "vibration-anomaly"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
TELEMETRY = {
    "apiVersion": "edgereconciler.io/v1alpha1", "kind": "TelemetrySummary", "model": MODEL, "version": "1.0.0",
    "requests": 3, "errors": 0, "latencyMs": {"buckets": [1.0, "+Inf"], "counts": [3, 0], "p50": 1.0, "p95": 1.0,
    "p99": 1.0}, "predictions": [2, 1], "inputs": {"inputMean": {"edges": [0.0, 1.0], "counts": [0, 3, 0]}},
}  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


def csr_for(name: str) -> tuple[str, bytes]:
    """(CSR PEM, private key PEM) for a device called ``name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return csr.public_bytes(serialization.Encoding.PEM).decode(), private


def desired(device: str, model: str = MODEL, version: str = "1.0.0") -> Desired:
    return Desired(device, model, version, "cpu-fp32", "rollout-1", None, True)


@dataclass
class DeviceFleet:
    """A fleet CA, registry, local backend, artifact store and TUF folder behind one running DeviceAPIServer."""

    root: Path
    ca: FleetCA
    registry: SQLiteRegistry
    identity: Identity
    backend: LocalBackend
    digest: str
    limits: Limits
    server: DeviceAPIServer | None = None
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    telemetry: list[tuple[str, dict]] = field(default_factory=list)
    ca_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ca_file = self.root / "fleet-ca.crt"
        self.ca_file.write_text(self.ca.certificate_pem)

    def start(self, **overrides) -> DeviceAPIServer:
        cert, key = self.ca.issue_server(["127.0.0.1", "localhost"], timedelta(days=1), now())
        (self.root / "server.crt").write_bytes(cert)
        (self.root / "server.key").write_bytes(key)
        options = dict(
            blobs=self.root / "store" / "blobs" / "sha256", tuf=self.root / "tuf", deltas=self.delta,
            on_telemetry=self.record_telemetry, registry=self.metrics,
            register_enrolled=True, limits=self.limits,
        )  # fmt: skip
        options.update(overrides)
        context = self.ca.server_context(self.root / "server.crt", self.root / "server.key")
        self.server = DeviceAPIServer(("127.0.0.1", 0), self.identity, lambda: self.backend, context, **options)
        return self.server.start()

    def record_telemetry(self, backend: LocalBackend, device: str, summary: dict) -> bool | str:
        self.telemetry.append((device, summary))
        return self._record(backend, device, summary)

    @cached_property
    def _record(self):
        return recorder(TelemetryStore(self.root / "telemetry.sqlite"), now)

    def stored_telemetry(self) -> list[dict]:
        return stored_telemetry(self.root / "telemetry.sqlite", MODEL)

    def delta(self, base: str, target: str) -> Path:
        return ArtifactStore(self.root / "store").delta(base, target)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def token(self, **options) -> str:
        options.setdefault("lifetime", timedelta(hours=1))
        return self.registry.create_token(now=options.pop("now", now()), **options)

    def enrol(self, name: str, labels: dict[str, str] | None = None) -> Path:
        """Enrol ``name`` over the API (TLS without a client certificate); returns its PEM (certificate + key)."""
        csr, key = csr_for(name)
        response = self.anonymous().request(
            "POST", f"{self.url}{protocol.ENROL}", json={"token": self.token(labels=labels), "csr": csr}
        )
        assert response.status == 200, response.data
        answer = protocol.Certificate.model_validate_json(response.data)
        assert answer.device == name and answer.ca == self.ca.certificate_pem
        return self.write_identity(name, answer.certificate.encode(), key)

    def write_identity(self, name: str, certificate: bytes, key: bytes) -> Path:
        pem = self.root / "devices" / f"{name}.pem"
        pem.parent.mkdir(parents=True, exist_ok=True)
        pem.write_bytes(certificate + key)
        return pem

    def issue(self, name: str, issued: datetime, lifetime: timedelta = timedelta(days=1)) -> Path:
        """A certificate issued directly by the CA (another validity than the API would give)."""
        csr, key = csr_for(name)
        certificate = self.ca.issue_device(csr, name, lifetime, issued)
        return self.write_identity(
            f"{name}.{certificate.serial_number:x}", certificate.public_bytes(serialization.Encoding.PEM), key
        )

    def anonymous(self) -> urllib3.PoolManager:
        return urllib3.PoolManager(ssl_context=self.ca.client_context(), retries=False, timeout=30)

    def client(self, pem: Path) -> urllib3.PoolManager:
        return urllib3.PoolManager(ssl_context=self.ca.client_context(pem), retries=False, timeout=90)

    def refusals(self, reason: str) -> float:
        return self.metrics.get_sample_value("edge_reconciler_device_api_refusals_total", {"reason": reason}) or 0.0


def make_fleet(root: Path, limits: Limits) -> DeviceFleet:
    ca = FleetCA.load_or_create(root / "ca")
    registry = SQLiteRegistry(root / "registry.sqlite")
    backend = LocalBackend(root / "state")
    store = ArtifactStore(root / "store")
    digest = store.put_bytes(PAYLOAD)
    (root / "tuf" / "metadata").mkdir(parents=True)
    (root / "tuf" / "metadata" / "timestamp.json").write_text('{"signed": {}}')
    (root / "secret.txt").write_text("do not serve")
    return DeviceFleet(root, ca, registry, Identity(ca, registry), backend, digest, limits)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DeviceFleet]:
    fleet = make_fleet(tmp_path, Limits(poll_seconds=0.2))
    fleet.start()
    try:
        yield fleet
    finally:
        assert fleet.server is not None
        fleet.server.close()
        fleet.backend.close()
        fleet.registry.close()


def test_a_device_enrols_then_reads_reports_and_uploads_over_mutual_tls(fleet: DeviceFleet):
    pem = fleet.enrol("sensor-1", labels={"site": "plant-a"})
    assert [d.name for d in fleet.backend.devices()] == ["sensor-1"]
    assert fleet.backend.devices()[0].labels == {"site": "plant-a"}
    fleet.backend.apply([desired("sensor-1"), desired("sensor-2")])
    http = fleet.client(pem)

    listing = http.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}")
    assert listing.status == 200 and listing.headers["Content-Type"] == "application/json"
    body = protocol.Assignments.model_validate_json(listing.data)
    assert body.device == "sensor-1" and [(a.model, a.generation) for a in body.assignments] == [(MODEL, 1)]
    assert body.assignments[0].spec["device"] == "sensor-1" and body.assignments[0].spec["version"] == "1.0.0"
    etag = listing.headers["ETag"]
    assert etag == f'"{hashlib.sha256(listing.data).hexdigest()}"'
    unchanged = http.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}", headers={"If-None-Match": etag})
    assert unchanged.status == 304 and unchanged.data == b"" and unchanged.headers["ETag"] == etag

    report = {"phase": "Healthy", "installedVersion": "1.0.0", "observedGeneration": 1, "bytesTransferred": 12,
              "lastSeen": "1999-01-01T00:00:00Z"}  # fmt: skip
    stored = http.request("PUT", f"{fleet.url}/v1/status/{MODEL}", json=report)
    assert stored.status == 204
    status = fleet.backend.statuses()[("sensor-1", MODEL)]
    assert (status.phase, status.installed_version, status.observed_generation) == ("Healthy", "1.0.0", 1)
    assert status.extra == {"bytesTransferred": 12}
    assert status.last_seen is not None and status.last_seen.startswith(str(now().year))  # the server's clock

    sketch = sketches.new()
    sketch.update(np.array([0.2, 0.5, 0.7], dtype=np.float32))
    summary = {**TELEMETRY, "device": "sensor-1", "sketches": {"input_0[0]": sketches.encode(sketch)}}
    forged = http.request("POST", f"{fleet.url}{protocol.TELEMETRY}",
                          json={**summary, "sketches": {"input_0[0]": "bm90IGEgc2tldGNo"}})  # fmt: skip
    assert forged.status == 400 and "sketches.input_0[0]" in json.dumps(forged.json()), forged.json()
    accepted = http.request("POST", f"{fleet.url}{protocol.TELEMETRY}", json=summary)
    assert accepted.status == 202 and accepted.json() == {"accepted": 1}
    assert fleet.telemetry == [("sensor-1", {**summary, "droppedBefore": 0, "errorsByKind": {}})]
    [stored_summary] = fleet.stored_telemetry()
    assert (stored_summary["device"], stored_summary["model"], stored_summary["requests"]) == (
        "sensor-1", MODEL, TELEMETRY["requests"])  # fmt: skip
    other_model = http.request("POST", f"{fleet.url}{protocol.TELEMETRY}", json={**summary, "model": "not-assigned"})
    assert other_model.status == 202 and other_model.json() == {"accepted": 0, "reason": "not-assigned"}
    assert len(fleet.stored_telemetry()) == 1  # acknowledged (no use sending it again), never stored


def test_a_long_poll_returns_when_the_assignment_changes(fleet: DeviceFleet):
    pem = fleet.enrol("sensor-1")
    fleet.backend.apply([desired("sensor-1")])
    http = fleet.client(pem)
    etag = http.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}").headers["ETag"]

    started = time.monotonic()
    quiet = http.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}?wait=1", headers={"If-None-Match": etag})
    assert quiet.status == 304 and 0.9 <= time.monotonic() - started < 5

    timer = threading.Timer(0.5, lambda: fleet.backend.apply([desired("sensor-1", version="2.0.0")]))
    timer.start()
    started = time.monotonic()
    changed = http.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}?wait=30", headers={"If-None-Match": etag})
    waited = time.monotonic() - started
    timer.join()
    assert changed.status == 200 and changed.headers["ETag"] != etag and 0.4 <= waited < 10
    [assignment] = protocol.Assignments.model_validate_json(changed.data).assignments
    assert (assignment.generation, assignment.spec["version"]) == (2, "2.0.0")


def test_a_blob_download_resumes_with_if_range_and_tuf_files_are_served(fleet: DeviceFleet):
    http = fleet.client(fleet.enrol("sensor-1"))
    url = f"{fleet.url}/artifacts/sha256/{fleet.digest}"
    whole = http.request("GET", url)
    assert whole.status == 200 and whole.data == PAYLOAD and whole.headers["ETag"] == f'"{fleet.digest}"'
    assert whole.headers["Accept-Ranges"] == "bytes" and whole.headers["Repr-Digest"].startswith("sha-256=:")

    resumed = http.request("GET", url, headers={"Range": "bytes=700000-", "If-Range": f'"{fleet.digest}"'})
    assert resumed.status == 206 and resumed.data == PAYLOAD[700000:]
    assert resumed.headers["Content-Range"] == f"bytes 700000-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
    middle = http.request("GET", url, headers={"Range": "bytes=10-19"})
    assert middle.status == 206 and middle.data == PAYLOAD[10:20]
    stale = http.request("GET", url, headers={"Range": "bytes=100-", "If-Range": '"something-else"'})
    assert stale.status == 200 and stale.data == PAYLOAD
    beyond = http.request("GET", url, headers={"Range": f"bytes={len(PAYLOAD)}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(PAYLOAD)}"
    assert protocol.Refusal.model_validate_json(beyond.data).reason == "range-not-satisfiable"
    head = http.request("HEAD", url)
    assert head.status == 200 and head.data == b"" and head.headers["Content-Length"] == str(len(PAYLOAD))

    metadata = http.request("GET", f"{fleet.url}/tuf/metadata/timestamp.json")
    assert metadata.status == 200 and metadata.data == b'{"signed": {}}'
    tail = http.request("GET", f"{fleet.url}/tuf/metadata/timestamp.json",
                        headers={"Range": "bytes=2-", "If-Range": metadata.headers["ETag"]})  # fmt: skip
    assert tail.status == 206 and tail.data == b'{"signed": {}}'[2:]
    # A signed target is named by its sha256, and that is its ETag: the agent's If-Range resumes it.
    target = fleet.root / "tuf" / "targets" / "m" / "1.0.0" / "p" / f"{fleet.digest}.model.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    target_url = f"{fleet.url}/tuf/targets/m/1.0.0/p/{fleet.digest}.model.onnx"
    rest = http.request("GET", target_url, headers={"Range": "bytes=700000-", "If-Range": f'"{fleet.digest}"'})
    assert rest.status == 206 and rest.data == PAYLOAD[700000:] and rest.headers["ETag"] == f'"{fleet.digest}"'
    for path in ["/tuf/../secret.txt", "/tuf/%2e%2e/secret.txt", "/tuf/metadata/%2e%2e/%2e%2e/secret.txt",
                 "/tuf/metadata", "/artifacts/sha256/" + "0" * 64, f"/artifacts/sha256/{fleet.digest.upper()}",
                 "/artifacts/sha256/../../secret.txt"]:  # fmt: skip
        answer = http.request("GET", f"{fleet.url}{path}")
        assert answer.status == 404, path
        assert protocol.Refusal.model_validate_json(answer.data).reason == "not-found"


def test_a_delta_is_made_on_first_request_and_served_with_range(fleet: DeviceFleet):
    http = fleet.client(fleet.enrol("sensor-1"))
    target = ArtifactStore(fleet.root / "store").put_bytes(PAYLOAD[:500000] + b"changed" + PAYLOAD[500007:])
    url = f"{fleet.url}/artifacts/delta/{fleet.digest}/{target}"
    delta = http.request("GET", url)
    assert delta.status == 200 and 0 < len(delta.data) < len(PAYLOAD) // 10
    rest = http.request("GET", url, headers={"Range": "bytes=5-", "If-Range": delta.headers["ETag"]})
    assert rest.status == 206 and rest.data == delta.data[5:]
    missing = http.request("GET", f"{fleet.url}/artifacts/delta/{fleet.digest}/{'1' * 64}")
    assert missing.status == 404 and protocol.Refusal.model_validate_json(missing.data).reason == "no-delta"


def test_renewal_gives_a_fresh_certificate_and_the_old_one_is_superseded_later(fleet: DeviceFleet):
    pem = fleet.enrol("sensor-1")
    csr, key = csr_for("sensor-1")
    renewed = fleet.client(pem).request("POST", f"{fleet.url}{protocol.RENEW}", json={"csr": csr})
    assert renewed.status == 200, renewed.data
    answer = protocol.Certificate.model_validate_json(renewed.data)
    fresh = fleet.write_identity("sensor-1-new", answer.certificate.encode(), key)
    assert fleet.client(fresh).request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}").status == 200
    assert fleet.client(pem).request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}").status == 200  # grace period


def test_telemetry_is_rate_limited_per_device_with_retry_after(fleet: DeviceFleet):
    assert fleet.server is not None
    fleet.server.telemetry_bucket = TokenBucket(rate=0.5, burst=3)
    first, second = fleet.client(fleet.enrol("sensor-1")), fleet.client(fleet.enrol("sensor-2"))
    answers = [first.request("POST", f"{fleet.url}{protocol.TELEMETRY}", json={**TELEMETRY, "device": "sensor-1"})
               for _ in range(4)]  # fmt: skip
    assert [a.status for a in answers] == [202, 202, 202, 429]
    assert answers[-1].headers["Retry-After"] == "2"
    assert protocol.Refusal.model_validate_json(answers[-1].data).reason == "rate-limited"
    other = second.request("POST", f"{fleet.url}{protocol.TELEMETRY}", json={**TELEMETRY, "device": "sensor-2"})
    assert other.status == 202 and len(fleet.telemetry) == 4
    assert fleet.refusals("rate-limited") == 1


def test_the_device_client_speaks_the_same_protocol(fleet: DeviceFleet):
    """The agent's side (reconciler.deviceapi.client) against this server: enrol, assignments, report."""
    client_module = pytest.importorskip("reconciler.deviceapi.client")
    fleet.backend.apply([desired("sensor-9")])
    client = client_module.DeviceClient(fleet.url, "sensor-9", fleet.root / "agent-identity", fleet.ca_file,
                                        token=fleet.token())  # fmt: skip
    client.ensure_identity()
    backend = client_module.DeviceAPIBackend(client)
    assignments = backend.assignments_for("sensor-9")
    assert list(assignments) == [MODEL] and assignments[MODEL][1] == 1
    assert backend.assignments_for("sensor-9") == assignments  # the second read is a 304
    backend.report_status("sensor-9", MODEL, AssignmentStatus("Healthy", "1.0.0"))
    assert fleet.backend.statuses()[("sensor-9", MODEL)].phase == "Healthy"


def test_every_refusal_is_a_counted_json_refusal(fleet: DeviceFleet):
    anonymous = fleet.anonymous()
    for method, path in [("GET", protocol.ASSIGNMENTS), ("GET", "/nowhere"), ("DELETE", protocol.ASSIGNMENTS)]:
        answer = anonymous.request(method, f"{fleet.url}{path}")
        assert 400 <= answer.status < 500 and answer.headers["Content-Type"] == "application/json"
        protocol.Refusal.model_validate_json(answer.data)
    assert fleet.refusals("no-certificate") == 1 and fleet.refusals("not-found") == 1
    assert fleet.refusals("method-not-allowed") == 1
    assert json.loads(anonymous.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}").data)["reason"] == "no-certificate"


def test_bad_long_poll_waits_are_400(fleet: DeviceFleet):
    http = fleet.client(fleet.enrol("sensor-1"))
    for wait in ["abc", "-1", "nan", "inf"]:
        answer = http.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}?wait={wait}")
        assert (answer.status, json.loads(answer.data)["reason"]) == (400, "bad-wait"), wait


def test_a_backend_that_cannot_answer_now_is_503_with_retry_after(fleet: DeviceFleet):
    pem = fleet.enrol("sensor-1")

    class LockedBackend:
        """Fails as LocalBackend does when another process holds the database past its busy timeout."""

        def sync(self, inventory: bool = True) -> None:
            raise TemporaryClusterError("database is locked", retry_after=2.5)

    context = fleet.ca.server_context(fleet.root / "server.crt", fleet.root / "server.key")
    with DeviceAPIServer(("127.0.0.1", 0), fleet.identity, LockedBackend, context) as locked:  # type: ignore[arg-type]
        answer = fleet.client(pem).request("GET", f"{locked.url}{protocol.ASSIGNMENTS}")
    assert (answer.status, answer.headers["Retry-After"], json.loads(answer.data)["reason"]) == (
        503,
        "3",
        "unavailable",
    )


def test_an_agent_pod_enrols_with_the_node_its_service_account_token_proves(fleet: DeviceFleet):
    """The cluster's verdict (KubernetesBackend.node_of_token, tested against a real API server elsewhere) stands
    in here as a function: one token proves Node edge-7, any other is refused as the cluster would."""

    def node_of_token(token: str) -> str:
        if token != "t" * 40:
            raise PermanentClusterError("the ServiceAccount token is not valid")
        return "edge-7"

    anonymous, path = fleet.anonymous(), protocol.ENROL
    csr, _ = csr_for("edge-7")
    off = anonymous.request("POST", f"{fleet.url}{path}", json={"serviceAccountToken": "t" * 40, "csr": csr})
    assert (off.status, json.loads(off.data)["reason"]) == (403, "service-account-enrolment-disabled")
    context = fleet.ca.server_context(fleet.root / "server.crt", fleet.root / "server.key")
    with DeviceAPIServer(("127.0.0.1", 0), fleet.identity, lambda: fleet.backend, context,
                         node_of_token=node_of_token) as server:  # fmt: skip
        enrolled = anonymous.request("POST", f"{server.url}{path}", json={"serviceAccountToken": "t" * 40, "csr": csr})
        assert enrolled.status == 200 and protocol.Certificate.model_validate_json(enrolled.data).device == "edge-7"
        other, _ = csr_for("edge-8")
        for token, body_csr, reason in [
            ("t" * 40, other, "node-mismatch"),
            ("u" * 40, csr, "service-account-token-refused"),
        ]:
            answer = anonymous.request(
                "POST", f"{server.url}{path}", json={"serviceAccountToken": token, "csr": body_csr}
            )
            assert (answer.status, json.loads(answer.data)["reason"]) == (403, reason)
        two_proofs = {"serviceAccountToken": "t" * 40, "token": fleet.token(), "csr": csr}
        both = anonymous.request("POST", f"{server.url}{path}", json=two_proofs)
        assert (both.status, json.loads(both.data)["reason"]) == (400, "invalid-body")


def test_an_assignment_made_again_at_its_first_generation_is_a_new_listing(fleet: DeviceFleet):
    """Each device's last listing is kept, and a poll with the same specs is answered from it: an assignment
    deleted and made again (generation 1 again) with another version must not be answered with the old one."""
    pem = fleet.enrol("sensor-1")
    fleet.backend.apply([desired("sensor-1")])
    http = fleet.client(pem)
    first = http.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}")
    fleet.backend.delete([("sensor-1", MODEL)])
    fleet.backend.apply([desired("sensor-1", version="3.0.0")])
    again = http.request("GET", f"{fleet.url}{protocol.ASSIGNMENTS}", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 200 and again.headers["ETag"] != first.headers["ETag"]
    [assignment] = protocol.Assignments.model_validate_json(again.data).assignments
    assert (assignment.generation, assignment.spec["version"]) == (1, "3.0.0")
