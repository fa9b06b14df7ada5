"""Build workers as Kubernetes Jobs: one Job per build key, from a template the Helm chart renders.

Who calls it: the controller's builds (:mod:`reconciler.controller.builds`) on the Kubernetes backend. The
template (``--build-job-template``, a Job manifest the chart keeps in a ConfigMap) carries what an operator
tunes: the build image, resources, ``activeDeadlineSeconds``, ``backoffLimit``, ``ttlSecondsAfterFinished``,
the volume that holds the state directory and the store, and the builder key's Secret (mounted in the Job
only, never in the controller). The controller adds the name, the labels and the command line: ``edgectl
build-job`` on the job's directory, the same entry point a local worker runs, so a Job's result lands where
the controller reads it (``result.json`` on the shared volume) and its log stays readable with ``kubectl logs
job/NAME`` until the TTL removes the Job.

A Job's name is a function of the build key, so a second replica (or a restarted controller) that asks for the
same build gets 409 and takes the Job that exists: a build is never started twice.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .kubernetes import _wrapped, cluster_error

log = logging.getLogger(__name__)
KEY_LABEL = "edgereconciler.io/build-key"
"""The build key's first 40 hex digits (a label value is at most 63 characters); the full key is annotated."""
KEY_ANNOTATION = "edgereconciler.io/build-key"
BUILD_LABEL = "edgereconciler.io/build"
NAME_PREFIX = "build-"


def job_name(key: str) -> str:
    return f"{NAME_PREFIX}{key[:24]}"


class KubernetesJobRunner:
    def __init__(self, api: client.ApiClient, namespace: str, template: dict[str, Any], command: list[str],
                 workers: int = 1) -> None:  # fmt: skip
        """``template``: a batch/v1 Job (its pod template's first container runs the build). ``command``: the
        worker's command line without the job's directory (``edgectl build-job --git-dir ... --store ...``)."""
        if template.get("kind") != "Job" or not template.get("spec", {}).get("template", {}).get("spec", {}).get(
            "containers"
        ):
            raise ValueError("the build Job template must be a batch/v1 Job with a container")
        self.batch = client.BatchV1Api(api)
        self.namespace, self.template, self.command, self.workers = namespace, template, command, workers
        self._failures: dict[str, str] = {}

    def manifest(self, key: str, job_dir: Path, model: str, version: str, profile: str) -> dict[str, Any]:
        body = copy.deepcopy(self.template)
        metadata = body.setdefault("metadata", {})
        metadata["name"] = job_name(key)
        metadata["namespace"] = self.namespace
        labels = metadata.setdefault("labels", {})
        labels.update({BUILD_LABEL: "true", KEY_LABEL: key[:40]})
        metadata.setdefault("annotations", {}).update({KEY_ANNOTATION: key, "edgereconciler.io/build":
                                                       f"{model} {version} for {profile}"})  # fmt: skip
        pod = body["spec"]["template"]
        pod.setdefault("metadata", {}).setdefault("labels", {}).update({BUILD_LABEL: "true", KEY_LABEL: key[:40]})
        pod["spec"].setdefault("restartPolicy", "Never")
        container = pod["spec"]["containers"][0]
        container["args"] = [*self.command, "--job", str(job_dir)]
        return body

    def start(self, job) -> None:
        body = self.manifest(job.key, job.directory, job.request.model, job.request.version, job.request.profile)
        try:
            self.batch.create_namespaced_job(self.namespace, body)
            log.info("build Job created", extra={"job": body["metadata"]["name"], "build": job.request.name})
        except ApiException as exc:
            if exc.status != 409:  # 409: this build's Job exists (another replica, an earlier controller)
                raise cluster_error(f"create build Job {body['metadata']['name']}", exc) from exc

    def active(self) -> set[str]:
        """Keys of the build Jobs still running; refreshes what :meth:`failures` says."""
        with _wrapped("list build Jobs"):
            jobs = self.batch.list_namespaced_job(self.namespace, label_selector=f"{BUILD_LABEL}=true").items
        running, failures = set(), {}
        for item in jobs:
            key = (item.metadata.annotations or {}).get(KEY_ANNOTATION)
            if not key:
                continue
            conditions = {c.type: c for c in (item.status.conditions or []) if c.status == "True"}
            if "Failed" in conditions:
                why = conditions["Failed"].reason or "Failed"
                detail = f": {conditions['Failed'].message}" if conditions["Failed"].message else ""
                failures[key] = (f"build Job {item.metadata.name} failed ({why}{detail}); its log: kubectl logs -n "
                                 f"{self.namespace} job/{item.metadata.name}")  # fmt: skip
            elif "Complete" in conditions:  # read only when the job's directory has no result
                failures[key] = (f"build Job {item.metadata.name} completed without writing a result: does it mount "
                                 "the controller's state volume?")  # fmt: skip
            else:
                running.add(key)
        self._failures = failures
        return running

    def failures(self) -> dict[str, str]:
        """Keys of the build Jobs that ended without a result (Kubernetes gave up: backoff limit, deadline), with
        why, as :meth:`active` last listed them."""
        return dict(self._failures)
