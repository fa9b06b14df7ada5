"""Builds as Kubernetes Jobs on the real API server: the controller makes one Job per build from the template the
Helm chart renders (image, resources, deadline, backoff, TTL, volumes kept; name, labels and command line added), a
second replica asking for the same build takes the Job that exists, the build runs through the Job's own
command line (no kubelet runs here: the test runs it and writes the Job's status as the Job controller
would), its result is what the controller reads, and a Job Kubernetes gave up on stops the rollout's build
with where its log is."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from reconciler.api import load_fleet
from reconciler.artifact.jobs import JobState
from reconciler.cluster import kubernetes_backend
from reconciler.cluster.buildjobs import BUILD_LABEL, KubernetesJobRunner, job_name
from reconciler.controller.builds import Builds
from reconciler.gitops.files import read_fleet_dir

from ..device_fleet import MODEL, PROFILE
from ..git_server import GitServer, git
from .test_builds import ROLLOUT_YAML, builder_fleet

EDGECTL = Path(sys.executable).parent / "edgectl"


def chart_template() -> dict:
    """The build Job template as the Helm chart renders it (builds on, a builder key Secret)."""
    from ..chart.test_chart import render

    values = {"builds": {"enabled": True, "builderKeySecret": "fleet-builder", "image": {"tag": "test"}}}
    [config_map] = [o for o in render(values, "edge-reconciler", "edge-system")
                    if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-build-job")]  # fmt: skip
    return yaml.safe_load(config_map["data"]["job.yaml"])


TEMPLATE = chart_template()


def finish(batch: client.BatchV1Api, namespace: str, name: str, condition: str, reason: str = "") -> None:
    """Write the Job's status as the Job controller would."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    conditions = [{"type": condition, "status": "True", "reason": reason or condition, "lastTransitionTime": now,
                   "lastProbeTime": now, "message": "" if condition == "Complete" else "Job has reached the "
                   "specified backoff limit"}]  # fmt: skip
    status: dict = {"startTime": now, "conditions": conditions}
    if condition == "Complete":
        conditions.insert(0, {**conditions[0], "type": "SuccessCriteriaMet"})
        status.update(succeeded=1, completionTime=now)
    else:
        conditions.insert(0, {**conditions[0], "type": "FailureTarget"})
        status.update(failed=3)
    batch.patch_namespaced_job_status(name, namespace, {"status": status})


@pytest.mark.kube
def test_builds_run_as_jobs_made_once_from_the_template(kubeconfig: Path, git_server: GitServer, tmp_path: Path,
                                                        build_store):  # fmt: skip
    api = kubernetes_backend(kubeconfig).api
    namespace = f"builds-{int(time.time() * 1000) % 10**8}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    batch = client.BatchV1Api(api)
    _, work, _ = builder_fleet(git_server, tmp_path)
    (work / "rollouts" / "vibration-anomaly-2.yaml").write_text(ROLLOUT_YAML)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "rollout", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work).strip()
    tree = load_fleet(read_fleet_dir(work))
    bare = git_server.base / "fleet.git"
    command = [str(EDGECTL), "build-job", "--git-dir", str(bare), "--store", str(build_store.root)]
    runner = KubernetesJobRunner(api, namespace, TEMPLATE, command, workers=1)
    builds = Builds(tmp_path / "builds", runner)
    now = datetime.now(UTC)

    first = builds.sync(tree, commit, now, {"vibration-anomaly-2": "1.0.0"})
    assert [j.request.version for j in first.jobs] == ["1.0.0", "2.0.0"] and len(first.started) == 1
    jobs = batch.list_namespaced_job(namespace, label_selector=f"{BUILD_LABEL}=true").items
    assert [j.metadata.name for j in jobs] == [job_name(first.jobs[0].key)]
    made = jobs[0]
    assert (made.spec.backoff_limit, made.spec.active_deadline_seconds) == (2, 3600)  # the chart's defaults
    # Sent as the template says (this test's API server predates the TTL controller's feature and drops it).
    sent = runner.manifest(first.jobs[0].key, first.jobs[0].directory, MODEL, "1.0.0", PROFILE)
    assert sent["spec"]["ttlSecondsAfterFinished"] == 86400
    container = made.spec.template.spec.containers[0]
    assert container.image == "edge-reconciler-build:test" and container.resources.limits == {
        "memory": "4Gi"}  # fmt: skip
    environment = {e.name: e.value for e in container.env}
    assert environment["EDGE_RECONCILER_BUILDER_KEY"] == "/etc/edge-reconciler/builder/builder.key"
    assert made.spec.template.spec.automount_service_account_token is False
    assert container.args == [*command, "--job", str(first.jobs[0].directory)]
    assert made.spec.template.spec.restart_policy == "Never"
    assert made.metadata.labels["app.kubernetes.io/component"] == "build"

    # Another replica (or a restarted controller) asks again: the Job that exists is the build, none is added.
    again = Builds(tmp_path / "builds", KubernetesJobRunner(api, namespace, TEMPLATE, command, workers=1))
    view = again.sync(tree, commit, now, {"vibration-anomaly-2": "1.0.0"})
    assert view.started == [] and view.jobs[0].state is JobState.RUNNING
    again.runner.start(view.jobs[0])  # a 409 is taken as the Job that exists
    assert len(batch.list_namespaced_job(namespace, label_selector=f"{BUILD_LABEL}=true").items) == 1

    # The pod's work: the Job's own command line (the store's build cache makes it quick), then its status.
    ran = subprocess.run(container.args, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    finish(batch, namespace, made.metadata.name, "Complete")
    view = builds.sync(tree, commit, now, {"vibration-anomaly-2": "1.0.0"})
    assert view.jobs[0].state is JobState.SUCCEEDED and view.artifacts[(MODEL, "1.0.0", PROFILE)]
    assert len(view.started) == 1  # the next build (2.0.0) now has the worker

    # Kubernetes gives up on 2.0.0's Job (its backoff limit): the build stops with where its log is.
    second = job_name(view.jobs[1].key)
    finish(batch, namespace, second, "Failed", "BackoffLimitExceeded")
    view = builds.sync(tree, commit, now, {"vibration-anomaly-2": "1.0.0"})
    assert view.jobs[1].state is JobState.FAILED and view.started == []
    refused = view.progress[(MODEL, "2.0.0")].refused
    assert refused is not None and "BackoffLimitExceeded" in refused
    assert f"kubectl logs -n {namespace} job/{second}" in refused
