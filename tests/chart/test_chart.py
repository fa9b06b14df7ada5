"""The Helm chart, with Helm's own library (helm-python-sdk) and the real API server: lint and render for the
defaults and three realistic value sets, server-side apply of every rendered object (the server validates
each), an RBAC matrix checked with SubjectAccessReview, and values the schema or the templates refuse."""

from __future__ import annotations

import base64
import itertools
import time
from pathlib import Path

import helm_python as helm
import pytest
import yaml
from kubernetes import client, dynamic

from reconciler.cluster import kubernetes_backend
from reconciler.cluster.crd import ALL_CRDS

CHART = Path(__file__).resolve().parents[2] / "charts" / "edge-reconciler"
PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
# fmt: off
VALUE_SETS = {
    "defaults": {},
    # A small fleet on K3s: HTTPS token, one controller, Cortex-A and Coral agents, trust from values.
    "k3s-token": {
        "git": {"url": "https://git.acme.example/edge/fleet.git", "auth": "token", "existingSecret": "fleet-git"},
        "trust": {"rootJson": '{"signed": {"_type": "root"}}', "releaseKeys": {"acme-ml": PEM}},
        "agent": {
            "profiles": [
                {"name": "arm-cortex-a-cpu", "nodeSelector": {"edgereconciler.io/hardware": "cortex-a"}},
                {"name": "coral-npu", "nodeSelector": {"edgereconciler.io/hardware": "coral-edgetpu"}},
            ],
            "hostPort": True,
            "interval": 15,
        },
        "webhook": {"existingSecret": "fleet-webhook"},
        "operatorApi": {"existingSecret": "fleet-operators", "kubernetesAuth": True},
        # Devices outside the cluster too: a LoadBalancer address and an Ingress passing TLS through.
        "deviceApi": {
            "service": {"type": "LoadBalancer", "loadBalancerIP": "192.0.2.10",
                        "annotations": {"metallb.universe.tf/address-pool": "edge"}},
            "hosts": ["edge-api.acme.example"],
            "ingress": {"enabled": True, "className": "nginx", "host": "devices.acme.example"},
        },
    },
    # High availability: SSH with known_hosts, two replicas with leader election on a ReadWriteMany volume,
    # Prometheus ServiceMonitor.
    "ha-ssh-metrics": {
        "git": {"url": "ssh://git@git.acme.example/edge/fleet.git", "auth": "ssh", "existingSecret": "fleet-ssh"},
        "controller": {"replicas": 2, "interval": 30, "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}}},
        "store": {"pvc": {"size": "50Gi", "storageClass": "longhorn", "accessModes": ["ReadWriteMany"]}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
                    "grafanaDashboard": {"enabled": True}},
        "ca": {"existingSecret": "fleet-ca"},  # a cert-manager Certificate's Secret
        # The controller builds what merged rollouts need, as Jobs of the build image, signed by the builder key.
        "builds": {"enabled": True, "builderKeySecret": "fleet-builder", "workers": 2},
    },
    # Controller only (agents installed elsewhere), an existing claim, private registry.
    "controller-only": {
        "image": {"repository": "registry.acme.example/edge/edge-reconciler", "tag": "0.1.0"},
        "imagePullSecrets": [{"name": "acme-registry"}],
        "agent": {"enabled": False},
        "store": {"pvc": {"existingClaim": "edge-data"}},
        "controller": {
            "leaderElection": {"enabled": False},
            "nodeSelector": {"node-role.kubernetes.io/control-plane": "true"},
        },
    },
}
# fmt: on
_names = itertools.count()


def render(values: dict, release: str, namespace: str) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=release, namespace=namespace)
    return [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]  # fmt: skip


