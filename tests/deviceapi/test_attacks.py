"""The device API under attack, each case against the real server over TLS on loopback: who may not get in, what
a device may not do to another, bodies and connections that try to exhaust the server, and 10,000 fuzzed bodies.
One server serves the whole module (small timeouts, so slow clients are cut off quickly); the last test checks
that it still answers after all of it."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import urllib3
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.deviceapi import protocol
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.limits import Limits

from .test_server import MODEL, TELEMETRY, DeviceFleet, csr_for, desired, make_fleet, now

LIMITS = Limits(idle_seconds=2.0, handshake_seconds=1.0, body_seconds=1.0, lingering_seconds=1.0,
                telemetry_per_second=1e6, telemetry_burst=10**6)  # fmt: skip
ASSIGNMENTS = protocol.ASSIGNMENTS
GET_ASSIGNMENTS = b"GET /v1/assignments HTTP/1.1\r\nHost: device-api\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceFleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("attacks"), LIMITS)
    fleet.start()
    try:
        yield fleet
    finally:
        assert fleet.server is not None
        fleet.server.close()
        fleet.backend.close()
        fleet.registry.close()


@pytest.fixture(scope="module")
def devices(fleet: DeviceFleet) -> dict[str, urllib3.PoolManager]:
    """Two enrolled devices, each with one assignment and one connection pool (reused by every test)."""
    fleet.backend.apply([desired("device-a"), desired("device-b", model="other-model")])
    return {name: fleet.client(fleet.enrol(name)) for name in ("device-a", "device-b")}


def refusal(response: urllib3.BaseHTTPResponse) -> tuple[int, str]:
    assert response.headers["Content-Type"] == "application/json", response.data[:200]
    return response.status, protocol.Refusal.model_validate_json(response.data).reason


def raw(fleet: DeviceFleet, data: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Send ``data`` over TLS and read until the server closes: its answer, or b"" when the TLS layer refused
    (with TLS 1.3 the client's handshake completes before the server has checked the client's certificate;
    the server then drops the connection without an HTTP answer)."""
    assert fleet.server is not None
    host, port = fleet.url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as plain:
        try:
            with (context or fleet.ca.client_context()).wrap_socket(plain, server_hostname=host) as tls:
                tls.sendall(data)
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                return answer
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:100]
    return int(answer.split(b" ", 2)[1])


def assert_serving(fleet: DeviceFleet, http: urllib3.PoolManager, within: float = 2.0) -> None:
    started = time.monotonic()
    answer = http.request("GET", f"{fleet.url}{ASSIGNMENTS}", timeout=within)
    assert answer.status == 200 and time.monotonic() - started < within


# --- who gets in -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", ASSIGNMENTS), ("PUT", f"/v1/status/{MODEL}"), ("POST", protocol.TELEMETRY), ("POST", protocol.RENEW),
    ("GET", "/tuf/metadata/timestamp.json"), ("GET", "/artifacts/sha256/" + "0" * 64),
])  # fmt: skip
def test_no_client_certificate_is_401(fleet: DeviceFleet, method: str, path: str):
    answer = fleet.anonymous().request(method, f"{fleet.url}{path}", body=b"{}", headers={"Content-Length": "2"})
    assert refusal(answer) == (401, "no-certificate")


def test_an_expired_certificate_is_refused_by_tls_and_by_the_identity_check(fleet: DeviceFleet, devices):
    current = fleet.enrol("expiring-1")
    expired = fleet.issue("expiring-1", now() - timedelta(minutes=4), lifetime=timedelta(minutes=1))
    assert raw(fleet, GET_ASSIGNMENTS, fleet.ca.client_context(expired)) == b""  # the TLS handshake: no answer
    with pytest.raises(urllib3.exceptions.HTTPError):
        fleet.client(expired).request("GET", f"{fleet.url}{ASSIGNMENTS}")
    # A certificate OpenSSL still takes but the server's clock says has expired: the identity check refuses it.
    later = now() + timedelta(days=31)
    with make_server_with_clock(fleet, lambda: later) as ahead:
        answer = fleet.client(current).request("GET", f"{ahead.url}{ASSIGNMENTS}")
        assert refusal(answer) == (403, "expired")


def make_server_with_clock(fleet: DeviceFleet, clock):
    from reconciler.deviceapi.server import DeviceAPIServer

    context = fleet.ca.server_context(fleet.root / "server.crt", fleet.root / "server.key")
    return DeviceAPIServer(("127.0.0.1", 0), fleet.identity, lambda: fleet.backend, context, clock=clock)


