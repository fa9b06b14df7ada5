"""The device's side over the real device API (mutual TLS on loopback): enrolment writes one 0600 identity file,
the certificate is renewed past two thirds of its lifetime with a new key, a revoked device is refused as a
permanent error, and an unreachable API is a temporary one (the agent keeps serving and tries again)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from reconciler.cluster import AssignmentStatus, LocalBackend
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.client import DeviceAPIError, DeviceClient, DeviceRefusedError
from reconciler.deviceapi.identity import Identity
from reconciler.deviceapi.server import DeviceAPIServer
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry
from reconciler.errors import PermanentError
from reconciler.plan import Desired

LIFETIME = timedelta(hours=3)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[DeviceAPIServer, SQLiteRegistry, LocalBackend]]:
    ca = FleetCA.load_or_create(tmp_path / "ca")
    registry = SQLiteRegistry(tmp_path / "devices.sqlite")
    backend = LocalBackend(tmp_path / "state")
    cert, key = ca.issue_server(["127.0.0.1"], timedelta(days=1), datetime.now(UTC))
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    server = DeviceAPIServer(("127.0.0.1", 0), Identity(ca, registry, LIFETIME), lambda: backend,
                             ca.server_context(tmp_path / "tls.crt", tmp_path / "tls.key")).start()  # fmt: skip
    try:
        yield server, registry, backend
    finally:
        server.close()
        registry.close()
        backend.close()


def certificate(client: DeviceClient) -> x509.Certificate:
    found = client.files.certificate()
    assert found is not None
    return found


def test_enrol_renew_and_revoke_through_the_client(api, tmp_path: Path):
    server, registry, backend = api
    backend.register_device("d-1", {"site": "x"})
    backend.apply([Desired("d-1", "m", "1.0.0", "cpu", "r", None, True)])
    token = registry.create_token(timedelta(hours=1), datetime.now(UTC), device="d-1")
    client = DeviceClient(server.url, "d-1", tmp_path / "identity", tmp_path / "ca" / "ca.crt", token)
    client.ensure_identity()
    first = certificate(client)
    assert first.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "d-1"
    assert stat.S_IMODE(client.files.pem.stat().st_mode) == 0o600
    assert set(client.assignments()) == {"m"}
    client.report("m", AssignmentStatus("Healthy", installed_version="1.0.0"))
    assert backend.statuses()[("d-1", "m")].phase == "Healthy"

    # Before two thirds of the lifetime nothing happens; after it, a new certificate for a new key.
    client.ensure_identity()
    assert certificate(client).serial_number == first.serial_number
    later = DeviceClient(server.url, "d-1", tmp_path / "identity", clock=lambda: datetime.now(UTC) + LIFETIME * 0.7)
    later.ensure_identity()
    renewed = certificate(later)
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key().public_numbers() != first.public_key().public_numbers()
    assert set(later.assignments()) == {"m"}  # the new pair works at once

    registry.revoke("d-1", datetime.now(UTC))
    with pytest.raises(DeviceRefusedError) as refused:
        later.assignments()
    assert refused.value.status == 403 and refused.value.reason == "revoked"
    assert isinstance(refused.value, PermanentError)


def test_an_unenrolled_device_without_a_token_and_an_unreachable_api_say_what_to_do(api, tmp_path: Path):
    server, _, _ = api
    lost = DeviceClient(server.url, "d-2", tmp_path / "lost", tmp_path / "ca" / "ca.crt")
    with pytest.raises(PermanentError, match="bootstrap token"):
        lost.ensure_identity()
    used = DeviceClient(server.url, "d-3", tmp_path / "used", tmp_path / "ca" / "ca.crt", token="abcdef." + "0" * 32)
    with pytest.raises(DeviceRefusedError) as refused:
        used.ensure_identity()
    assert refused.value.reason == "token-unknown" and not used.files.pem.exists()
    offline = DeviceClient(
        "https://127.0.0.1:9", "d-4", tmp_path / "off", tmp_path / "ca" / "ca.crt", token="abcdef." + "1" * 32
    )
    with pytest.raises(DeviceAPIError):
        offline.ensure_identity()