def test_chart_crds_are_the_ones_the_controller_installs():
    with helm.Chart.load(CHART) as chart:
        crds = {yaml.safe_load(c["data"])["metadata"]["name"]: yaml.safe_load(c["data"]) for c in chart.crds}
    assert crds == {crd["metadata"]["name"]: crd for crd in ALL_CRDS}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_is_clean(name: str):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.kube
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_objects_apply_to_the_api_server(kubeconfig: Path, name: str):
    api = kubernetes_backend(kubeconfig).api
    namespace = f"chart-{name}-{int(time.time()) % 100000}"
    release = f"er{next(_names)}"
    objects = render(VALUE_SETS[name], release, namespace)
    kinds = sorted(o["kind"] for o in objects)
    expected = {"ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "RoleBinding", "Service",
                "ServiceAccount"}  # fmt: skip
    assert expected <= set(kinds)
    assert ("Secret" in kinds) == (not VALUE_SETS[name].get("ca", {}).get("existingSecret"))  # the fleet CA
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    resources = dynamic.DynamicClient(api).resources
    _install_crds(kubeconfig, monitoring="ServiceMonitor" in kinds)
    for obj in objects:
        resource = resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        applied = resource.server_side_apply(body=obj, name=obj["metadata"]["name"],
                                             namespace=obj["metadata"].get("namespace"),
                                             field_manager="helm-test", force_conflicts=True)  # fmt: skip
        assert applied.metadata.name == obj["metadata"]["name"]
    deployment = client.AppsV1Api(api).read_namespaced_deployment(f"{release}-edge-reconciler-controller", namespace)
    container = deployment.spec.template.spec.containers[0]
    assert deployment.spec.template.spec.security_context.run_as_non_root
    assert container.security_context.read_only_root_filesystem
    assert ("--leader-elect" in container.args) == VALUE_SETS[name].get("controller", {}).get(
        "leaderElection", {}).get("enabled", True)  # fmt: skip
    assert {p.http_get.path for p in (container.liveness_probe, container.readiness_probe)} == {"/healthz", "/readyz"}
    assert [c.name for c in deployment.spec.template.spec.init_containers] == ["tuf-root"]
    assert {p.name: p.container_port for p in container.ports} == {"http": 8080, "device-api": 8443}
    device_api = f"{release}-edge-reconciler-device-api"
    assert {"--listen=0.0.0.0:8080", "--device-api=0.0.0.0:8443", "--ca-dir=/etc/edge-reconciler/ca",
            f"--device-api-host={device_api}", f"--device-api-host={device_api}.{namespace}.svc",
            f"--device-api-host={device_api}.{namespace}.svc.cluster.local"} <= set(container.args)  # fmt: skip
    ca_secret = VALUE_SETS[name].get("ca", {}).get("existingSecret") or f"{release}-edge-reconciler-ca"
    [ca_volume] = [v for v in deployment.spec.template.spec.volumes if v.name == "ca"]
    assert ca_volume.secret.secret_name == ca_secret
    assert any(m.name == "ca" and m.read_only and m.mount_path == "/etc/edge-reconciler/ca"
               for m in container.volume_mounts)  # fmt: skip
    services = {s.metadata.name: s for s in client.CoreV1Api(api).list_namespaced_service(namespace).items}
    assert [p.port for p in services[f"{release}-edge-reconciler-controller"].spec.ports] == [8080]
    service_values = VALUE_SETS[name].get("deviceApi", {}).get("service", {})
    assert [p.port for p in services[device_api].spec.ports] == [8443]
    assert services[device_api].spec.type == service_values.get("type", "ClusterIP")
    if service_values.get("loadBalancerIP"):
        assert f"--device-api-host={service_values['loadBalancerIP']}" in container.args
    ingresses = client.NetworkingV1Api(api).list_namespaced_ingress(namespace).items
    ingress_values = VALUE_SETS[name].get("deviceApi", {}).get("ingress", {})
    assert len(ingresses) == int(ingress_values.get("enabled", False))
    for ingress in ingresses:
        assert ingress.metadata.annotations["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
        assert ingress.spec.rules[0].host == ingress_values["host"]
        assert f"--device-api-host={ingress_values['host']}" in container.args
    daemonsets = client.AppsV1Api(api).list_namespaced_daemon_set(namespace).items
    profiles = VALUE_SETS[name].get("agent", {}).get("profiles", [{"name": "arm-cortex-a-cpu"}])
    if VALUE_SETS[name].get("agent", {}).get("enabled", True):
        assert sorted(d.metadata.labels["edgereconciler.io/profile"] for d in daemonsets) == sorted(
            p["name"] for p in profiles)  # fmt: skip
        agent = daemonsets[0].spec.template.spec
        env = {e.name: e.value_from.field_ref.field_path for e in agent.containers[0].env if e.value_from}
        assert env == {"NODE_NAME": "spec.nodeName"}
        assert agent.volumes[0].host_path.path == "/var/lib/edge-agent"
        assert agent.node_selector["node-role.edgereconciler.io/edge"] == "true"
        # Enrolment by the pod's own token: only the audience-bound one is mounted, and of the CA only its
        # certificate.
        assert agent.automount_service_account_token is False
        volumes = {v.name: v for v in agent.volumes}
        [source] = volumes["enrolment"].projected.sources
        token = source.service_account_token
        assert (token.audience, token.expiration_seconds, token.path) == ("edge-reconciler", 3600, "token")
        assert volumes["fleet-ca"].secret.secret_name == ca_secret
        assert [(i.key, i.path) for i in volumes["fleet-ca"].secret.items] == [("tls.crt", "ca.crt")]
        mounts = {m.name: m for m in agent.containers[0].volume_mounts}
        assert mounts["enrolment"].mount_path == "/var/run/secrets/edge-reconciler" and mounts["enrolment"].read_only
        assert mounts["fleet-ca"].mount_path == "/etc/edge-agent/ca" and mounts["fleet-ca"].read_only
        args = agent.containers[0].args
        assert {f"--device-api=https://{device_api}.{namespace}.svc:8443", "--ca=/etc/edge-agent/ca/ca.crt",
                "--service-account-token-file=/var/run/secrets/edge-reconciler/token"} <= set(args)  # fmt: skip
        assert f"--agent-service-account={namespace}:{release}-edge-reconciler-agent" in container.args
    else:
        assert daemonsets == []
        assert not any(a.startswith("--agent-service-account") for a in container.args)


@pytest.mark.kube
def test_rbac_matrix(kubeconfig: Path):
    """What each ServiceAccount may do, as the API server's authorizer answers (SubjectAccessReview)."""
    api = kubernetes_backend(kubeconfig).api
    namespace = f"chart-rbac-{int(time.time()) % 100000}"
    release = f"er{next(_names)}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    resources = dynamic.DynamicClient(api).resources
    _install_crds(kubeconfig)
    for obj in render({}, release, namespace):
        resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).server_side_apply(
            body=obj, name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"),
            field_manager="helm-test", force_conflicts=True)  # fmt: skip
    authorization = client.AuthorizationV1Api(api)

    def allowed(account: str, verb: str, resource: str, group: str = "", subresource: str = "",
                scope: str | None = namespace) -> bool:  # fmt: skip
        review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{namespace}:{release}-edge-reconciler-{account}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            resource_attributes=client.V1ResourceAttributes(namespace=scope, verb=verb, group=group,
                                                            resource=resource, subresource=subresource)))  # fmt: skip
        return authorization.create_subject_access_review(review).status.allowed

    ma = {"group": "edgereconciler.io", "resource": "modelassignments"}
    fr = {"group": "edgereconciler.io", "resource": "fleetrollouts"}
    ed = {"group": "edgereconciler.io", "resource": "edgedevices"}
    dt = {"group": "edgereconciler.io", "resource": "devicetokens"}
    # The agents hold no rights at all: they speak to the device API, the controller writes what they report.
    agent_denied = {
        (f"{verb} {what['resource']}{'/' + sub if sub else ''}"): (allowed("agent", verb, **what, subresource=sub),
                                                                     False)
        for verb in ("get", "list", "watch", "patch", "update")
        for what, sub in ((ma, ""), (ma, "status"), (fr, ""), (ed, ""), (dt, ""))
    }  # fmt: skip
    matrix = {
        **{("agent", k): v for k, v in agent_denied.items()},
        ("agent", "create modelassignments"): (allowed("agent", "create", **ma), False),
        ("agent", "create tokenreviews"): (
            allowed("agent", "create", "tokenreviews", group="authentication.k8s.io", scope=None), False),
        ("agent", "get pods"): (allowed("agent", "get", "pods"), False),
        ("agent", "delete modelassignments"): (allowed("agent", "delete", **ma), False),
        ("agent", "get secrets"): (allowed("agent", "get", "secrets"), False),
        ("agent", "list nodes"): (allowed("agent", "list", "nodes", scope=None), False),
        ("agent", "update leases"): (allowed("agent", "update", "leases", group="coordination.k8s.io"), False),
        ("agent", "list modelassignments in another namespace"): (
            allowed("agent", "list", **ma, scope="default"), False),
        ("controller", "list nodes"): (allowed("controller", "list", "nodes", scope=None), True),
        ("controller", "watch nodes"): (allowed("controller", "watch", "nodes", scope=None), True),
        ("controller", "patch nodes"): (allowed("controller", "patch", "nodes", scope=None), False),
        ("controller", "patch modelassignments"): (allowed("controller", "patch", **ma), True),
        ("controller", "patch modelassignments/status"): (
            allowed("controller", "patch", **ma, subresource="status"), True),
        ("controller", "update modelassignments/status"): (
            allowed("controller", "update", **ma, subresource="status"), True),
        ("controller", "create tokenreviews"): (
            allowed("controller", "create", "tokenreviews", group="authentication.k8s.io", scope=None), True),
        ("controller", "get pods"): (allowed("controller", "get", "pods"), True),
        ("controller", "list pods"): (allowed("controller", "list", "pods"), False),
        ("controller", "get pods in another namespace"): (allowed("controller", "get", "pods", scope="default"), False),
        ("controller", "delete modelassignments"): (allowed("controller", "delete", **ma), True),
        ("controller", "patch fleetrollouts"): (
            allowed("controller", "patch", "fleetrollouts", group="edgereconciler.io"), True),
        ("controller", "patch fleetrollouts/status"): (
            allowed("controller", "patch", "fleetrollouts", group="edgereconciler.io", subresource="status"), True),
        # Device identity: every replica reads and compare-and-swaps it; tokens are deleted by people only.
        ("controller", "watch edgedevices"): (allowed("controller", "watch", **ed), True),
        ("controller", "update edgedevices"): (allowed("controller", "update", **ed), True),
        ("controller", "create devicetokens"): (allowed("controller", "create", **dt), True),
        ("controller", "update devicetokens"): (allowed("controller", "update", **dt), True),
        ("controller", "delete devicetokens"): (allowed("controller", "delete", **dt), False),
        ("controller", "update edgedevices in another namespace"): (
            allowed("controller", "update", **ed, scope="default"), False),
        ("controller", "update leases"): (allowed("controller", "update", "leases", group="coordination.k8s.io"), True),
        ("controller", "create events"): (allowed("controller", "create", "events"), True),
        ("controller", "patch events"): (allowed("controller", "patch", "events"), True),
        ("controller", "delete events"): (allowed("controller", "delete", "events"), False),
        ("agent", "create events"): (allowed("agent", "create", "events"), False),
        ("controller", "get secrets"): (allowed("controller", "get", "secrets"), False),
        ("controller", "create jobs (builds off)"): (allowed("controller", "create", "jobs", group="batch"), False),
        ("controller", "create customresourcedefinitions"): (
            allowed("controller", "create", "customresourcedefinitions", group="apiextensions.k8s.io", scope=None),
            False),
        ("controller", "patch modelassignments in another namespace"): (
            allowed("controller", "patch", **ma, scope="default"), False),
    }  # fmt: skip
    wrong = {k: v for k, v in matrix.items() if v[0] != v[1]}
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"controller": {"replicas": "two"}}, "replicas"),
        ({"controller": {"replicas": 0}}, "replicas"),
        ({"controller": {"telemetryRetention": "a month"}}, "telemetryRetention"),
        ({"git": {"url": "not a url"}}, "url"),
        ({"git": {"auth": "password"}}, "auth"),
        ({"store": {"pvc": {"size": "lots"}}}, "size"),
        ({"agent": {"profiles": [{"name": "Cortex A"}]}}, "name"),
        ({"agent": {"dataDir": "relative/path"}}, "dataDir"),
        ({"trust": {"releaseKeys": {"acme": "not a key"}}}, "releaseKeys"),
        ({"deviceApi": {"service": {"type": "Ingress"}}}, "type"),
        ({"deviceApi": {"ingress": {"host": "https://devices.acme.example"}}}, "host"),
        ({"ca": {"secret": "fleet-ca"}}, "secret"),
        ({"controler": {}}, "controler"),
    ],
)
def test_the_schema_refuses_invalid_values(values: dict, message: str):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as refused:
        chart.validate_schema(values)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"store": {"type": "oci"}}, "store.type oci"),
        ({"controller": {"replicas": 2, "leaderElection": {"enabled": False}}}, "needs controller.leaderElection"),
        ({"git": {"auth": "token"}}, "git.existingSecret is required"),
        ({"deviceApi": {"ingress": {"enabled": True}}}, "needs deviceApi.ingress.host"),
    ],
)
def test_templates_refuse_combinations_that_cannot_work(values: dict, message: str):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as refused:
        chart.render(values, name="edge", namespace="edge-system")
    assert message in str(refused.value)