def test_a_revoked_device_is_403_everywhere(fleet: DeviceFleet, devices):
    pem = fleet.enrol("revoked-1")
    fleet.backend.apply([desired("revoked-1")])
    http = fleet.client(pem)
    assert http.request("GET", f"{fleet.url}{ASSIGNMENTS}").status == 200
    fleet.registry.revoke("revoked-1", now())
    csr, _ = csr_for("revoked-1")
    for method, path, body in [
        ("GET", ASSIGNMENTS, None), ("PUT", f"/v1/status/{MODEL}", {"phase": "Healthy"}),
        ("POST", protocol.TELEMETRY, {**TELEMETRY, "device": "revoked-1"}), ("POST", protocol.RENEW, {"csr": csr}),
        ("GET", f"/artifacts/sha256/{fleet.digest}", None), ("GET", "/tuf/metadata/timestamp.json", None),
    ]:  # fmt: skip
        assert refusal(http.request(method, f"{fleet.url}{path}", json=body)) == (403, "revoked"), path
    assert ("revoked-1", MODEL) not in fleet.backend.statuses()


def test_a_certificate_from_another_ca_is_refused_by_tls(fleet: DeviceFleet, tmp_path: Path):
    other = FleetCA.load_or_create(tmp_path / "other-ca")
    csr, key = csr_for("device-a")  # it even claims an enrolled device's name
    certificate = other.issue_device(csr, "device-a", timedelta(days=1), now())
    pem = fleet.write_identity("foreign-a", certificate.public_bytes(serialization.Encoding.PEM), key)
    assert raw(fleet, GET_ASSIGNMENTS, fleet.ca.client_context(pem)) == b""
    enrol = json.dumps({"token": fleet.token(), "csr": csr}).encode()
    request = b"POST /v1/enrol HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(enrol), enrol)
    assert raw(fleet, request, fleet.ca.client_context(pem)) == b""  # enrolment does not take it either


def test_the_servers_own_certificate_is_refused_by_tls(fleet: DeviceFleet):
    """Issued by the fleet CA, but for serverAuth only: OpenSSL refuses it as a client certificate (the identity
    check would say not-a-device-certificate)."""
    context = fleet.ca.client_context(fleet.root / "server.crt", fleet.root / "server.key")
    assert raw(fleet, GET_ASSIGNMENTS, context) == b""


@pytest.mark.parametrize("case", ["used", "expired", "unknown", "other-device", "malformed"])
def test_a_bad_token_enrols_nobody(fleet: DeviceFleet, case: str):
    name = f"token-{case}"
    csr, _ = csr_for(name)
    if case == "used":
        token = fleet.token()
        first = fleet.anonymous().request("POST", f"{fleet.url}{protocol.ENROL}", json={"token": token, "csr": csr})
        assert first.status == 200
        csr, _ = csr_for(name + "-again")
    elif case == "expired":
        token = fleet.token(lifetime=timedelta(minutes=1), now=now() - timedelta(hours=1))
    elif case == "unknown":
        token = "abcdef." + "0" * 32
    elif case == "other-device":
        token = fleet.token(device="somebody-else")
    else:
        token = "not a token at all"
    before = [d.name for d in fleet.registry.devices() if d.serial is not None]
    answer = fleet.anonymous().request("POST", f"{fleet.url}{protocol.ENROL}", json={"token": token, "csr": csr})
    expected = {"used": (403, "token-used"), "expired": (403, "token-expired"), "unknown": (403, "token-unknown"),
                "other-device": (403, "token-device-mismatch"), "malformed": (400, "invalid-body")}  # fmt: skip
    assert refusal(answer) == expected[case]
    assert [d.name for d in fleet.registry.devices() if d.serial is not None] == before


# --- what a device may not do to another -------------------------------------------------------------------


def test_a_device_only_ever_sees_its_own_assignments(fleet: DeviceFleet, devices):
    a = devices["device-a"]
    for query, headers in [("", {}), ("?device=device-b", {}), ("", {"X-Device": "device-b"}),
                           ("?device=device-b&wait=0", {"Host": "device-b"})]:  # fmt: skip
        answer = a.request("GET", f"{fleet.url}{ASSIGNMENTS}{query}", headers=headers)
        listing = protocol.Assignments.model_validate_json(answer.data)
        assert listing.device == "device-a" and [x.model for x in listing.assignments] == [MODEL]
        assert all(x.spec["device"] == "device-a" for x in listing.assignments)
    for path in [f"{ASSIGNMENTS}/device-b", "/v1/devices/device-b/assignments"]:
        assert refusal(a.request("GET", f"{fleet.url}{path}")) == (404, "not-found")


