"""The controller's operator endpoint: the Git webhook, metrics, health and readiness. Devices never come
here: they talk to the device API (``reconciler.deviceapi``) on its own port with its own certificate.

    POST     /hooks/git                  fetch now; HMAC-checked (GitHub X-Hub-Signature-256, GitLab X-Gitlab-Token)
    GET      /                           the fleet at a glance: rollouts, gates, devices, failures (read-only HTML)
    GET      /metrics                    Prometheus text format
    GET      /healthz                    200 while the process runs (liveness)
    GET      /readyz                     200 when it serves (a standby; the leader after one cycle), else 503
    POST     /v1/rollouts/NAME/ACTION    pause, resume, promote, abort, retry: in effect in the cycle it wakes;
                                         JSON body {"reason": ...}; a bearer token from --operator-tokens, or
                                         one Kubernetes knows that may patch the FleetRollout
                                         (--operator-kubernetes-auth)
    POST     /v1/reconcile               reconcile now (a bearer token)
    POST     /v1/suspend, /v1/resume     stop and start reconciling (kept across restarts; a bearer token)

Answers to the operator API are JSON ``{"message": ...}``: 200 done, 202 accepted (the cycle is still running),
401 no or unknown token, 403 a Kubernetes user without the right, 404 no such rollout or action, 409 the action
makes no sense in the rollout's phase, 503 a standby or a controller that has not loaded the fleet yet.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from reconciler.cluster.backend import ClusterError
from reconciler.httpserver import BackgroundServer, JSONHandler

if TYPE_CHECKING:
    from reconciler.cluster.access import KubernetesAccess

MAX_WEBHOOK_BODY = 1 << 20
MAX_ACTION_BODY = 16 << 10
ACTIONS = ("pause", "resume", "promote", "abort", "retry")
_ACTION_PATH = re.compile(r"^/v1/rollouts/([a-z0-9][a-z0-9.-]{0,252})/([a-z]+)$")


def _reason(body: bytes) -> str | None:
    """The ``reason`` of a JSON body (empty without one); None when the body is no JSON."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return None
    return str(request.get("reason") or "")[:500] if isinstance(request, dict) else ""


def read_tokens(path: Path) -> dict[str, str]:
    """``TOKEN NAME`` per line (``#`` comments): who may act through the operator API, and the name each action
    is recorded under. A token shorter than 16 characters is refused: it could be guessed."""
    tokens = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or len(words[0]) < 16:
            raise ValueError(f"{path}:{number}: want 'TOKEN NAME' with a token of 16 characters or more")
        tokens[words[0]] = words[1]
    return tokens


Authorize = Callable[[str, str], tuple[HTTPStatus, str]]
"""(bearer token, rollout or "" for the controller) -> (OK, the person's name) or (a refusal, why)."""


def authorizer(tokens: Mapping[str, str], kubernetes: KubernetesAccess | None = None) -> Authorize | None:
    """Static tokens first (compared in constant time), then Kubernetes (TokenReview and RBAC) when configured.
    None when neither is: the operator API stays off rather than open."""
    if not tokens and kubernetes is None:
        return None
    known = [(f"Bearer {t}".encode(), name) for t, name in tokens.items()]

    def authorize(token: str, rollout: str) -> tuple[HTTPStatus, str]:
        presented = f"Bearer {token}".encode()
        person = next((name for expected, name in known if hmac.compare_digest(presented, expected)), None)
        if person is not None:
            return HTTPStatus.OK, person
        if kubernetes is None:
            return HTTPStatus.UNAUTHORIZED, "unknown bearer token"
        try:
            access = kubernetes.review(token, rollout)
        except ClusterError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, f"cannot check the token with the Kubernetes API server: {exc}"
        if access.user is None:
            return HTTPStatus.UNAUTHORIZED, f"unknown bearer token ({access.reason})"
        if not access.allowed:
            return HTTPStatus.FORBIDDEN, access.reason
        return HTTPStatus.OK, access.user

    return authorize


class ControllerServer(BackgroundServer):
    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry | None = None,
        webhook_secret: bytes | None = None,
        on_webhook: Callable[[], None] | None = None,
        ready: Callable[[], bool] | None = None,
        authorize: Authorize | None = None,
        act: Callable[[str, str, str, str], tuple[int, str]] | None = None,
        page: Callable[[], bytes] | None = None,
    ) -> None:
        """``ready``: whether this replica should get traffic (a standby serving devices, or the leader after its
        first cycle). ``authorize`` (see :func:`authorizer`): who a bearer token is; without it the operator API is off.
        ``act(rollout, action, by, reason)`` -> (HTTP status, message); ``on_webhook`` also serves
        ``/v1/reconcile``."""
        self.registry, self.ready = registry, ready
        self.webhook_secret, self.on_webhook = webhook_secret, on_webhook
        self.authorize, self.act, self.page = authorize, act, page
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
        if path == "/" and self.owner.page is not None:
            return self.send_bytes(HTTPStatus.OK, self.owner.page(), "text/html; charset=utf-8")
        if path == "/metrics" and self.owner.registry is not None:
            return self.send_bytes(HTTPStatus.OK, generate_latest(self.owner.registry), CONTENT_TYPE_LATEST)
        self.send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/v1/"):
            return self._operator(path)
        if path != "/hooks/git" or self.owner.on_webhook is None:
            return self.send_bytes(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        body = self.read_body(MAX_WEBHOOK_BODY)
        if body is None:
            return
        if not self._authentic(body):
            return self.send_bytes(HTTPStatus.UNAUTHORIZED, b"bad signature\n", "text/plain")
        self.owner.on_webhook()
        self.send_bytes(HTTPStatus.ACCEPTED, b"reconciling\n", "text/plain")

    def _operator(self, path: str) -> None:
        if self.owner.authorize is None or self.owner.act is None:
            return self._answer(HTTPStatus.NOT_FOUND, "the operator API is off (edgectl run --operator-tokens or "
                                "--operator-kubernetes-auth)")  # fmt: skip
        matched = _ACTION_PATH.match(path)
        controller_wide = path in ("/v1/reconcile", "/v1/suspend", "/v1/resume")
        if not controller_wide and (matched is None or matched[2] not in ACTIONS):
            return self._answer(HTTPStatus.NOT_FOUND, f"no such action; one of {', '.join(ACTIONS)}")
        body = self.read_body(MAX_ACTION_BODY)  # read before any answer: the connection may carry another request
        if body is None:
            return None
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            return self._answer(HTTPStatus.UNAUTHORIZED, "no bearer token")
        status, person = self.owner.authorize(header[7:].strip(), "" if controller_wide else matched[1])
        if status != HTTPStatus.OK:
            return self._answer(status, person)
        reason = _reason(body)
        if reason is None:
            return self._answer(HTTPStatus.BAD_REQUEST, 'the body must be JSON: {"reason": "..."}')
        if path == "/v1/reconcile":
            if self.owner.on_webhook is not None:
                self.owner.on_webhook()
            return self._answer(HTTPStatus.ACCEPTED, "reconciling")
        if controller_wide:
            status, message = self.owner.act("", path.removeprefix("/v1/"), person, reason)
            return self._answer(HTTPStatus(status), message)
        status, message = self.owner.act(matched[1], matched[2], person, reason)
        return self._answer(HTTPStatus(status), message)

    def _answer(self, status: HTTPStatus, message: str) -> None:
        self.send_bytes(status, json.dumps({"message": message}).encode() + b"\n", "application/json")

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
