"""The controller's HTTP endpoint over real sockets: blobs with Range/ETag for resumable downloads, no path
outside the store or the TUF folder, HMAC-checked webhooks, Prometheus metrics."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from reconciler.artifact.store import ArtifactStore
from reconciler.controller.server import ControllerServer

SECRET = b"webhook-secret"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ControllerServer, str, bytes, threading.Event]]:
    store = ArtifactStore(tmp_path / "store")
    payload = bytes(range(256)) * 4096  # 1 MiB
    digest = store.put_bytes(payload)
    (tmp_path / "tuf" / "metadata").mkdir(parents=True)
    (tmp_path / "tuf" / "metadata" / "timestamp.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("do not serve")
    registry = CollectorRegistry()
    Counter("edge_reconciler_test", "A test counter.", registry=registry).inc(3)
    woken = threading.Event()
    server = ControllerServer(("127.0.0.1", 0), store.root / "blobs" / "sha256", tmp_path / "tuf", registry, SECRET,
                              woken.set).start()  # fmt: skip
    try:
        yield server, digest, payload, woken
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


def test_a_blob_is_served_whole_and_resumed_from_an_offset(served):
    server, digest, payload, _ = served
    whole, data = request(server, "GET", f"/artifacts/sha256/{digest}")
    assert whole.status == 200 and data == payload
    assert whole.getheader("ETag") == f'"{digest}"' and whole.getheader("Accept-Ranges") == "bytes"
    resumed, rest = request(server, "GET", f"/artifacts/sha256/{digest}",
                            headers={"Range": "bytes=700000-", "If-Range": f'"{digest}"'})  # fmt: skip
    assert resumed.status == 206 and rest == payload[700000:]
    assert resumed.getheader("Content-Range") == f"bytes 700000-{len(payload) - 1}/{len(payload)}"
    middle, part = request(server, "GET", f"/artifacts/sha256/{digest}", headers={"Range": "bytes=10-19"})
    assert middle.status == 206 and part == payload[10:20]
    head, empty = request(server, "HEAD", f"/artifacts/sha256/{digest}")
    assert head.status == 200 and empty == b"" and head.getheader("Content-Length") == str(len(payload))


def test_a_changed_etag_gets_the_whole_file_and_a_bad_range_416(served):
    server, digest, payload, _ = served
    stale, data = request(server, "GET", f"/artifacts/sha256/{digest}",
                          headers={"Range": "bytes=100-", "If-Range": '"other"'})  # fmt: skip
    assert stale.status == 200 and data == payload
    beyond, _ = request(server, "GET", f"/artifacts/sha256/{digest}", headers={"Range": f"bytes={len(payload)}-"})
    assert beyond.status == 416 and beyond.getheader("Content-Range") == f"bytes */{len(payload)}"


def test_only_digests_and_tuf_files_are_served(served):
    server, digest, _, _ = served
    assert request(server, "GET", "/tuf/metadata/timestamp.json")[0].status == 200
    outside = ["/artifacts/sha256/../../secret.txt", "/tuf/../secret.txt", "/tuf/metadata/../../secret.txt"]
    unknown = ["/artifacts/sha256/" + "0" * 64, f"/artifacts/sha256/{digest.upper()}", "/tuf/%2e%2e/secret.txt"]
    for path in outside + unknown:
        assert request(server, "GET", path)[0].status == 404, path


def test_webhooks_need_a_valid_signature(served):
    server, _, _, woken = served
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
    server, _, _, _ = served
    metrics, text = request(server, "GET", "/metrics")
    assert metrics.status == 200 and b"edge_reconciler_test_total 3.0" in text
    assert request(server, "GET", "/healthz")[0].status == 200
