"""The Kubernetes fixture is a real API server: CRDs register, server-side apply merges, reads come back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.kube

GROUP, VERSION, PLURAL = "test.edgereconciler.io", "v1", "widgets"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer"}, "color": {"type": "string"}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def _wait_established(api: client.ApiextensionsV1Api, name: str) -> None:
    for _ in range(100):
        crd = api.read_custom_resource_definition(name)
        if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
            return
        time.sleep(0.1)
    raise AssertionError(f"CRD {name} never became Established")


def test_crd_and_server_side_apply_round_trip(kubeconfig: Path):
    api_client = config.new_client_from_config(str(kubeconfig))
    assert client.VersionApi(api_client).get_code().git_version == "v1.20.2"
    extensions = client.ApiextensionsV1Api(api_client)
    extensions.create_custom_resource_definition(CRD)
    _wait_established(extensions, CRD["metadata"]["name"])

    objects = client.CustomObjectsApi(api_client)

    def apply(body: dict, manager: str) -> dict:
        return objects.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, body["metadata"]["name"], body,
            field_manager=manager, force=True, _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    widget = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": "w1"}}
    apply({**widget, "spec": {"size": 3}}, "edge-reconciler")
    apply({**widget, "spec": {"color": "blue"}}, "someone-else")  # a second manager owns another field

    stored = objects.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w1")
    assert stored["spec"] == {"size": 3, "color": "blue"}
    managers = {entry["manager"] for entry in stored["metadata"]["managedFields"]}
    assert managers == {"edge-reconciler", "someone-else"}

    # Real schema validation, not a fake. Kubernetes 1.20 answers a type error in an apply patch with 500
    # ("failed to create typed patch object"), where a create gets 422: callers must not retry on it.
    with pytest.raises(ApiException) as refused:
        apply({**widget, "spec": {"size": "three"}}, "edge-reconciler")
    assert refused.value.status in (422, 500)
    assert ".spec.size" in refused.value.body
    unchanged = objects.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w1")
    assert unchanged["spec"] == {"size": 3, "color": "blue"}
