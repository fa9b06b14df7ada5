"""One reconcile: inventory and specs in, the assignments that changed written out.

Who calls it: the controller loop (``reconciler.controller.loop``) on every tick, and tests. The steps
are the same every time, in the manner of Flux's reconcilers: refresh the backend's view, plan (pure),
diff against what the backend holds (pure), write only the difference, and return what happened so the
caller can record status and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.api import FleetTree
from reconciler.cluster import Backend
from reconciler.plan import Changes, Plan, RolloutPosition, diff, plan


@dataclass(frozen=True)
class ReconcileResult:
    plan: Plan
    changes: Changes
    applied: int
    deleted: int
    devices: int
    seconds: float


def reconcile(
    tree: FleetTree,
    backend: Backend,
    positions: Mapping[str, RolloutPosition] | None = None,
    artifacts: Mapping[tuple[str, str, str], str] | None = None,
) -> ReconcileResult:
    """Refresh the backend's view, plan, and write the difference."""
    start = time.perf_counter()
    backend.sync()
    devices = backend.devices()
    return apply_plan(backend, plan(tree, devices, positions, artifacts), len(devices), start)


def apply_plan(backend: Backend, target: Plan, devices: int, start: float | None = None) -> ReconcileResult:
    """Write what differs between ``target`` and what the backend holds (the controller plans once per cycle
    and calls this directly)."""
    start = time.perf_counter() if start is None else start
    changes = diff(backend.assignments(), target)
    applied = backend.apply(changes.apply) if changes.apply else 0
    deleted = backend.delete(changes.delete) if changes.delete else 0
    return ReconcileResult(target, changes, applied, deleted, devices, time.perf_counter() - start)
