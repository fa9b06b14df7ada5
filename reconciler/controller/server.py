"""The controller's HTTP endpoint: artifacts for agents, the Git webhook, metrics and health.

    GET|HEAD /artifacts/sha256/<hex>     a blob of the content-addressed store; Range, ETag, Repr-Digest
    GET|HEAD /artifacts/delta/<a>/<b>    a zstd delta that rebuilds blob <b> from blob <a> (made on first request)
    GET|HEAD /tuf/<path>                 the TUF repository (metadata/ and targets/), same Range support
    POST     /hooks/git                  fetch now; HMAC-checked (GitHub X-Hub-Signature-256, GitLab X-Gitlab-Token)
    POST     /telemetry                  a device's TelemetrySummary (JSON, at most 1 MiB)
    GET      /metrics                    Prometheus text format
    GET      /healthz                    200 while the process runs (liveness)
    GET      /readyz                     200 when this replica serves (the leader, after its first cycle), else 503

Paths are digests or plain relative names only: no request can name a file outside the store or the TUF
folder. Resumable downloads: a ``Range: bytes=N-`` request gets 206 with the rest of the file, and the
strong ETag (the digest) lets a client check with ``If-Range`` that the file did not change in between.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from base64 import b64encode
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from reconciler.httpserver import BackgroundServer, JSONHandler

_BLOB = re.compile(r"^/artifacts/sha256/([0-9a-f]{64})$")
_DELTA = re.compile(r"^/artifacts/delta/([0-9a-f]{64})/([0-9a-f]{64})$")
_TUF = re.compile(r"^/tuf/((?:[A-Za-z0-9][A-Za-z0-9._+-]*/)*[A-Za-z0-9][A-Za-z0-9._+-]*)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
CHUNK = 1 << 16
MAX_WEBHOOK_BODY = 1 << 20


class ControllerServer(BackgroundServer):
    def __init__(
        self,
        address: tuple[str, int],
        blobs: Path | None = None,
        tuf: Path | None = None,
        registry: CollectorRegistry | None = None,
        webhook_secret: bytes | None = None,
        on_webhook: Callable[[], None] | None = None,
        on_telemetry: Callable[[dict], None] | None = None,
        deltas: Callable[[str, str], Path] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """``ready``: whether this replica should get traffic. Only the leader publishes TUF metadata, so a
        standby's copy is stale: its readiness keeps it out of the Service (agents would call it a rollback)."""
        self.blobs, self.tuf, self.registry = blobs, tuf, registry
        self.ready = ready
        self.webhook_secret, self.on_webhook = webhook_secret, on_webhook
        self.on_telemetry = on_telemetry
        self.deltas = deltas
        self.bytes_served = 0
        super().__init__(address, _Handler)

    thread_name = "controller-http"

    def start(self) -> ControllerServer:
        self.serve()
        return self


class _Handler(JSONHandler):
    owner: ControllerServer

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self.send_bytes(HTTPStatus.OK, b"ok\n", "text/plain")
        if path == "/readyz":
            if self.owner.ready is None or self.owner.ready():
                return self.send_bytes(HTTPStatus.OK, b"ready\n", "text/plain")
            return self.send_bytes(HTTPStatus.SERVICE_UNAVAILABLE, b"standby\n", "text/plain")
        if path == "/metrics" and self.owner.registry is not None:
            return self.send_bytes(HTTPStatus.OK, generate_latest(self.owner.registry), CONTENT_TYPE_LATEST)
        if (match := _BLOB.match(path)) and self.owner.blobs is not None:
            return self._file(self.owner.blobs / match.group(1), match.group(1), head)
        if (match := _DELTA.match(path)) and self.owner.deltas is not None:
            try:
                delta = self.owner.deltas(match.group(1), match.group(2))
            except Exception:  # a base or target the store does not hold: no delta, the agent downloads in full
                return self.send_bytes(HTTPStatus.NOT_FOUND, b"no such delta\n", "text/plain")
            return self._file(delta, None, head)
        if (match := _TUF.match(path)) and self.owner.tuf is not None and ".." not in match.group(1).split("/"):
            return self._file(self.owner.tuf / match.group(1), None, head)
        self.send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _file(self, file: Path, digest: str | None, head: bool) -> None:
        try:
            handle = file.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return self.send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        with handle:
            size = file.stat().st_size
            etag = f'"{digest}"' if digest else f'"{file.stat().st_mtime_ns:x}-{size:x}"'
            start, end, status = 0, size - 1, HTTPStatus.OK
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if wanted and (if_range is None or if_range == etag):
                match = _RANGE.match(wanted.strip())
                if not match or int(match.group(1)) >= size:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                status = HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            if digest:
                self.send_header("Repr-Digest", f"sha-256=:{b64encode(bytes.fromhex(digest)).decode()}:")
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
                self.owner.bytes_served += len(chunk)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/telemetry" and self.owner.on_telemetry is not None:
            return self._telemetry()
        if path != "/hooks/git" or self.owner.on_webhook is None:
            return self.send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        body = self.read_body(MAX_WEBHOOK_BODY)
        if body is None:
            return
        if not self._authentic(body):
            return self.send_bytes(HTTPStatus.UNAUTHORIZED, b"bad signature\n", "text/plain")
        self.owner.on_webhook()
        self.send_bytes(HTTPStatus.ACCEPTED, b"reconciling\n", "text/plain")

    def _telemetry(self) -> None:
        raw = self.read_body(MAX_WEBHOOK_BODY)
        if raw is None:
            return
        try:
            body = json.loads(raw)
        except ValueError:
            return self.send_bytes(HTTPStatus.BAD_REQUEST, b"not JSON\n", "text/plain")
        if not isinstance(body, dict) or body.get("kind") != "TelemetrySummary":
            return self.send_bytes(HTTPStatus.BAD_REQUEST, b"not a TelemetrySummary\n", "text/plain")
        assert self.owner.on_telemetry is not None
        self.owner.on_telemetry(body)
        self.send_bytes(HTTPStatus.ACCEPTED, b"stored\n", "text/plain")

    def _authentic(self, body: bytes) -> bool:
        secret = self.owner.webhook_secret
        if not secret:
            return False  # a webhook without a secret would let anyone make the controller fetch
        github = self.headers.get("X-Hub-Signature-256", "")
        if github.startswith("sha256="):
            expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
            return hmac.compare_digest(github[7:], expected)
        gitlab = self.headers.get("X-Gitlab-Token")
        return gitlab is not None and hmac.compare_digest(gitlab.encode(), secret)