def test_the_chart_made_ca_is_one_the_controller_uses_and_agents_get_its_certificate_only(tmp_path: Path):
    """Helm's genCA makes an RSA CA: the controller must load it, issue device and server certificates with it,
    and the agents' mount must hold exactly the certificate the device API's is checked against."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from reconciler.deviceapi.ca import FleetCA, device_of

    objects = render({}, "edge-reconciler", "edge-system")
    [secret] = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "edge-reconciler-ca"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    folder = tmp_path / "ca"
    folder.mkdir()
    for key, value in secret["data"].items():
        (folder / key).write_bytes(base64.b64decode(value))
    ca = FleetCA.load_or_create(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]  # read, never written
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-7")]))
        .sign(key, hashes.SHA256())
    )
    issued = ca.issue_device(csr.public_bytes(serialization.Encoding.PEM), "edge-7", timedelta(days=30), now)
    assert ca.verify_device(issued, now) == device_of(issued) == "edge-7"
    server, _ = ca.issue_server(["edge-reconciler-device-api.edge-system.svc"], timedelta(days=1), now)
    x509.load_pem_x509_certificate(server).verify_directly_issued_by(ca.certificate)

    [daemonset] = [o for o in objects if o["kind"] == "DaemonSet"]
    [fleet_ca] = [v for v in daemonset["spec"]["template"]["spec"]["volumes"] if v["name"] == "fleet-ca"]
    mounted = {item["path"]: base64.b64decode(secret["data"][item["key"]]) for item in fleet_ca["secret"]["items"]}
    assert mounted == {"ca.crt": ca.certificate_pem.encode()}


def _install_crds(kubeconfig: Path, monitoring: bool = False) -> None:
    """The product's CRDs as the controller installs them, and a ServiceMonitor CRD when the values need one."""
    backend = kubernetes_backend(kubeconfig)
    backend.install()
    # The Prometheus operator's CRDs, reduced to what validating a ServiceMonitor and a PrometheusRule needs.
    for kind in ("ServiceMonitor", "PrometheusRule") if monitoring else ():
        plural = f"{kind.lower()}s"
        name = f"{plural}.monitoring.coreos.com"
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": name},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
        }  # fmt: skip
        extensions = client.ApiextensionsV1Api(backend.api)
        extensions.patch_custom_resource_definition(name, crd, field_manager="helm-test", force=True,
                                                    _content_type="application/apply-patch+yaml")  # fmt: skip
        deadline = time.monotonic() + 30
        while not _established(extensions, name):
            assert time.monotonic() < deadline, f"{name} never became Established"
            time.sleep(0.1)
    time.sleep(1.0)  # the discovery cache of the dynamic client must see the new kinds


