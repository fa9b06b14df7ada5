"""An agent pod enrols with its projected ServiceAccount token, against the real API server: TokenRequest makes
the token a kubelet would mount (bound to the pod, audience ``edge-reconciler``), ``node_of_token`` asks the
server about it and reads the pod, ``Identity.enrol_node`` issues the certificate; the last test goes through
the device API and the agent's client as in a pod. Pods are objects only: no kubelet runs them, so
``spec.nodeName`` is set by the test as a DaemonSet would."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client

from reconciler.cluster import PermanentClusterError, TemporaryClusterError, kubernetes_backend
from reconciler.cluster.kubernetes import KubernetesBackend
from reconciler.deviceapi.ca import FleetCA, device_of
from reconciler.deviceapi.client import DeviceClient, DeviceRefusedError
from reconciler.deviceapi.identity import SERVICE_ACCOUNT_AUDIENCE, Identity, IdentityError
from reconciler.deviceapi.server import DeviceAPIServer
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry

pytestmark = pytest.mark.kube

AGENT = "edge-reconciler-agent"
IMAGE = "registry.example/edge-reconciler:0.1.0"  # never pulled: nothing runs these pods


@dataclass
class Cluster:
    backend: KubernetesBackend
    core: client.CoreV1Api
    namespace: str

    @property
    def agents(self) -> str:
        return f"{self.namespace}:{AGENT}"

    def pod(self, name: str, node: str | None = "edge-7", account: str = AGENT) -> client.V1Pod:
        spec: dict = {"serviceAccountName": account, "automountServiceAccountToken": False,
                      "containers": [{"name": "agent", "image": IMAGE}]}  # fmt: skip
        if node is not None:
            spec["nodeName"] = node
        return self.core.create_namespaced_pod(self.namespace, {"metadata": {"name": name}, "spec": spec})

    def token(self, pod: client.V1Pod | None, account: str = AGENT, audience: str = SERVICE_ACCOUNT_AUDIENCE) -> str:
        """What the kubelet mounts for a projected serviceAccountToken volume (``pod`` None: a token bound to
        nothing, as ``kubectl create token`` gives)."""
        bound = None
        if pod is not None:
            bound = client.V1BoundObjectReference(kind="Pod", api_version="v1", name=pod.metadata.name,
                                                  uid=pod.metadata.uid)  # fmt: skip
        spec = client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=3600, bound_object_ref=bound)
        request = client.AuthenticationV1TokenRequest(spec=spec)
        return self.core.create_namespaced_service_account_token(account, self.namespace, request).status.token

    def node_of(self, token: str) -> str:
        return self.backend.node_of_token(token, SERVICE_ACCOUNT_AUDIENCE, self.agents)

    def delete(self, pod: client.V1Pod) -> None:
        self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)


@pytest.fixture
def cluster(kubeconfig: Path) -> Iterator[Cluster]:
    namespace = f"enrol-{uuid.uuid4().hex[:8]}"
    backend = kubernetes_backend(kubeconfig, namespace)
    core = client.CoreV1Api(backend.api)
    core.create_namespace({"metadata": {"name": namespace}})
    for account in (AGENT, "inference-sidecar"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    yield Cluster(backend, core, namespace)
    core.delete_namespace(namespace)


@pytest.fixture
def identity(tmp_path: Path) -> Iterator[Identity]:
    registry = SQLiteRegistry(tmp_path / "devices.sqlite")
    yield Identity(FleetCA.load_or_create(tmp_path / "ca"), registry)
    registry.close()


def csr_for(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM).decode()


def refused(cluster: Cluster, token: str) -> str:
    with pytest.raises(PermanentClusterError) as caught:
        cluster.node_of(token)
    return str(caught.value)


def test_an_agent_pod_enrols_as_the_node_it_runs_on(cluster: Cluster, identity: Identity):
    from datetime import UTC, datetime

    pod = cluster.pod("agent-a1b2c")
    node = cluster.node_of(cluster.token(pod))
    assert node == "edge-7"
    issued = identity.enrol_node(node, csr_for(node), datetime.now(UTC))
    certificate = x509.load_pem_x509_certificate(issued.certificate.encode())
    assert (issued.device, device_of(certificate)) == ("edge-7", "edge-7")
    assert identity.authenticate(certificate, datetime.now(UTC)) == "edge-7"


def test_a_pod_on_one_node_cannot_enrol_another(cluster: Cluster, identity: Identity):
    from datetime import UTC, datetime

    node = cluster.node_of(cluster.token(cluster.pod("agent-a1b2c", node="edge-7")))
    with pytest.raises(IdentityError) as caught:
        identity.enrol_node(node, csr_for("edge-8"), datetime.now(UTC))
    assert caught.value.reason == "node-mismatch"
    assert identity.registry.devices() == []


def test_a_token_of_another_service_account_is_refused(cluster: Cluster):
    # Another workload on the same Node, with a correctly bound token of its own ServiceAccount.
    other = cluster.pod("sidecar-x9", account="inference-sidecar")
    message = refused(cluster, cluster.token(other, account="inference-sidecar"))
    assert f"system:serviceaccount:{cluster.namespace}:inference-sidecar" in message
    assert "not the agents'" in message


def test_a_token_for_another_audience_is_refused(cluster: Cluster):
    pod = cluster.pod("agent-a1b2c")
    assert "audience" in refused(cluster, cluster.token(pod, audience="other"))
    # The audience is checked by the API server for the audience asked: a token for Kubernetes itself fails too.
    assert "audience" in refused(cluster, cluster.token(pod, audience="https://kubernetes.default.svc"))


def test_a_token_bound_to_no_pod_is_refused(cluster: Cluster):
    assert "not bound to a pod" in refused(cluster, cluster.token(None))


def test_a_token_of_a_deleted_pod_is_refused_even_when_the_name_is_reused(cluster: Cluster):
    pod = cluster.pod("agent-a1b2c")
    token = cluster.token(pod)
    assert cluster.node_of(token) == "edge-7"  # the API server now caches this success for a few seconds
    cluster.delete(pod)
    message = refused(cluster, token)
    assert "gone" in message or "invalidated" in message, message  # ours from the cache, or the server's own

    # A new pod of the same name (a DaemonSet's replacement has a new name; a person's may not) has another uid.
    again = cluster.pod("agent-a1b2c")
    assert again.metadata.uid != pod.metadata.uid
    message = refused(cluster, token)
    assert "uid" in message.lower(), message
    assert cluster.node_of(cluster.token(again)) == "edge-7"


def test_a_pod_not_scheduled_yet_is_refused(cluster: Cluster):
    assert "not scheduled" in refused(cluster, cluster.token(cluster.pod("agent-pending", node=None)))


def test_a_garbled_token_is_refused_and_an_unreachable_server_is_temporary(cluster: Cluster):
    assert "not valid" in refused(cluster, "e" * 40)
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:9"  # discard: nothing listens
    unreachable = KubernetesBackend(client.ApiClient(configuration), cluster.namespace)
    with pytest.raises(TemporaryClusterError):
        unreachable.node_of_token("e" * 40, SERVICE_ACCOUNT_AUDIENCE, cluster.agents)


def test_the_agent_enrols_through_the_device_api_with_the_file_the_kubelet_rotates(cluster: Cluster, identity: Identity,
                                                                                  tmp_path: Path):  # fmt: skip
    from datetime import UTC, datetime, timedelta

    certificate, key = identity.ca.issue_server(["127.0.0.1"], timedelta(days=1), datetime.now(UTC))
    (tmp_path / "tls.crt").write_bytes(certificate)
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "fleet-ca.crt").write_text(identity.ca.certificate_pem)
    context = identity.ca.server_context(tmp_path / "tls.crt", tmp_path / "tls.key")
    token_file = tmp_path / "projected" / "token"
    token_file.parent.mkdir()

    def agent(name: str) -> DeviceClient:
        return DeviceClient(server.url, name, tmp_path / name / "identity", tmp_path / "fleet-ca.crt",
                            service_account_token_file=token_file)  # fmt: skip

    with DeviceAPIServer(("127.0.0.1", 0), identity, lambda: cluster.backend, context,
                         node_of_token=cluster.node_of) as server:  # fmt: skip
        pod = cluster.pod("agent-a1b2c")
        token_file.write_text(cluster.token(pod, audience="other"))  # not yet the right one
        with pytest.raises(DeviceRefusedError) as caught:
            agent("edge-7").ensure_identity()
        assert (caught.value.status, caught.value.reason) == (403, "service-account-token-refused")

        token_file.write_text(cluster.token(pod))  # the kubelet replaced the file: read again, not remembered
        first = agent("edge-7")
        first.ensure_identity()
        assert device_of(first.files.certificate()) == "edge-7"

        with pytest.raises(DeviceRefusedError) as caught:  # the same pod, asking for its neighbour's name
            agent("edge-8").ensure_identity()
        assert (caught.value.status, caught.value.reason) == (403, "node-mismatch")
        assert [d.name for d in identity.registry.devices()] == ["edge-7"]