def test_a_device_cannot_report_for_a_model_it_is_not_assigned(fleet: DeviceFleet, devices):
    before = fleet.backend.statuses()
    for model in ["other-model", "unassigned-model"]:  # device-b's model, and nobody's
        answer = devices["device-a"].request("PUT", f"{fleet.url}/v1/status/{model}", json={"phase": "Failed"})
        assert refusal(answer) == (403, "not-assigned")
    answer = devices["device-a"].request("PUT", f"{fleet.url}/v1/status/..%2Fx", json={"phase": "Failed"})
    assert answer.status in (400, 404)
    assert fleet.backend.statuses() == before
    assert fleet.refusals("not-assigned") >= 2


def test_a_device_cannot_send_telemetry_naming_another(fleet: DeviceFleet, devices):
    received = len(fleet.telemetry)
    answer = devices["device-a"].request("POST", f"{fleet.url}{protocol.TELEMETRY}",
                                         json={**TELEMETRY, "device": "device-b"})  # fmt: skip
    assert refusal(answer) == (403, "wrong-device") and len(fleet.telemetry) == received


# --- bodies and connections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "limit"), [
    ("POST", protocol.ENROL, protocol.MAX_ENROL_BODY), ("PUT", f"/v1/status/{MODEL}", protocol.MAX_STATUS_BODY),
    ("POST", protocol.TELEMETRY, protocol.MAX_TELEMETRY_BODY), ("POST", protocol.RENEW, protocol.MAX_ENROL_BODY),
])  # fmt: skip
def test_a_body_over_the_limit_is_413(fleet: DeviceFleet, devices, method: str, path: str, limit: int):
    body = b'{"x": "' + b"a" * limit + b'"}'
    answer = devices["device-a"].request(method, f"{fleet.url}{path}", body=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert refusal(answer) == (413, "too-large")
    # A length announced but never sent is refused before a byte of it is read.
    announced = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n\r\n".encode()
    started = time.monotonic()
    assert status_of(raw(fleet, announced, fleet.ca.client_context(fleet.root / "devices" / "device-a.pem"))) == 413
    assert time.monotonic() - started < LIMITS.lingering_seconds + 2


def test_a_compressed_body_is_415_and_never_inflated(fleet: DeviceFleet, devices):
    bomb = gzip.compress(b"[" + b"0," * 5_000_000 + b"0]")  # 10 MB of JSON in 10 kB
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    answer = devices["device-a"].request("POST", f"{fleet.url}{protocol.TELEMETRY}", body=bomb, headers=headers)
    assert refusal(answer) == (415, "encoded-body")


@pytest.mark.parametrize("length", [b"-1", b"-100", b"abc", b"1e3", b"0x10", b"5, 6", b""])
def test_a_negative_or_non_numeric_content_length_is_400(fleet: DeviceFleet, devices, length: bytes):
    request = b"POST /v1/enrol HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}"
    assert status_of(raw(fleet, request)) == 400  # aiohttp's parser refuses it (text/plain)
    assert_serving(fleet, devices["device-a"])
    assert fleet.refusals("malformed-request") >= 1


@pytest.mark.parametrize("framing", [b"", b"Transfer-Encoding: chunked\r\n"])
def test_a_body_without_a_length_is_411(fleet: DeviceFleet, framing: bytes):
    request = b"POST /v1/enrol HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + framing + b"\r\n"
    if framing:
        request += b"2\r\n{}\r\n0\r\n\r\n"
    answer = raw(fleet, request)
    assert status_of(answer) == 411 and b'"reason":"length-required"' in answer


SLACK = 8.0
"""Seconds a cut-off may come late on a loaded machine; still well inside the slow clients' 15 s."""


def test_slow_clients_hold_no_one_up_and_are_cut_off(fleet: DeviceFleet, devices):
    """Slowloris (headers a byte at a time), a body that never completes and a TCP connection that never starts
    TLS, 20 of each at once, while a device is served as usual."""
    host, port = fleet.url.removeprefix("https://").rsplit(":", 1)
    closed_after: dict[str, list[float]] = {"headers": [], "body": [], "handshake": []}

    def slow(kind: str) -> None:
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=15) as plain:
            try:
                if kind == "handshake":
                    plain.recv(1)
                else:
                    tls = fleet.ca.client_context().wrap_socket(plain, server_hostname=host)
                    if kind == "body":
                        tls.sendall(b"POST /v1/enrol HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                        while tls.recv(65536):
                            pass
                    else:
                        for byte in b"GET /v1/assignments HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000:
                            tls.send(bytes([byte]))
                            time.sleep(0.05)
            except OSError:
                pass
        closed_after[kind].append(time.monotonic() - started)

    threads = [threading.Thread(target=slow, args=(kind,)) for kind in closed_after for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    for _ in range(10):
        assert_serving(fleet, devices["device-a"], within=5.0)  # served at once, not after the slow ones
    for thread in threads:
        thread.join(timeout=20)
    assert [len(times) for times in closed_after.values()] == [20, 20, 20]
    # Cut off by the server, not by the clients' own 15 s socket timeout; the 1,000-byte header would take 50 s.
    # The margin is for a slow machine doing 60 TLS handshakes on one core, not a measure of speed.
    assert max(closed_after["headers"]) < LIMITS.idle_seconds + SLACK
    assert max(closed_after["body"]) < LIMITS.body_seconds + SLACK
    assert max(closed_after["handshake"]) < LIMITS.handshake_seconds + SLACK
    assert fleet.refusals("body-timeout") >= 20


# --- fuzzed bodies -------------------------------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def bodies(valid: dict) -> st.SearchStrategy[bytes]:
    """Arbitrary JSON, valid bodies with one field replaced, dropped or added, and bytes that are not JSON."""
    keys = st.sampled_from([*valid, "extra", "device", "phase"])
    mutated = st.tuples(keys, JSON, st.booleans()).map(
        lambda change: {k: v for k, v in {**valid, change[0]: change[1]}.items() if change[2] or k != change[0]}
    )
    return st.one_of(JSON.map(json.dumps), mutated.map(json.dumps), st.binary(max_size=64))


BATCH = 10
"""Bodies per hypothesis example: generating ten at once costs a third of ten examples of one."""
SENT: dict[str, int] = {}


def fuzz(bodies_to_send: int) -> settings:
    return settings(max_examples=bodies_to_send // BATCH, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


def batches(valid: dict) -> st.SearchStrategy[list[bytes]]:
    return st.lists(bodies(valid), min_size=BATCH, max_size=BATCH)


def send(http: urllib3.PoolManager, method: str, url: str, body: bytes, endpoint: str) -> urllib3.BaseHTTPResponse:
    SENT[endpoint] = SENT.get(endpoint, 0) + 1
    return http.request(method, url, body=body, headers={"Content-Type": "application/json"})


@fuzz(3000)
@given(batch=batches({"token": "abcdef." + "0" * 32, "csr": csr_for("fuzzed-device")[0]}))
def test_fuzzed_enrolment_bodies_enrol_nobody(fleet: DeviceFleet, devices, batch: list[bytes]):
    enrolled = len(fleet.registry.devices())
    for body in batch:
        answer = send(devices["device-a"], "POST", f"{fleet.url}{protocol.ENROL}", body, "enrol")
        assert refusal(answer)[0] in (400, 403)
    assert len(fleet.registry.devices()) == enrolled


@fuzz(4000)
@given(batch=batches({"phase": "Healthy", "installedVersion": "1.0.0", "observedGeneration": 1}))
def test_fuzzed_status_reports_store_nothing_unless_valid(fleet: DeviceFleet, devices, batch: list[bytes]):
    for body in batch:
        before = fleet.backend.statuses()
        answer = send(devices["device-a"], "PUT", f"{fleet.url}/v1/status/{MODEL}", body, "status")
        if answer.status == 204:
            protocol.StatusReport.model_validate_json(body)
        else:
            assert refusal(answer)[0] == 400
            assert fleet.backend.statuses() == before


@fuzz(3000)
@given(batch=batches({**TELEMETRY, "device": "device-a"}))
def test_fuzzed_telemetry_reaches_nobody_unless_valid(fleet: DeviceFleet, devices, batch: list[bytes]):
    for body in batch:
        received = len(fleet.telemetry)
        answer = send(devices["device-a"], "POST", f"{fleet.url}{protocol.TELEMETRY}", body, "telemetry")
        if answer.status == 202:
            assert protocol.TelemetrySummary.model_validate_json(body).device == "device-a"
            assert len(fleet.telemetry) == received + 1 and fleet.telemetry[-1][0] == "device-a"
        else:
            assert refusal(answer)[0] in (400, 403)
            assert len(fleet.telemetry) == received


def test_after_all_that_the_server_still_answers(fleet: DeviceFleet, devices):
    for http in devices.values():
        assert_serving(fleet, http)
    pem = fleet.enrol("late-device")
    assert_serving(fleet, fleet.client(pem))
    assert sum(SENT.values()) >= 10_000 and fleet.refusals("invalid-body") > 5_000
