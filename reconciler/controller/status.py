"""Status the controller writes under the fleet's status path: one per rollout, one per group.

Pure: a plan, the agents' reports, the step machine's outcome and the previous status in; typed status values
(``reconciler.api.status``) out, which the loop writes to Git and mirrors to the backend. The content is a
function of the state only (no timestamps of this reconcile), so an unchanged fleet renders identical files and
the status writer commits nothing; a restarted controller renders the same files again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from reconciler.api import FleetTree
from reconciler.api.status import (
    FAILING,
    PROBLEMS,
    DecisionRecord,
    DeviceCounts,
    FailingDevice,
    GroupStatus,
    RolloutPhase,
    RolloutStatus,
)
from reconciler.cluster import AssignmentStatus
from reconciler.plan import Desired, Device, Plan
from reconciler.rollout.engine import Outcome


def rollout_status(
    tree: FleetTree,
    name: str,
    target: Plan,
    statuses: Mapping[tuple[str, str], AssignmentStatus],
    previous: RolloutStatus,
    revision: str,
    commit: str,
    outcome: Outcome | None,
    now: datetime,
) -> RolloutStatus:
    """``outcome``: the step machine's result in this cycle; without it (an inactive rollout) the previous
    state, gates and decisions are kept."""
    spec = tree.rollouts[name].spec
    mine = target.for_rollout(name)
    versions: dict[str, Counter[str]] = {}
    unreported = AssignmentStatus().phase
    for desired in mine:  # once per device of the rollout: no object made per device (100,000 a cycle)
        reported = statuses.get((desired.device, desired.model))
        phase = reported.phase if reported is not None else unreported
        if reported is not None and reported.installed_version and reported.installed_version != desired.version:
            phase = f"{phase}({reported.installed_version})"
        counts = versions.get(desired.version)
        if counts is None:
            counts = versions[desired.version] = Counter()
        counts[phase] += 1
    status = RolloutStatus(
        rollout=name,
        model=spec.model,
        version=spec.version,
        state=previous.state,
        observed_revision=revision,
        # The commit that changed the specs: kept while the specs stay the same revision.
        observed_commit=previous.observed_commit if previous.observed_revision == revision else commit,
        devices=DeviceCounts(
            len(mine), sum(1 for d in mine if d.in_rollout), {v: dict(c) for v, c in versions.items()}
        ),
        gates=previous.gates,
        last_decision=previous.last_decision,
        history=previous.history,
        problems=tuple(sorted({f"{p.device}: {p.message}" for p in target.problems if p.model in (None, spec.model)})
                       [:PROBLEMS]),
        failing=failing_devices(spec.version, (d.device for d in mine), spec.model, statuses),
    )  # fmt: skip
    if not status.failing and (outcome.state if outcome else previous.state).phase is RolloutPhase.ABORTED:
        # Once an abort returned the devices their reports say Healthy on the stable version: the evidence stays.
        status = replace(status, failing=previous.failing)
    if outcome is None:
        return status
    # A finished rollout evaluates no gates: keep the last measured ones, the evidence of how it ended.
    finished = outcome.state.phase in (RolloutPhase.ABORTED, RolloutPhase.SUCCEEDED)
    status = replace(status, state=outcome.state, gates=tuple(outcome.gates) if outcome.gates or not finished
                     else previous.gates)  # fmt: skip
    if outcome.decision is not None:
        decision = outcome.decision
        record = DecisionRecord(now.isoformat(timespec="seconds"), decision.kind, decision.message, outcome.state.step)
        status = status.with_decision(record)
    return status


def failing_devices(
    version: str, devices: Iterable[str], model: str, statuses: Mapping[tuple[str, str], AssignmentStatus]
) -> tuple[FailingDevice, ...]:
    """The devices whose agents report that ``version`` failed on them (Failed, or RolledBack from it), with
    their reasons; the first ``FAILING`` by name."""
    failing = []
    for device in sorted(devices):
        status = statuses.get((device, model))
        if status is None or status.phase not in ("Failed", "RolledBack"):
            continue
        if status.target_version not in (None, version):
            continue
        failing.append(FailingDevice(device, version, status.phase, status.reason, status.message[:MESSAGE]))
    return tuple(failing[:FAILING])


MESSAGE = 300
"""Characters of an agent's failure message kept in the status file."""


def group_status(
    tree: FleetTree,
    name: str,
    devices: Iterable[Device],
    target: Plan,
    statuses: Mapping[tuple[str, str], AssignmentStatus],
    wanted: Mapping[str, list[Desired]] | None = None,
) -> GroupStatus:
    """Devices of the group and, per model version, how many are in each phase. ``wanted``: the target's specs by
    device (:func:`specs_by_device`), made once for every group of a cycle."""
    matches = tree.groups[name].spec.selector.matcher()
    members = sorted(d.name for d in devices if matches(d.labels))
    wanted = specs_by_device(target) if wanted is None else wanted
    models: dict[str, Counter[str]] = {}
    unreported = AssignmentStatus().phase
    for device in members:
        for desired in wanted.get(device, ()):
            reported = statuses.get((device, desired.model))
            key = f"{desired.model}@{desired.version}"
            counts = models.get(key)
            if counts is None:
                counts = models[key] = Counter()
            counts[reported.phase if reported is not None else unreported] += 1
    return GroupStatus(name, len(members), {k: dict(v) for k, v in models.items()})


def specs_by_device(target: Plan) -> dict[str, list[Desired]]:
    wanted: dict[str, list[Desired]] = {}
    for desired in target.desired.values():
        found = wanted.get(desired.device)
        if found is None:
            wanted[desired.device] = [desired]
        else:
            found.append(desired)
    return wanted
