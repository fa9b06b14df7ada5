"""Nodes of a test's own on the session's kube-apiserver: edge devices for a KubernetesBackend, removed after."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from kubernetes import client


@contextmanager
def edge_nodes(kube, run: str, names: list[str], labels: Mapping[str, str]) -> Iterator[list[str]]:
    """Nodes ``names`` labelled ``labels`` and ``test.edgereconciler.io/run=RUN`` (what the backend's node
    selector picks), deleted when the block ends."""
    core = client.CoreV1Api(kube.api)
    for name in names:
        node_labels = {**labels, "test.edgereconciler.io/run": run, "kubernetes.io/hostname": name}
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=node_labels)))
    try:
        yield names
    finally:
        for name in names:
            core.delete_node(name)
