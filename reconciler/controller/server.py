"""The controller's operator endpoint: the Git webhook, metrics, health and readiness. Devices never come
here: they talk to the device API (``reconciler.deviceapi``) on its own port with its own certificate.

    POST     /hooks/git                  fetch now; HMAC-checked (GitHub X-Hub-Signature-256, GitLab X-Gitlab-Token)
    GET      /metrics                    Prometheus text format
    GET      /healthz                    200 while the process runs (liveness)
    GET      /readyz                     200 when it serves (a standby; the leader after one cycle), else 503
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from reconciler.httpserver import BackgroundServer, JSONHandler

MAX_WEBHOOK_BODY = 1 << 20


class ControllerServer(BackgroundServer):
    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry | None = None,
        webhook_secret: bytes | None = None,
        on_webhook: Callable[[], None] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """``ready``: whether this replica should get traffic (a standby serving devices, or the leader after its
        first cycle)."""
        self.registry, self.ready = registry, ready
        self.webhook_secret, self.on_webhook = webhook_secret, on_webhook
        super().__init__(address, _Handler)

    thread_name = "controller-http"

    def start(self) -> ControllerServer:
        self.serve()
        return self


class _Handler(JSONHandler):
    owner: ControllerServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self.send_bytes(HTTPStatus.OK, b"ok\n", "text/plain")
        if path == "/readyz":
            if self.owner.ready is None or self.owner.ready():
                return self.send_bytes(HTTPStatus.OK, b"ready\n", "text/plain")
            return self.send_bytes(HTTPStatus.SERVICE_UNAVAILABLE, b"standby\n", "text/plain")
        if path == "/metrics" and self.owner.registry is not None:
            return self.send_bytes(HTTPStatus.OK, generate_latest(self.owner.registry), CONTENT_TYPE_LATEST)
        self.send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/hooks/git" or self.owner.on_webhook is None:
            return self.send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        body = self.read_body(MAX_WEBHOOK_BODY)
        if body is None:
            return
        if not self._authentic(body):
            return self.send_bytes(HTTPStatus.UNAUTHORIZED, b"bad signature\n", "text/plain")
        self.owner.on_webhook()
        self.send_bytes(HTTPStatus.ACCEPTED, b"reconciling\n", "text/plain")

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
