"""The operator API with Kubernetes deciding who may act, on the real API server and the chart's own RBAC: the
controller runs under the chart's ServiceAccount (so the test fails when the chart forgets a right), a person
bound to the chart's operator ClusterRole aborts with the token their kubeconfig holds, one without it is
refused with the reason, a token the API server does not know is refused, and a kubeconfig without a token gets
a clear error from edgectl."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes import client, config, dynamic

from reconciler.cluster import kubernetes_backend
from reconciler.cluster.access import KubernetesAccess
from reconciler.controller.server import ControllerServer, authorizer

from .test_chart import _install_crds, _names, render

EDGECTL = Path(sys.executable).parent / "edgectl"
ROLLOUT = "vibration-anomaly-2"


def token_of(core: client.CoreV1Api, namespace: str, account: str) -> str:
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=account)))  # fmt: skip
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[],
                                                                                  expiration_seconds=3600))  # fmt: skip
    return core.create_namespaced_service_account_token(account, namespace, request).status.token


def kubeconfig_with(admin: Path, token: str | None, path: Path) -> Path:
    """The admin kubeconfig's cluster with another user: ``token``, or none at all."""
    body = yaml.safe_load(admin.read_text())
    body["users"] = [{"name": "someone", "user": {"token": token} if token else {}}]
    body["contexts"][0]["context"]["user"] = "someone"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.kube
def test_kubernetes_rbac_decides_who_may_act(kubeconfig: Path, tmp_path: Path):
    api = kubernetes_backend(kubeconfig).api
    core = client.CoreV1Api(api)
    namespace, release = f"operators-{int(time.time()) % 100000}", f"er{next(_names)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    _install_crds(kubeconfig)
    resources = dynamic.DynamicClient(api).resources
    objects = render({"operatorApi": {"kubernetesAuth": True}, "agent": {"enabled": False}}, release, namespace)
    for obj in objects:
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
            resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).server_side_apply(
                body=obj, name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"),
                field_manager="helm-test", force_conflicts=True)  # fmt: skip
    fullname = f"{release}-edge-reconciler"
    controller_token = core.create_namespaced_service_account_token(
        f"{fullname}-controller",
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token
    operator, viewer = token_of(core, namespace, "ops"), token_of(core, namespace, "viewer")
    role = client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=f"{fullname}-operator")
    client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="ops-operate"), role_ref=role,
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="ops", namespace=namespace)]))  # fmt: skip

    as_controller = config.new_client_from_config(str(kubeconfig_with(kubeconfig, controller_token,
                                                                      tmp_path / "controller")))  # fmt: skip
    acted: list[tuple[str, str, str, str]] = []

    def act(rollout: str, action: str, by: str, reason: str) -> tuple[int, str]:
        acted.append((rollout, action, by, reason))
        return 200, f"{action} {rollout or 'the controller'}"

    server = ControllerServer(("127.0.0.1", 0), authorize=authorizer({}, KubernetesAccess(as_controller, namespace)),
                              act=act, on_webhook=lambda: None).start()  # fmt: skip
    try:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig_with(kubeconfig, operator, tmp_path / "ops"))}
        env.pop("EDGECTL_TOKEN_FILE", None)
        aborted = subprocess.run([str(EDGECTL), "rollout", "abort", ROLLOUT, "--controller", server.url, "--reason",
                                  "bad gates"], capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert aborted.returncode == 0, aborted.stderr
        assert acted == [(ROLLOUT, "abort", f"system:serviceaccount:{namespace}:ops", "bad gates")]

        def post(path: str, token: str) -> tuple[int, str]:
            answer = urllib3.request("POST", server.url + path, json={"reason": "x"}, timeout=30, retries=False,
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            return answer.status, answer.json()["message"]

        status, message = post(f"/v1/rollouts/{ROLLOUT}/promote", viewer)
        assert status == 403 and f"system:serviceaccount:{namespace}:viewer may not patch fleetrollouts/{ROLLOUT}" in (
            message)  # fmt: skip
        assert post("/v1/suspend", viewer)[0] == 403
        assert post("/v1/suspend", operator)[0] == 200
        status, message = post(f"/v1/rollouts/{ROLLOUT}/abort", "not-a-token-the-api-server-knows")
        assert status == 401 and "unknown bearer token" in message
        assert [a[1] for a in acted] == ["abort", "suspend"]

        # A kubeconfig whose user has no token (a client certificate, say): a clear error, no traceback.
        env["KUBECONFIG"] = str(kubeconfig_with(kubeconfig, None, tmp_path / "certificate-user"))
        refused = subprocess.run([str(EDGECTL), "rollout", "pause", ROLLOUT, "--controller", server.url],
                                 capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "no bearer token" in refused.stderr and "--token-file" in refused.stderr
        assert len(acted) == 2
    finally:
        server.close()
