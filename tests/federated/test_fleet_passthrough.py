"""The device API passes Flower's Fleet routes, and only those, to the controller's SuperLink: its Control API
(registering nodes, starting runs) stays on loopback, whatever reaches the device API's port."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.cluster import LocalBackend
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.identity import Identity
from reconciler.deviceapi.server import DeviceAPIServer
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry


@pytest.fixture
def device_api(tmp_path: Path):
    ca = FleetCA.load_or_create(tmp_path / "ca")
    cert, key = ca.issue_server(["127.0.0.1"], timedelta(days=1), datetime.now(UTC))
    (tmp_path / "api.crt").write_bytes(cert)
    (tmp_path / "api.key").write_bytes(key)
    backend = LocalBackend(tmp_path / "state")
    upstream: list = []
    server = DeviceAPIServer(("127.0.0.1", 0), Identity(ca, SQLiteRegistry(tmp_path / "devices.sqlite")),
                             lambda: backend, ca.server_context(tmp_path / "api.crt", tmp_path / "api.key"),
                             fleet_upstream=lambda: upstream[0] if upstream else None).start()  # fmt: skip
    context = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.crt"))
    try:
        yield server, context, upstream
    finally:
        server.close()
        backend.close()


def _status(url: str, context: ssl.SSLContext, body: bytes = b"{}") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_fleet_calls_wait_for_a_training_and_nothing_else_of_flower_is_served(device_api) -> None:
    server, context, upstream = device_api
    status, body = _status(f"{server.url}/v1/fleet/pull-messages", context)
    assert status == 503 and b"no-training" in body
    upstream.append(("https://127.0.0.1:9", ssl.create_default_context()))  # nobody listens there
    status, body = _status(f"{server.url}/v1/fleet/pull-messages", context)
    assert status == 503 and b"training-unavailable" in body
    for path in ("/v1/control/start-run", "/v1/control/register-node", "/v1/runtime/push-task-output", "/health",
                 "/v1/fleet/../control/start-run"):  # fmt: skip
        status, _ = _status(f"{server.url}{path}", context)
        assert status in (404, 405), (path, status)
