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
    PermanentClusterError,
    TemporaryClusterError,
)
from .local import LocalBackend


def kubernetes_backend(
    kubeconfig: Path | None, namespace: str = "edge-system", node_selector: str | None = None, device: str | None = None
):
    """A ``KubernetesBackend`` from a kubeconfig (None: in-cluster credentials); ``device`` for an agent."""
    from .kubernetes import KubernetesBackend, api_client

    return KubernetesBackend(api_client(kubeconfig), namespace, node_selector, device)


def leader_elector(kubeconfig: Path | None, namespace: str, name: str, identity: str, **timing: float):
    """A ``LeaderElector`` over the Lease ``namespace/name`` (see :mod:`reconciler.cluster.lease`)."""
    from .lease import leader_elector as make

    return make(kubeconfig, namespace, name, identity, **timing)


__all__ = [
    "FIELD_MANAGER",
    "AssignmentStatus",
    "Backend",
    "ClusterError",
    "LocalBackend",
    "PermanentClusterError",
    "TemporaryClusterError",
    "kubernetes_backend",
    "leader_elector",
]
