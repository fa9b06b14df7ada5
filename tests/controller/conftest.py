"""The backends the controller's state tests run on."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.cluster import LocalBackend, kubernetes_backend

from ..kube_nodes import edge_nodes
from .test_controller import FACTORY
from .test_state import DEVICES

_run = itertools.count()


@pytest.fixture(params=["local", "kubernetes"])
def backend(request, tmp_path: Path) -> Iterator[object]:
    """40 factory devices: rows of the local backend, or Nodes of a real API server in a namespace of their own."""
    if request.param == "local":
        local = LocalBackend(tmp_path / "state")
        for i in range(DEVICES):
            local.register_device(f"factory-{i:03d}", FACTORY)
        yield local
        local.close()
        return
    kubeconfig = request.getfixturevalue("kubeconfig")
    run = f"state{next(_run)}"  # node names fixed per test: which devices a step selects is the same every run
    kube = kubernetes_backend(kubeconfig, namespace=f"edge-{run}", node_selector=f"test.edgereconciler.io/run={run}")
    kube.install()
    with edge_nodes(kube, run, [f"{run}-{i:03d}" for i in range(DEVICES)], FACTORY):
        yield kube
