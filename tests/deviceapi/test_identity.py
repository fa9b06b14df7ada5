"""Device identity end to end with real keys, real certificates, a real SQLite file shared by threads and
processes, real TLS handshakes, and ``edgectl device`` through its installed entry point."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.deviceapi.ca import FleetCA, device_of, peer_certificate
from reconciler.deviceapi.identity import Identity, IdentityError
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry
from reconciler.errors import PermanentError

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
EDGECTL = Path(sys.executable).parent / "edgectl"


def csr_for(name: str, key=None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM).decode()


def refused(reason: str, call, *args) -> IdentityError:
    with pytest.raises(IdentityError) as caught:
        call(*args)
    assert caught.value.reason == reason, caught.value
    return caught.value


def pem_cert(text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(text.encode())


@pytest.fixture
def registry(tmp_path: Path):
    opened = SQLiteRegistry(tmp_path / "state" / "devices.sqlite")
    yield opened
    opened.close()


@pytest.fixture
def identity(tmp_path: Path, registry: SQLiteRegistry) -> Identity:
    return Identity(FleetCA.load_or_create(tmp_path / "ca"), registry)


# --- tokens --------------------------------------------------------------------------------------


def test_a_token_enrols_one_device_once(identity: Identity, registry: SQLiteRegistry):
    token = registry.create_token(timedelta(hours=1), NOW, labels={"site": "plant-a"})
    token_id, _, secret = token.partition(".")
    assert (len(token_id), len(secret)) == (6, 32) and (token_id + secret).isalnum() and token.islower()

    issued = identity.enrol(token, csr_for("cam-1"), NOW + timedelta(minutes=5))
    assert issued.device == "cam-1" and issued.ca == identity.ca.certificate_pem
    assert registry.device("cam-1").labels == {"site": "plant-a"}
    refused("token-used", identity.enrol, token, csr_for("cam-2"), NOW + timedelta(minutes=6))
    assert registry.device("cam-2") is None  # a refusal reserves nothing
    [record] = registry.tokens()
    assert (record.id, record.used_by, record.used_at) == (token_id, "cam-1", "2030-06-01T12:05:00Z")


def test_only_the_digest_of_a_token_is_stored(registry: SQLiteRegistry):
    token = registry.create_token(timedelta(hours=1), NOW)
    registry.close()
    stored = b"".join(p.read_bytes() for p in registry.path.parent.iterdir())
    assert token.partition(".")[2].encode() not in stored


def test_an_expired_unknown_or_forged_token_is_refused(identity: Identity, registry: SQLiteRegistry):
    token = registry.create_token(timedelta(minutes=10), NOW)
    refused("token-expired", identity.enrol, token, csr_for("cam-1"), NOW + timedelta(minutes=10))
    token_id = token.partition(".")[0]
    refused("token-unknown", identity.enrol, f"{token_id}.{'a' * 32}", csr_for("cam-1"), NOW)
    refused("token-unknown", identity.enrol, f"zzzzzz.{'a' * 32}", csr_for("cam-1"), NOW)
    refused("token-unknown", identity.enrol, "not-a-token", csr_for("cam-1"), NOW)
    with pytest.raises(ValueError):
        registry.create_token(timedelta(days=7, seconds=1), NOW)


def test_a_token_for_one_device_does_not_enrol_another(identity: Identity, registry: SQLiteRegistry):
    token = registry.create_token(timedelta(hours=1), NOW, device="cam-1")
    refused("token-device-mismatch", identity.enrol, token, csr_for("cam-2"), NOW)
    assert identity.enrol(token, csr_for("cam-1"), NOW).device == "cam-1"


def test_a_token_without_a_name_cannot_take_an_existing_one(identity: Identity, registry: SQLiteRegistry):
    identity.enrol(registry.create_token(timedelta(hours=1), NOW), csr_for("cam-1"), NOW)
    refused("device-exists", identity.enrol, registry.create_token(timedelta(hours=1), NOW), csr_for("cam-1"), NOW)
    # A name reserved by a token made for it is not up for grabs either.
    registry.create_token(timedelta(hours=1), NOW, device="cam-2")
    refused("device-exists", identity.enrol, registry.create_token(timedelta(hours=1), NOW), csr_for("cam-2"), NOW)
    # Enrolling a device again (it lost its key) takes a token made for it; its labels stay.
    again = identity.enrol(registry.create_token(timedelta(hours=1), NOW, device="cam-1"), csr_for("cam-1"), NOW)
    assert registry.device("cam-1").serial == pem_cert(again.certificate).serial_number


def test_a_revoked_device_stays_out(identity: Identity, registry: SQLiteRegistry):
    pending = registry.create_token(timedelta(hours=1), NOW, device="cam-1")
    assert registry.device("cam-1").serial is None  # reserved, not enrolled
    assert registry.revoke("cam-1", NOW) is True
    refused("device-revoked", identity.enrol, pending, csr_for("cam-1"), NOW)
    refused("device-revoked", registry.create_token, timedelta(hours=1), NOW, "cam-1")
    assert registry.revoke("nobody", NOW) is False


def _redeem_in_thread(path: Path, token: str, device: str, start: threading.Barrier, results: list) -> None:
    registry = SQLiteRegistry(path)
    try:
        start.wait()
        registry.redeem(token, device, NOW)
        results.append(device)
    except IdentityError as exc:
        results.append(exc.reason)
    finally:
        registry.close()


def test_threads_racing_for_one_token_one_wins(registry: SQLiteRegistry):
    token = registry.create_token(timedelta(hours=1), NOW)
    start, results = threading.Barrier(8), []
    threads = [threading.Thread(target=_redeem_in_thread, args=(registry.path, token, f"cam-{i}", start, results))
               for i in range(8)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [r for r in results if r.startswith("cam-")]
    assert len(results) == 8 and len(winners) == 1 and results.count("token-used") == 7
    assert [d.name for d in registry.devices()] == winners


def _redeem_in_process(path: str, token: str, device: str, start, results) -> None:
    registry = SQLiteRegistry(Path(path))
    start.wait()
    try:
        registry.redeem(token, device, NOW)
        results.put(device)
    except IdentityError as exc:
        results.put(exc.reason)
    finally:
        registry.close()


def test_replicas_racing_for_one_token_one_wins(registry: SQLiteRegistry):
    token = registry.create_token(timedelta(hours=1), NOW)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_redeem_in_process, args=(str(registry.path), token, f"cam-{i}", start,
                                                                  results)) for i in range(4)]  # fmt: skip
    for process in processes:
        process.start()
    outcome = sorted(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert outcome[1:] == ["token-used"] * 3 and outcome[0].startswith("cam-")
    assert registry.tokens()[0].used_by == outcome[0]


# --- certificate requests ------------------------------------------------------------------------


def test_bad_requests_are_refused_before_the_token_is_spent(identity: Identity, registry: SQLiteRegistry):
    token = registry.create_token(timedelta(hours=1), NOW, device="cam-1")
    refused("bad-csr", identity.enrol, token, "-----BEGIN CERTIFICATE REQUEST-----\nnope\n", NOW)
    refused("bad-csr", identity.enrol, token, csr_for("cam-1", rsa.generate_private_key(65537, 1024)), NOW)
    refused("bad-csr", identity.enrol, token, csr_for("cam-1", ec.generate_private_key(ec.SECP521R1())), NOW)
    refused("bad-name", identity.enrol, token, csr_for("Cam_1"), NOW)

    request = x509.load_pem_x509_csr(csr_for("cam-1").encode())
    der = bytearray(request.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    refused("bad-csr", identity.enrol, token, forged, NOW)

    refused("bad-csr", identity.ca.issue_device, csr_for("cam-2"), "cam-1", timedelta(days=1), NOW)
    assert registry.tokens()[0].used_at is None
    assert identity.enrol(token, csr_for("cam-1", rsa.generate_private_key(65537, 2048)), NOW).device == "cam-1"


def test_a_device_certificate_says_who_and_what_for(identity: Identity, registry: SQLiteRegistry):
    key = ec.generate_private_key(ec.SECP384R1())
    issued = identity.enrol(registry.create_token(timedelta(hours=1), NOW), csr_for("cam-1", key), NOW)
    cert = pem_cert(issued.certificate)
    assert device_of(cert) == "cam-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "edge-reconciler device"
    assert cert.issuer == identity.ca.certificate.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:edge-reconciler:device:cam-1"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)
    assert issued.not_after == "2030-07-01T12:00:00Z"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    cert.verify_directly_issued_by(identity.ca.certificate)
    other = pem_cert(identity.enrol(registry.create_token(timedelta(hours=1), NOW), csr_for("cam-2"), NOW).certificate)
    assert other.serial_number != cert.serial_number
    assert registry.device("cam-1").serial == cert.serial_number  # up to 159 bits, kept exactly


# --- authentication ------------------------------------------------------------------------------


def test_authenticate_accepts_the_current_certificate_and_refuses_the_rest(tmp_path: Path, identity: Identity,
                                                                           registry: SQLiteRegistry):  # fmt: skip
    cert = pem_cert(identity.enrol(registry.create_token(timedelta(hours=1), NOW), csr_for("cam-1"), NOW).certificate)
    assert identity.authenticate(cert, NOW + timedelta(days=29)) == "cam-1"
    refused("expired", identity.authenticate, cert, NOW + timedelta(days=30, seconds=1))
    refused("not-yet-valid", identity.authenticate, cert, NOW - timedelta(minutes=6))
    refused("no-certificate", identity.authenticate, None, NOW)

    foreign = FleetCA.load_or_create(tmp_path / "other-ca")  # same subject name, another key
    impostor = foreign.issue_device(csr_for("cam-1"), "cam-1", timedelta(days=1), NOW)
    refused("foreign-ca", identity.authenticate, impostor, NOW)
    stray = identity.ca.issue_device(csr_for("cam-9"), "cam-9", timedelta(days=1), NOW)
    refused("unknown-device", identity.authenticate, stray, NOW)
    server_pem, _ = identity.ca.issue_server(["localhost"], timedelta(days=1), NOW)
    refused("not-a-device-certificate", identity.authenticate, x509.load_pem_x509_certificate(server_pem), NOW)

    registry.revoke("cam-1", NOW + timedelta(days=1))
    refused("revoked", identity.authenticate, cert, NOW + timedelta(days=1))
    refused("revoked", identity.renew, "cam-1", csr_for("cam-1"), NOW + timedelta(days=1))


def test_a_rotated_out_certificate_stops_working_an_hour_later(identity: Identity, registry: SQLiteRegistry):
    key = ec.generate_private_key(ec.SECP256R1())
    old = pem_cert(identity.enrol(registry.create_token(timedelta(hours=1), NOW), csr_for("cam-1", key), NOW)
                   .certificate)  # fmt: skip
    rotated = NOW + timedelta(days=20)
    new = pem_cert(identity.renew("cam-1", csr_for("cam-1", key), rotated).certificate)
    assert new.not_valid_after_utc == rotated + timedelta(days=30)
    assert identity.authenticate(old, rotated + timedelta(minutes=59)) == "cam-1"  # requests still in flight
    refused("superseded", identity.authenticate, old, rotated + timedelta(minutes=61))
    assert identity.authenticate(new, rotated + timedelta(days=29)) == "cam-1"
    refused("unknown-device", identity.renew, "cam-2", csr_for("cam-2"), rotated)
    refused("bad-csr", identity.renew, "cam-1", csr_for("cam-2"), rotated)  # a device renews only itself

    # Two replicas renewing at once: whichever was issued later stays current, whatever order they record in.
    registry.record_certificate("cam-1", 7, rotated, None, rotated - timedelta(seconds=1))
    assert registry.device("cam-1").serial == new.serial_number


# --- the CA's files ------------------------------------------------------------------------------


def test_the_ca_is_created_once_and_read_back_unchanged(tmp_path: Path):
    folder = tmp_path / "ca"
    created = FleetCA.load_or_create(folder)
    assert os.stat(folder / "ca.key").st_mode & 0o777 == 0o600
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    again = FleetCA.load_or_create(folder)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before
    assert again.certificate_pem == created.certificate_pem
    assert again.key.private_numbers() == created.key.private_numbers()

    cert = created.certificate
    assert isinstance(created.key, ec.EllipticCurvePrivateKey) and created.key.curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert timedelta(days=3649) < cert.not_valid_after_utc - cert.not_valid_before_utc < timedelta(days=3651)
    cert.verify_directly_issued_by(cert)


def _create_ca_in_process(folder: str, start, results) -> None:
    start.wait()
    results.put(FleetCA.load_or_create(Path(folder)).certificate_pem)


def test_replicas_starting_together_agree_on_one_ca(tmp_path: Path):
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_create_ca_in_process, args=(str(tmp_path / "ca"), start, results))
                 for _ in range(4)]  # fmt: skip
    for process in processes:
        process.start()
    pems = {results.get(timeout=120) for _ in processes}
    for process in processes:
        process.join(60)
    assert pems == {(tmp_path / "ca" / "ca.crt").read_text()}


def test_a_cert_manager_secret_is_used_as_is(tmp_path: Path):
    # A CA that cert-manager keeps (RSA here, to differ from ours): tls.crt, tls.key and ca.crt in a mounted Secret.
    made = FleetCA.load_or_create(tmp_path / "issuer")
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plant CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=900))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(key, hashes.SHA256()))  # fmt: skip
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "tls.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (secret / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))  # fmt: skip
    (secret / "ca.crt").write_text(made.certificate_pem)  # cert-manager's ca.crt: not a key pair, ignored
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in secret.iterdir()}

    loaded = FleetCA.load_or_create(secret)
    assert loaded.certificate == ca_cert
    issued = loaded.issue_device(csr_for("cam-1"), "cam-1", timedelta(days=1), NOW)
    issued.verify_directly_issued_by(ca_cert)
    assert loaded.verify_device(issued, NOW) == "cam-1"
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in secret.iterdir()} == before


def test_half_a_ca_or_a_mismatched_one_is_refused_and_left_alone(tmp_path: Path):
    folder = tmp_path / "ca"
    FleetCA.load_or_create(folder)
    (folder / "ca.crt").unlink()
    key = (folder / "ca.key").read_bytes()
    refused("ca-unusable", FleetCA.load_or_create, folder)
    assert (folder / "ca.key").read_bytes() == key and not (folder / "ca.crt").exists()

    (folder / "ca.crt").write_text(FleetCA.load_or_create(tmp_path / "other").certificate_pem)
    refused("ca-unusable", FleetCA.load_or_create, folder)
    assert (folder / "ca.key").read_bytes() == key


# --- TLS -----------------------------------------------------------------------------------------


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> bytes | None:
    """Connect over loopback; return the DER certificate the server saw (None: none), or raise ssl.SSLError."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes | Exception | None] = []

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server.wrap_socket(connection, server_side=True) as tls:
                seen.append(tls.getpeercert(binary_form=True))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.recv(2)
    finally:
        thread.join(10)
        listener.close()
    if isinstance(seen[0], Exception):
        raise seen[0]
    return seen[0]


