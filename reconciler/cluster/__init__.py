"""Kubernetes access (inventory, CRDs, server-side apply, status) and the local embedded backend.

The only package that imports the Kubernetes client; ``kubernetes`` is imported lazily through
:func:`kubernetes_backend` so that local-only processes do not pay for it."""

from __future__ import annotations

from pathlib import Path

from .backend import (
    FIELD_MANAGER,
    AssignmentStatus,
    Backend,
    ClusterError,
    ConflictError,
    Event,
    PermanentClusterError,
    StoredRollout,
    TemporaryClusterError,
)
from .local import LocalBackend


def kubernetes_backend(
    kubeconfig: Path | None,
    namespace: str = "edge-system",
    node_selector: str | None = None,
    device: str | None = None,
    context: str | None = None,
):
    """A ``KubernetesBackend`` from a kubeconfig at ``context`` (None: in-cluster credentials); ``device`` for an
    agent."""
    from .kubernetes import KubernetesBackend, api_client

    return KubernetesBackend(api_client(kubeconfig, context), namespace, node_selector, device)


def custom_objects(api, namespace: str, plural: str, kind: str):
    """A ``CustomObjects`` cache of one kind in ``namespace`` (``api``: a backend's ``api`` client); see
    :mod:`reconciler.cluster.objects`."""
    from .objects import CustomObjects

    return CustomObjects(api, namespace, plural, kind)


def leader_elector(kubeconfig: Path | None, namespace: str, name: str, identity: str, on_poke=None, **timing: float):
    """A ``LeaderElector`` over the Lease ``namespace/name`` (see :mod:`reconciler.cluster.lease`); ``on_poke``
    runs on the leader when a standby passes a webhook on."""
    from .lease import leader_elector as make

    return make(kubeconfig, namespace, name, identity, on_poke, **timing)


__all__ = [
    "FIELD_MANAGER",
    "AssignmentStatus",
    "Backend",
    "ClusterError",
    "ConflictError",
    "Event",
    "LocalBackend",
    "PermanentClusterError",
    "StoredRollout",
    "TemporaryClusterError",
    "custom_objects",
    "kubernetes_backend",
    "leader_elector",
]
