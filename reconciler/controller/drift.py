"""Drift, continuously: each model's telemetry over its window against the reference sketches its builds shipped.

Who calls it: the controller, every cycle; the work is done every ``intervals.drift`` of the Fleet (a cycle in
between hands back the last result), since merging every device's sketches is the one part of a cycle whose cost
grows with the fleet's traffic. The comparisons themselves are :func:`reconciler.telemetry.drift.version_drift`;
this module finds what they need: the window's summaries, each version's reference (from the manifests of its
artifacts in the store, read once per artifact), which profile each device runs and which groups it is in.

A version's ``since`` is carried from the last evaluation while it stays drifted, so a drift held for
``monitoring.drift.retrainAfter`` can be told from one that came and went.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from reconciler.api import FleetTree
from reconciler.api.status import DriftStatus, VersionDrift
from reconciler.api.types import format_duration
from reconciler.plan import Device, Plan
from reconciler.telemetry.drift import Reference, version_drift

log = logging.getLogger("edge_reconciler.controller")

Window = Callable[[str, Any, datetime], list[dict[str, Any]]]
"""(model, versions or None, since) -> the summaries of that window (``TelemetryStore.window``)."""
ArtifactKey = tuple[str, str, str]


class DriftWatch:
    def __init__(self, read_manifest: Callable[[str], Mapping[str, Any]] | None) -> None:
        """``read_manifest``: artifact id -> its manifest (None: no artifact store, so no references)."""
        self.read_manifest = read_manifest
        self._references: dict[str, Reference] = {}
        self._last: dict[str, DriftStatus] = {}
        self._at: datetime | None = None

    def evaluate(
        self,
        tree: FleetTree,
        window: Window,
        artifacts: Mapping[ArtifactKey, str],
        devices: Iterable[Device],
        target: Plan,
        previous: Mapping[str, DriftStatus],
        now: datetime,
        every: timedelta,
    ) -> dict[str, DriftStatus]:
        """model -> its drift status (models without telemetry in their window are left out)."""
        if self._at is not None and now - self._at < every and set(self._last) <= set(tree.models):
            return dict(self._last)
        devices = list(devices)
        matchers = {name: group.spec.selector.matcher() for name, group in tree.groups.items()}
        groups = {name: {d.name for d in devices if matches(d.labels)} for name, matches in matchers.items()}
        result: dict[str, DriftStatus] = {}
        for model_name, model in sorted(tree.models.items()):
            policy = model.spec.monitoring.drift
            rows = window(model_name, None, now - policy.window)
            if not rows:
                continue
            profile_of = {d.device: d.profile for d in target.desired.values() if d.model == model_name}
            by_version: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                by_version.setdefault(str(row["version"]), []).append(row)
            earlier = previous.get(model_name) or self._last.get(model_name)
            versions: dict[str, VersionDrift] = {}
            for version, summaries in sorted(by_version.items()):
                references = self._references_of(artifacts, model_name, version)
                found = version_drift(summaries, references, profile_of, groups, policy.false_alarm_rate)
                held = earlier.versions.get(version) if earlier else None
                since = (held.since if held and held.since else now.isoformat(timespec="seconds")) \
                    if found.widely_drifted else None  # fmt: skip
                versions[version] = VersionDrift(found.fleet, found.profiles, found.groups, found.devices,
                                                 found.drifted_devices, since, found.reference)  # fmt: skip
            result[model_name] = DriftStatus(model_name, format_duration(policy.window), policy.false_alarm_rate,
                                             versions)  # fmt: skip
        self._last = result
        self._at = now if result else None  # nothing to compare costs a query per model: look again next cycle
        return dict(result)

    def _references_of(self, artifacts: Mapping[ArtifactKey, str], model: str, version: str) -> dict[str, Any]:
        """profile -> the reference sketches of the version's artifact for it (an artifact's are read once)."""
        found: dict[str, Any] = {}
        for (m, v, profile), artifact_id in artifacts.items():
            if m != model or v != version or self.read_manifest is None:
                continue
            if artifact_id not in self._references:
                try:
                    self._references[artifact_id] = Reference.of(self.read_manifest(artifact_id))
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("no reference sketches", extra={"artifact": artifact_id, "error": str(exc)})
                    continue
            if self._references[artifact_id].sketches:
                found[profile] = self._references[artifact_id]
        return found
