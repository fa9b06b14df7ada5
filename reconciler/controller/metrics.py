"""Prometheus metrics of the controller, in a registry of its own (served at ``/metrics``).

Who calls it: the controller loop after every cycle. Names follow Prometheus conventions and the
``edge_reconciler_`` prefix; devices per phase are gauges re-set from the latest agent reports.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from reconciler.api.status import DriftStatus, RolloutStatus
    from reconciler.cluster import AssignmentStatus

    from .loop import CycleOutcome


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._shown: dict[Gauge, set[tuple[str, ...]]] = {}
        """Label sets each labelled gauge shows now (what ``_publish`` removes when they go)."""
        r = self.registry
        self.reconcile_seconds = Histogram(
            "edge_reconciler_reconcile_duration_seconds", "Time of one reconcile cycle.", registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )  # fmt: skip
        self.cycles = Counter(
            "edge_reconciler_reconcile_cycles", "Reconcile cycles, by result.", ["result"], registry=r
        )
        self.writes = Counter("edge_reconciler_assignment_writes", "Assignment writes, by kind.", ["kind"], registry=r)
        self.git_errors = Counter(
            "edge_reconciler_git_errors", "Failed fetches or pushes of the fleet repo.", registry=r
        )
        self.status_commits = Counter("edge_reconciler_status_commits", "Status commits pushed.", registry=r)
        ended = "Notifications by target and how they ended (sent, refused, failed, no-url, dropped)."
        self.notifications = Counter("edge_reconciler_notifications", ended, ["target", "result"], registry=r)
        self.status_tampered = Counter("edge_reconciler_status_tampered", "Status files found changed outside the "
                                       "controller (and restored from its state).", registry=r)  # fmt: skip
        self.devices = Gauge("edge_reconciler_devices", "Devices in the inventory.", registry=r)
        self.phases = Gauge("edge_reconciler_assignments", "Assignments by reported phase.", ["phase"], registry=r)
        self.plan_problems = Gauge("edge_reconciler_plan_problems", "Devices the plan could not place.", registry=r)
        # What people look at (the chart's Grafana dashboard and alert rules read these).
        self.rollout_phase = Gauge("edge_reconciler_rollout_phase", "1 for the phase each rollout is in.",
                                   ["rollout", "model", "version", "phase"], registry=r)  # fmt: skip
        self.rollout_step = Gauge("edge_reconciler_rollout_step", "Each rollout's step, counted from 1.",
                                  ["rollout"], registry=r)  # fmt: skip
        self.gate_value = Gauge("edge_reconciler_rollout_gate_value", "Each rollout gate's value as last evaluated.",
                                ["rollout", "gate"], registry=r)  # fmt: skip
        self.gate_threshold = Gauge("edge_reconciler_rollout_gate_threshold", "Each rollout gate's threshold.",
                                    ["rollout", "gate"], registry=r)  # fmt: skip
        self.gate_failing = Gauge("edge_reconciler_rollout_gate_failing", "1 while a gate's last verdict is Fail.",
                                  ["rollout", "gate"], registry=r)  # fmt: skip
        self.version_devices = Gauge("edge_reconciler_version_devices", "Devices per model, version and reported "
                                     "phase.", ["model", "version", "phase"], registry=r)  # fmt: skip
        self.latency = Gauge("edge_reconciler_inference_latency_ms", "Inference latency per model version and "
                             "hardware profile over the drift window, from the devices' merged sketches.",
                             ["model", "version", "profile", "quantile"], registry=r)  # fmt: skip
        self.drift_ks = Gauge("edge_reconciler_drift_ks", "KS distance of each figure of a model version's traffic "
                              "from its build's reference, fleet-wide.", ["model", "version", "figure"],
                              registry=r)  # fmt: skip
        self.drift_threshold = Gauge("edge_reconciler_drift_threshold", "The KS distance past which the figure has "
                                     "drifted, for its sample sizes.", ["model", "version", "figure"],
                                     registry=r)  # fmt: skip
        self.drifted_devices = Gauge("edge_reconciler_drifted_devices", "Devices whose own traffic drifted, per "
                                     "model version.", ["model", "version"], registry=r)  # fmt: skip
        self.telemetry_received = Gauge("edge_reconciler_telemetry_last_received_timestamp_seconds", "When the "
                                        "newest telemetry summary arrived (time() minus it: the telemetry lag).",
                                        registry=r)  # fmt: skip

    def observe(self, outcome: CycleOutcome, seconds: float) -> None:
        self.reconcile_seconds.observe(seconds)
        self.cycles.labels("stalled" if outcome.stalled else "ok").inc()
        self.writes.labels("apply").inc(outcome.applied)
        self.writes.labels("delete").inc(outcome.deleted)
        self.plan_problems.set(len(outcome.problems))
        if outcome.result is not None:
            self.devices.set(outcome.result.devices)

    def observe_phases(self, phases: Tally[str]) -> None:
        for phase, count in phases.items():
            self.phases.labels(phase).set(count)

    def observe_rollouts(self, rollouts: Mapping[str, RolloutStatus]) -> None:
        """Phases, steps and gates of every rollout (those gone from the spec leave the metrics)."""
        phases, steps, values, thresholds, failing = {}, {}, {}, {}, {}
        for name, status in rollouts.items():
            phases[(name, status.model, status.version, str(status.phase))] = 1
            steps[(name,)] = status.state.step + 1
            for gate in status.gates:
                if gate.value is not None:
                    values[(name, gate.name)] = gate.value
                thresholds[(name, gate.name)] = gate.threshold
                failing[(name, gate.name)] = 1 if gate.verdict == "Fail" else 0
        for gauge, found in ((self.rollout_phase, phases), (self.rollout_step, steps), (self.gate_value, values),
                             (self.gate_threshold, thresholds), (self.gate_failing, failing)):  # fmt: skip
            self._publish(gauge, found)

    def observe_versions(self, statuses: Mapping[tuple[str, str], AssignmentStatus]) -> None:
        """Devices per model, version (installed, else the one on its way) and phase."""
        counts: Tally[tuple[str, str, str]] = Tally()
        for (_, model), status in statuses.items():
            version = status.installed_version or status.target_version or ""
            counts[(model, version, status.phase)] += 1
        self._publish(self.version_devices, dict(counts))

    def observe_drift(self, drift: Mapping[str, DriftStatus]) -> None:
        """Fleet-wide drift per figure, drifted devices and latency per profile, of every model with telemetry."""
        latency, ks, thresholds, devices = {}, {}, {}, {}
        for model, status in drift.items():
            for version, found in status.versions.items():
                devices[(model, version)] = found.drifted_devices
                for figure, value in found.fleet.figures.items():
                    ks[(model, version, figure)] = value.ks
                    thresholds[(model, version, figure)] = value.threshold
                for profile, scope in found.profiles.items():
                    for quantile, ms in scope.latency_ms.items():
                        latency[(model, version, profile, quantile)] = ms
        for gauge, found in ((self.latency, latency), (self.drift_ks, ks), (self.drift_threshold, thresholds),
                             (self.drifted_devices, devices)):  # fmt: skip
            self._publish(gauge, found)

    def _publish(self, gauge: Gauge, values: Mapping[tuple[str, ...], float]) -> None:
        """Set every labelled value, then remove the label sets no longer there: a scrape in between never sees a
        series vanish and come back (which would restart an alert's ``for``)."""
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        for stale in self._shown.get(gauge, set()) - set(values):
            gauge.remove(*stale)
        self._shown[gauge] = set(values)
