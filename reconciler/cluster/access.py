"""Who may act on a rollout, as Kubernetes decides it: the operator API's second way in, next to static tokens.

A person sends the bearer token their kubeconfig already holds (``kubectl create token``, an OIDC token, a cloud
provider's exec plugin). The controller asks the API server who that is (TokenReview) and whether that user may
``patch`` the FleetRollout in question in its namespace (LocalSubjectAccessReview), so the RBAC that governs
``kubectl edit fleetrollout`` governs ``edgectl rollout abort`` too; nobody keeps a second list of operators.
Controller-wide actions (reconcile, suspend, resume) need ``patch`` on FleetRollouts of the namespace as a whole.

Both reviews are what kube-rbac-proxy and aggregated API servers do (the ``system:auth-delegator`` rights). An
answer is kept for ``ttl`` seconds per token and rollout: a burst of actions costs two requests, and a revoked
binding takes effect within that time."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from kubernetes import client

from .backend import PermanentClusterError
from .crd import GROUP, ROLLOUT_PLURAL
from .kubernetes import _wrapped

TTL_SECONDS = 30.0
CACHED = 1024
VERB = "patch"


@dataclass(frozen=True)
class Access:
    """The API server's answer for one token and rollout: ``user`` is None when the token is not valid."""

    user: str | None
    allowed: bool
    reason: str = ""


class KubernetesAccess:
    def __init__(self, api: client.ApiClient, namespace: str, ttl: float = TTL_SECONDS) -> None:
        self.api, self.namespace, self.ttl = api, namespace, ttl
        self._answers: dict[tuple[str, str], tuple[float, Access]] = {}
        self._lock = threading.Lock()

    def review(self, token: str, rollout: str = "") -> Access:
        """Who ``token`` is and whether they may ``patch`` FleetRollout ``rollout`` (every FleetRollout of the
        namespace when empty). Raises :class:`ClusterError` when the API server cannot answer: the caller says
        so instead of refusing a person who may well be allowed."""
        key = (hashlib.sha256(token.encode()).hexdigest(), rollout)
        now = time.monotonic()
        with self._lock:
            cached = self._answers.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        answer = self._ask(token, rollout)
        with self._lock:
            if len(self._answers) >= CACHED:
                self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
                if len(self._answers) >= CACHED:
                    self._answers.clear()
            self._answers[key] = (now + self.ttl, answer)
        return answer

    def _ask(self, token: str, rollout: str) -> Access:
        with _wrapped("review an operator's token"):
            status = (
                client.AuthenticationV1Api(self.api)
                .create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)))
                .status
            )
        if not status.authenticated or status.user is None or not status.user.username:
            return Access(None, False, status.error or "the token is not valid")
        user = status.user
        what = f"{ROLLOUT_PLURAL}/{rollout}" if rollout else ROLLOUT_PLURAL
        attributes = client.V1ResourceAttributes(namespace=self.namespace, verb=VERB, group=GROUP,
                                                 resource=ROLLOUT_PLURAL, name=rollout or None)  # fmt: skip
        spec = client.V1SubjectAccessReviewSpec(user=user.username, groups=user.groups, uid=user.uid,
                                                extra=user.extra, resource_attributes=attributes)  # fmt: skip
        review = client.V1LocalSubjectAccessReview(metadata=client.V1ObjectMeta(namespace=self.namespace), spec=spec)
        with _wrapped("check an operator's rights"):
            decided = (
                client.AuthorizationV1Api(self.api)
                .create_namespaced_local_subject_access_review(self.namespace, review)
                .status
            )
        if decided.allowed:
            return Access(user.username, True)
        why = f"{user.username} may not {VERB} {what} in namespace {self.namespace}"
        return Access(user.username, False, f"{why}: {decided.reason}" if decided.reason else why)


def kubeconfig_bearer_token(context: str | None = None) -> str:
    """The bearer token the kubeconfig's user sends (``$KUBECONFIG`` or ``~/.kube/config``, at ``context``): a
    static token, or what its exec plugin returned. :class:`PermanentClusterError` without one."""
    from kubernetes import config

    try:
        api = config.new_client_from_config(context=context)
    except (config.ConfigException, OSError, TypeError, ValueError, AttributeError) as exc:
        raise PermanentClusterError(f"no kubeconfig to take a token from: {exc or type(exc).__name__}") from exc
    return bearer_token(api)


def bearer_token(kubeconfig_client: client.ApiClient) -> str:
    """The bearer token a kubeconfig's user sends (a static token, or what its exec plugin returned)."""
    header = kubeconfig_client.configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise PermanentClusterError(
            "the kubeconfig's user has no bearer token (a client certificate cannot be passed on): use "
            "--token-file, or a token of your own (kubectl create token NAME)"
        )
    return header[7:].strip()
