"""The controller's operator endpoint over real sockets: HMAC-checked webhooks, Prometheus metrics, health; and
nothing a device could use (artifacts, TUF and telemetry are the device API's, behind mutual TLS)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from reconciler.controller.server import ControllerServer

SECRET = b"webhook-secret"


@pytest.fixture
def served() -> Iterator[tuple[ControllerServer, threading.Event]]:
    registry = CollectorRegistry()
    Counter("edge_reconciler_test", "A test counter.", registry=registry).inc(3)
    woken = threading.Event()
    server = ControllerServer(("127.0.0.1", 0), registry, SECRET, woken.set).start()
    try:
        yield server, woken
    finally:
        server.close()


def request(server: ControllerServer, method: str, path: str, body: bytes | None = None, headers=None):
    host, port = server.httpd.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def test_the_operator_port_serves_nothing_a_device_uses(served):
    server, _ = served
    for method, path in [("GET", "/artifacts/sha256/" + "0" * 64), ("GET", "/tuf/metadata/timestamp.json"),
                         ("POST", "/telemetry"), ("GET", "/v1/assignments"), ("POST", "/v1/enrol")]:  # fmt: skip
        assert request(server, method, path, b"{}" if method == "POST" else None)[0].status == 404, path


def test_webhooks_need_a_valid_signature(served):
    server, woken = served
    body = b'{"ref": "refs/heads/main"}'
    assert request(server, "POST", "/hooks/git", body, {"X-Hub-Signature-256": "sha256=" + "0" * 64})[0].status == 401
    assert request(server, "POST", "/hooks/git", body)[0].status == 401
    assert not woken.is_set()
    good = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert request(server, "POST", "/hooks/git", body, {"X-Hub-Signature-256": good})[0].status == 202
    assert woken.is_set()
    woken.clear()
    assert request(server, "POST", "/hooks/git", body, {"X-Gitlab-Token": SECRET.decode()})[0].status == 202
    assert woken.is_set()


def test_metrics_and_health(served):
    server, _ = served
    metrics, text = request(server, "GET", "/metrics")
    assert metrics.status == 200 and b"edge_reconciler_test_total 3.0" in text
    assert request(server, "GET", "/healthz")[0].status == 200