def test_tls_carries_the_device_identity(tmp_path: Path, identity: Identity, registry: SQLiteRegistry):
    now = datetime.now(UTC)  # OpenSSL checks validity against the real clock
    cert_pem, key_pem = identity.ca.issue_server(["127.0.0.1", "localhost"], timedelta(days=1), now)
    (tmp_path / "server.crt").write_bytes(cert_pem)
    (tmp_path / "server.key").write_bytes(key_pem)
    server = identity.ca.server_context(tmp_path / "server.crt", tmp_path / "server.key")
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2 and server.verify_mode == ssl.CERT_OPTIONAL

    # Enrolment comes without a client certificate; the server name is checked (an IP address SAN too).
    assert _handshake(server, identity.ca.client_context(), "127.0.0.1") is None
    assert peer_certificate(None) is None
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, identity.ca.client_context(), "device-api.example")

    key = ec.generate_private_key(ec.SECP256R1())
    issued = identity.enrol(registry.create_token(timedelta(hours=1), now), csr_for("cam-1", key), now)
    (tmp_path / "cam-1.crt").write_text(issued.certificate)
    (tmp_path / "cam-1.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))  # fmt: skip
    der = _handshake(server, identity.ca.client_context(tmp_path / "cam-1.crt", tmp_path / "cam-1.key"), "localhost")
    assert identity.authenticate(peer_certificate(der), now) == "cam-1"

    foreign = FleetCA.load_or_create(tmp_path / "other-ca")
    (tmp_path / "foreign.crt").write_bytes(foreign.issue_device(csr_for("cam-1", key), "cam-1", timedelta(days=1), now)
                                           .public_bytes(serialization.Encoding.PEM))  # fmt: skip
    with pytest.raises((ssl.SSLError, OSError)):
        _handshake(server, identity.ca.client_context(tmp_path / "foreign.crt", tmp_path / "cam-1.key"), "localhost")


# --- edgectl device ------------------------------------------------------------------------------


def edgectl(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGECTL_NOW": "2030-06-01T12:00:00Z"}
    return subprocess.run([str(EDGECTL), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env)  # fmt: skip


def test_edgectl_device_round_trip(tmp_path: Path):
    created = edgectl("device", "token", "create", "--expires", "2h", "--label", "site=plant-a", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout == token + "\n" and "not shown again" in created.stderr
    token_id = token.partition(".")[0]

    listed = edgectl("device", "token", "list", cwd=tmp_path)
    assert listed.stdout.split("\n")[:2] == ["ID       DEVICE/LABELS   EXPIRES   USED",
                                             f"{token_id}   site=plant-a    in 2h     -"]  # fmt: skip
    assert token.partition(".")[2] not in listed.stdout

    state = tmp_path / ".edge-reconciler"
    registry = SQLiteRegistry(state / "devices.sqlite")
    try:
        Identity(FleetCA.load_or_create(tmp_path / "ca"), registry).enrol(token, csr_for("cam-1"), NOW)
    finally:
        registry.close()
    assert edgectl("device", "token", "create", "--device", "cam-2", "--state-dir", state, cwd=tmp_path).returncode == 0

    devices = edgectl("device", "list", cwd=tmp_path)
    assert devices.stdout.splitlines() == ["NAME    ENROLLED   CERT EXPIRES   STATE      LABELS",
                                           "cam-1   0s         in 30d         Enrolled   site=plant-a",
                                           "cam-2   -          -              Pending    <none>"]  # fmt: skip

    revoked = edgectl("device", "revoke", "cam-1", cwd=tmp_path)
    assert (revoked.returncode, revoked.stdout) == (0, "device/cam-1 revoked\n")
    as_json = json.loads(edgectl("device", "list", "-o", "json", cwd=tmp_path).stdout)
    assert [(d["name"], d["state"], d["revokedAt"]) for d in as_json["items"]] == [
        ("cam-1", "Revoked", "2030-06-01T12:00:00Z"), ("cam-2", "Pending", None)]  # fmt: skip

    unknown = edgectl("device", "revoke", "cam-7", cwd=tmp_path)
    assert unknown.returncode == 1 and "no device cam-7" in unknown.stderr
    too_long = edgectl("device", "token", "create", "--expires", "8d", cwd=tmp_path)
    assert too_long.returncode == 1 and too_long.stdout == "" and "at most 7d" in too_long.stderr
    both = edgectl("device", "token", "create", "--device", "cam-3", "--label", "a=b", cwd=tmp_path)
    assert both.returncode == 1 and "--device and --label" in both.stderr
    with closing(sqlite3.connect(state / "devices.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM tokens").fetchone() == (2,)  # the refused ones made none


# --- enrolment of a proven Node (agent pods on Kubernetes) ---------------------------------------


def test_a_proven_node_enrols_without_a_token_and_again_with_a_new_key(identity: Identity, registry: SQLiteRegistry):
    first = pem_cert(identity.enrol_node("edge-7", csr_for("edge-7"), NOW).certificate)
    assert device_of(first) == "edge-7" and identity.authenticate(first, NOW) == "edge-7"
    record = registry.device("edge-7")
    assert (record.serial, dict(record.labels), record.enrolled_at) == (first.serial_number, {}, "2030-06-01T12:00:00Z")
    assert registry.tokens() == []  # nothing was spent

    # The pod was reinstalled with an empty data directory: a new key, the same Node.
    later = NOW + timedelta(days=3)
    second = pem_cert(identity.enrol_node("edge-7", csr_for("edge-7"), later).certificate)
    assert second.public_key().public_numbers() != first.public_key().public_numbers()
    assert registry.device("edge-7").serial == second.serial_number
    assert registry.device("edge-7").enrolled_at == "2030-06-01T12:00:00Z"  # first enrolment is kept
    assert identity.authenticate(second, later) == "edge-7"
    refused("superseded", identity.authenticate, first, later + timedelta(hours=2))


def test_a_proven_node_keeps_labels_it_was_given_by_a_token(identity: Identity, registry: SQLiteRegistry):
    identity.enrol(registry.create_token(timedelta(hours=1), NOW, labels={"site": "plant-a"}), csr_for("edge-7"), NOW)
    identity.enrol_node("edge-7", csr_for("edge-7"), NOW + timedelta(days=1))
    assert registry.device("edge-7").labels == {"site": "plant-a"}


def test_a_proven_node_gets_a_certificate_for_itself_only(identity: Identity, registry: SQLiteRegistry):
    refused("node-mismatch", identity.enrol_node, "edge-7", csr_for("edge-8"), NOW)
    refused("bad-name", identity.enrol_node, "edge-7", csr_for("Edge_7"), NOW)
    refused("bad-csr", identity.enrol_node, "edge-7", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", NOW)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    refused("bad-csr", identity.enrol_node, "edge-7", csr_for("edge-7", weak), NOW)
    assert registry.devices() == []  # a refusal records nothing


def test_a_revoked_node_stays_out_even_with_a_valid_pod(identity: Identity, registry: SQLiteRegistry):
    identity.enrol_node("edge-7", csr_for("edge-7"), NOW)
    registry.revoke("edge-7", NOW + timedelta(hours=1))
    refused("device-revoked", identity.enrol_node, "edge-7", csr_for("edge-7"), NOW + timedelta(hours=2))
    assert registry.device("edge-7").revoked_at == "2030-06-01T13:00:00Z"


# --- regressions ---------------------------------------------------------------------------------


def test_a_replaced_certificate_never_comes_back(identity: Identity, registry: SQLiteRegistry):
    """A stolen old certificate: only the one just replaced is accepted during the grace, never an older one, and
    no old certificate may renew itself into the current one."""
    token = registry.create_token(timedelta(hours=1), NOW, device="cam-1")
    stolen = pem_cert(identity.enrol(token, csr_for("cam-1"), NOW).certificate)
    second = pem_cert(identity.renew("cam-1", csr_for("cam-1"), NOW + timedelta(days=1)).certificate)
    third_at = NOW + timedelta(days=2)
    identity.renew("cam-1", csr_for("cam-1"), third_at)
    assert identity.authenticate(second, third_at + timedelta(minutes=5)) == "cam-1"  # the one just replaced
    refused("superseded", identity.authenticate, stolen, third_at + timedelta(minutes=5))  # two rotations ago
    refused("superseded", identity.authenticate, second, third_at + timedelta(minutes=5), True)  # may not renew


def test_a_failed_enrolment_does_not_spend_the_token(identity: Identity, registry: SQLiteRegistry, monkeypatch):
    token = registry.create_token(timedelta(hours=1), NOW, device="cam-1")

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SQLiteRegistry, "_record", staticmethod(broken))
    with pytest.raises(PermanentError, match="disk I/O error"):
        identity.enrol(token, csr_for("cam-1"), NOW)
    monkeypatch.undo()
    assert registry.tokens()[0].used_at is None  # rolled back with the failed write
    assert (
        pem_cert(identity.enrol(token, csr_for("cam-1"), NOW).certificate).serial_number
        == registry.device("cam-1").serial
    )


def test_a_name_with_a_trailing_newline_is_refused(identity: Identity, registry: SQLiteRegistry):
    token = registry.create_token(timedelta(hours=1), NOW, labels={"site": "a"})
    refused("bad-name", identity.enrol, token, csr_for("cam-2\n"), NOW)
    assert registry.tokens()[0].used_at is None and registry.devices() == []


def test_enrolling_again_with_a_named_token_keeps_the_labels(identity: Identity, registry: SQLiteRegistry):
    first = registry.create_token(timedelta(hours=1), NOW, labels={"site": "b"})
    identity.enrol(first, csr_for("cam-3"), NOW)
    again = registry.create_token(timedelta(hours=1), NOW, device="cam-3")
    identity.enrol(again, csr_for("cam-3"), NOW + timedelta(minutes=1))
    assert registry.device("cam-3").labels == {"site": "b"}


def test_a_registry_written_before_rotation_grace_opens_and_keeps_its_devices(tmp_path: Path):
    path = tmp_path / "devices.sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, labels TEXT NOT NULL DEFAULT '{}', enrolled_at TEXT, "
                   "serial TEXT, not_after TEXT, issued_at TEXT, revoked_at TEXT)")  # fmt: skip
        db.execute("INSERT INTO devices (name, labels, serial) VALUES ('cam-1', '{\"zone\": \"a\"}', 'ff')")
    registry = SQLiteRegistry(path)
    record = registry.device("cam-1")
    assert (record.serial, record.previous_serial, dict(record.labels)) == (0xFF, None, {"zone": "a"})
    registry.record_certificate("cam-1", 0x100, NOW + timedelta(days=1), None, NOW)
    assert registry.device("cam-1").previous_serial == 0xFF
