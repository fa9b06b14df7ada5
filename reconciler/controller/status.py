"""Status files the controller writes under ``status/`` of the fleet repo: one per rollout, one per group.

Pure: a plan, the agents' reports and the previous status in; YAML bytes out. The content is a function of
the state only (no timestamps of this reconcile), so an unchanged fleet renders identical bytes and the
status writer commits nothing; a restarted controller renders the same files again.

``observedRevision`` is a digest of the spec files the plan came from (status files excluded): a status
commit does not change it, so the controller's own commits never look like a spec change.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from reconciler.cluster import AssignmentStatus
from reconciler.plan import Device, Plan
from reconciler.api import FleetTree, SourceFile

API_VERSION = "edgereconciler.io/v1alpha1"


def spec_revision(files: Iterable[SourceFile]) -> str:
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.path):
        digest.update(file.path.encode() + b"\0" + hashlib.sha256(file.content or b"").digest())
    return f"sha256:{digest.hexdigest()}"


def parse_status(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    try:
        body = yaml.load(data, Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        return {}
    return body if isinstance(body, dict) else {}


def ready_counts(status: Mapping[str, Any]) -> tuple[int, int]:
    """(devices Healthy on the rollout's version, devices targeted), read from a rollout status file."""
    devices = status.get("devices") or {}
    healthy = (devices.get("byVersion") or {}).get(status.get("version"), {}).get("Healthy", 0)
    return healthy, devices.get("targeted", 0)


def render_rollout(
    tree: FleetTree,
    name: str,
    target: Plan,
    statuses: Mapping[tuple[str, str], AssignmentStatus],
    previous: Mapping[str, Any],
    revision: str,
    commit: str,
    engine: Mapping[str, Any] | None = None,
) -> bytes:
    """``engine``: the step machine's state, gates and decisions; without it the previous ones are kept."""
    spec = tree.rollouts[name].spec
    mine = target.for_rollout(name)
    versions: dict[str, Counter[str]] = {}
    for desired in mine:
        phase = statuses.get((desired.device, desired.model), AssignmentStatus()).phase
        reported = statuses.get((desired.device, desired.model))
        if reported is not None and reported.installed_version and reported.installed_version != desired.version:
            phase = f"{phase}({reported.installed_version})"
        versions.setdefault(desired.version, Counter())[phase] += 1
    observed = previous.get("observedCommit") if previous.get("observedRevision") == revision else commit
    body = {
        "apiVersion": API_VERSION,
        "kind": "RolloutStatus",
        "rollout": name,
        "model": spec.model,
        "version": spec.version,
        "phase": previous.get("phase", "Progressing"),
        "currentStep": int(previous.get("currentStep", 0) or 0),
        "stableVersion": previous.get("stableVersion"),
        "observedRevision": revision,
        "observedCommit": observed,
        "devices": {
            "targeted": len(mine),
            "onNewVersion": sum(1 for d in mine if d.in_rollout),
            "byVersion": {v: dict(sorted(c.items())) for v, c in sorted(versions.items())},
        },
        "problems": sorted({f"{p.device}: {p.message}" for p in target.problems if p.model in (None, spec.model)})[:50],
    }
    if engine is not None:
        problems = body.pop("problems")
        body.update(engine)
        body["problems"] = problems
    else:
        for key in ("lastDecision", "history"):
            if key in previous:
                body[key] = previous[key]
    return _dump(body)


def render_group(
    tree: FleetTree,
    name: str,
    devices: Iterable[Device],
    target: Plan,
    statuses: Mapping[tuple[str, str], AssignmentStatus],
) -> bytes:
    """Devices of the group and, per model version, how many are in each phase."""
    selector = tree.groups[name].spec.selector
    members = sorted(d.name for d in devices if selector.matches(d.labels))
    wanted = {}
    for desired in target.desired.values():
        wanted.setdefault(desired.device, []).append(desired)
    models: dict[str, Counter[str]] = {}
    for device in members:
        for desired in wanted.get(device, ()):
            phase = statuses.get((device, desired.model), AssignmentStatus()).phase
            models.setdefault(f"{desired.model}@{desired.version}", Counter())[phase] += 1
    body = {
        "apiVersion": API_VERSION,
        "kind": "DeviceGroupStatus",
        "group": name,
        "devices": len(members),
        "assignments": {k: dict(sorted(v.items())) for k, v in sorted(models.items())},
    }
    return _dump(body)


def render_controller(stalled: str | None, spec_commit: str) -> bytes:
    """The controller's own condition: Ready, or Stalled with the reason (unsigned head, spec errors)."""
    body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "ControllerStatus", "observedCommit": spec_commit}
    body["ready"] = stalled is None
    if stalled is not None:
        body["reason"] = "Stalled"
        body["message"] = stalled
    return _dump(body)


def _dump(body: Mapping[str, Any]) -> bytes:
    header = "# Written by edge-reconciler; do not edit: the controller owns this file.\n"
    return (header + yaml.safe_dump(dict(body), sort_keys=False, default_flow_style=False)).encode()
