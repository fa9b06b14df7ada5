"""Prometheus metrics of the controller, in a registry of its own (served at ``/metrics``).

Who calls it: the controller loop after every cycle. Names follow Prometheus conventions and the
``edge_reconciler_`` prefix; devices per phase are gauges re-set from the latest agent reports.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .loop import CycleOutcome


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