def _established(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    conditions = extensions.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_command_lines_parse(name: str, tmp_path: Path):
    """Every argument the chart passes exists in `edgectl` and is valid (files and folders stand in for mounts)."""
    from reconciler.cli.main import main

    workloads = [o for o in render(VALUE_SETS[name], "edge-reconciler", "edge-system")
                 if o["kind"] in ("Deployment", "DaemonSet")]  # fmt: skip
    containers = [c for obj in workloads for c in obj["spec"]["template"]["spec"]["containers"]]
    assert containers
    for container in containers:
        command, *args = [a.replace("$(NODE_NAME)", "node-1") for a in container["args"]]
        local = []
        for arg in args:
            option, _, value = arg.partition("=")
            if value.startswith("/"):
                value = str(tmp_path / value.lstrip("/"))
                target = Path(value)
                if option in ("--trusted-root", "--webhook-secret-file", "--ca", "--service-account-token-file",
                              "--operator-tokens", "--build-job-template"):  # fmt: skip
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("{}")
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    (target / "acme-ml.pub").write_text("key")
            local.append(f"{option}={value}" if value else option)
        parent = main.make_context("edgectl", [command], resilient_parsing=True)
        subcommand = main.get_command(parent, command)
        assert subcommand is not None, command
        subcommand.make_context(command, local, parent=parent)  # raises on an unknown or invalid option


@pytest.mark.kube
def test_install_upgrade_uninstall_with_helm(kubeconfig: Path):
    """A real Helm release against the API server: install, upgrade, uninstall, and what an uninstall keeps."""
    api = kubernetes_backend(kubeconfig).api
    namespace = f"chart-release-{int(time.time()) % 100000}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    values = {"trust": {"rootJson": "{}"}}
    apps = client.AppsV1Api(api)
    with helm.Config(kubeconfig_path=str(kubeconfig), namespace=namespace) as config:
        installed = config.install(str(CHART), "edge-reconciler", values)
        assert (installed["status"], installed["revision"]) == ("deployed", 1)
        controller = apps.read_namespaced_deployment("edge-reconciler-controller", namespace)
        assert "--interval=60" in controller.spec.template.spec.containers[0].args
        extensions = client.ApiextensionsV1Api(api)
        assert _established(extensions, "modelassignments.edgereconciler.io")
        core = client.CoreV1Api(api)
        fleet_ca = core.read_namespaced_secret("edge-reconciler-ca", namespace).data

        upgraded = config.upgrade(str(CHART), "edge-reconciler", {**values, "controller": {"interval": 30}})
        assert (upgraded["status"], upgraded["revision"]) == ("deployed", 2)
        controller = apps.read_namespaced_deployment("edge-reconciler-controller", namespace)
        assert "--interval=30" in controller.spec.template.spec.containers[0].args
        # The fleet CA is the same one: a new CA at each upgrade would cut off every enrolled device.
        assert core.read_namespaced_secret("edge-reconciler-ca", namespace).data == fleet_ca

        removed = config.uninstall("edge-reconciler")
        # Kept on purpose: the claim holds the TUF repository, the Secret the CA every device trusts.
        assert "edge-reconciler-data" in removed["info"] and "edge-reconciler-ca" in removed["info"]
    assert apps.list_namespaced_deployment(namespace).items == []
    claims = client.CoreV1Api(api).list_namespaced_persistent_volume_claim(namespace).items
    assert [c.metadata.name for c in claims] == ["edge-reconciler-data"]
    assert client.CoreV1Api(api).read_namespaced_secret("edge-reconciler-ca", namespace).data == fleet_ca
    assert _established(client.ApiextensionsV1Api(api), "modelassignments.edgereconciler.io")  # CRDs stay


def test_replicas_on_a_read_write_once_volume_share_a_node_and_spread_on_read_write_many():
    def affinity(values: dict) -> dict | None:
        [deployment] = [d for d in render(values, "edge", "edge-system") if d["kind"] == "Deployment"]
        return deployment["spec"]["template"]["spec"].get("affinity")

    together = affinity({"controller": {"replicas": 3}})
    assert together is not None
    [term] = together["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "controller"
    assert affinity({"controller": {"replicas": 3}, "store": {"pvc": {"accessModes": ["ReadWriteMany"]}}}) is None
    assert affinity({"controller": {"replicas": 1}}) is None
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    assert affinity({"controller": {"replicas": 3, "affinity": mine}}) == mine  # the user's own wins
