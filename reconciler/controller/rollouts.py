"""Runs the rollout step machine inside a controller cycle: observe each rollout's current step, decide,
and turn aborts into rollback commits.

Who calls it: ``controller.loop``. The observation is built from the plan (which devices are in the step), the
agents' reports (phase, installed version, last seen) and the telemetry devices uploaded; the clock is read
once per cycle by the caller. Manual actions are annotations on the Rollout document, so each one is a commit
a person made (``edgectl rollout pause|resume|promote|abort|retry``):

    edgereconciler.io/paused: "true"       hold the rollout
    edgereconciler.io/promotions: "N"      N promotions so far (each past a pause)
    edgereconciler.io/retries: "N"         N retries of an aborted rollout
    edgereconciler.io/abort: "reason"      abort and roll back
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from reconciler.api import FleetTree, Rollout
from reconciler.api.rollout import RolloutSpec
from reconciler.api.status import DecisionKind, RolloutPhase, RolloutState, RolloutStatus
from reconciler.api.types import parse_moment
from reconciler.cluster import AssignmentStatus
from reconciler.plan import Desired, Plan, RolloutPosition
from reconciler.rollout.engine import (
    LabFigures,
    LabLimits,
    LabObservation,
    Manual,
    Observation,
    Outcome,
    decide,
    is_overdue,
)
from reconciler.telemetry.aggregate import aggregate, psi
from reconciler.telemetry.drift import DEFAULT_FALSE_ALARM_RATE, output_drift

from .actions import OperatorActions, with_operator
from .builds import BuildProgress

ANNOTATION = "edgereconciler.io"
TelemetryWindow = Callable[[str, Collection[str], datetime], list[Mapping]]
"""Summaries of a model's versions since a moment: what a rollout's gates read."""


@dataclass(frozen=True)
class RolloutCycle:
    name: str
    before: RolloutState
    outcome: Outcome
    observation: Observation


def manual_actions(rollout: Rollout) -> Manual:
    notes = rollout.metadata.annotations

    def count(key: str) -> int:
        try:
            return max(0, int(notes.get(f"{ANNOTATION}/{key}", "0")))
        except ValueError:
            return 0

    abort = notes.get(f"{ANNOTATION}/abort") or None
    return Manual(notes.get(f"{ANNOTATION}/paused") == "true", count("promotions"), count("retries"), abort)


def initial_state(
    tree: FleetTree, name: str, previous: RolloutStatus, statuses: Mapping[tuple[str, str], AssignmentStatus]
) -> RolloutState:
    """The state a rollout continues from: its status, unless the spec now asks for another version."""
    spec = tree.rollouts[name].spec
    if previous.describes(spec.model, spec.version):
        return previous.state
    # A new version: the fleet falls back to what it ran before.
    stable = None
    if previous.model == spec.model:
        succeeded = previous.phase is RolloutPhase.SUCCEEDED
        stable = previous.version if succeeded else previous.state.stable_version
    if stable is None:
        installed = Counter(
            s.installed_version for (_, model), s in statuses.items()
            if model == spec.model and s.installed_version and s.installed_version != spec.version
        )  # fmt: skip
        stable = installed.most_common(1)[0][0] if installed else _previous_version(tree, spec.model, spec.version)
    # The annotations only grow: what they count already was spent on earlier versions, never on this one.
    spent = manual_actions(tree.rollouts[name])
    return RolloutState(stable_version=stable, promotions_seen=spent.promotions, retries_seen=spent.retries)


def _previous_version(tree: FleetTree, model: str, version: str) -> str | None:
    versions = [v.version for v in tree.models[model].spec.versions] if model in tree.models else []
    return versions[versions.index(version) - 1] if version in versions and versions.index(version) > 0 else None


def position(tree: FleetTree, name: str, state: RolloutState) -> RolloutPosition:
    steps = tree.rollouts[name].spec.steps
    percent = steps[min(state.step, len(steps) - 1)].percent
    lab_hold = state.phase is RolloutPhase.PENDING or state.lab in ("Waiting", "Failed")
    return RolloutPosition(percent, state.stable_version, state.phase is RolloutPhase.ABORTED, state.group, lab_hold)


def past_waiting(spec: RolloutSpec, state: RolloutState, now: datetime) -> Callable[[AssignmentStatus], bool]:
    """Whether a device given the new version can no longer be waited for: not seen for ``offlineAfter``, or
    still in progress past ``progressDeadline`` (counted from the step's start or its last admission)."""
    started = max(filter(None, (state.step_started, state.last_admitted)), default=None)

    def gone(status: AssignmentStatus) -> bool:
        seen = parse_moment(status.last_seen)
        offline = seen is not None and now - seen > spec.offline_after
        return offline or is_overdue(started, now, spec.progress_deadline)

    return gone


def observe(
    tree: FleetTree,
    name: str,
    state: RolloutState,
    target: Plan,
    statuses: Mapping[tuple[str, str], AssignmentStatus],
    summaries: Iterable[Mapping],
    now: datetime,
    tracks_artifacts: bool = False,
    current: Mapping[tuple[str, str], Desired] | None = None,
) -> Observation:
    """``tracks_artifacts``: the controller knows which builds exist (it has a store), so a device whose artifact
    is missing is waiting for it, never failed, unavailable or overdue. ``current``: the assignments as written;
    a device of the step not yet given the new version (``maxConcurrent``) waits its turn, never overdue."""
    spec = tree.rollouts[name].spec
    step_devices = [d for d in target.for_rollout(name) if d.in_rollout]
    if spec.group_strategy == "Sequential":  # the gates judge the group being walked, not the groups done before
        step_devices = [d for d in step_devices if target.groups.get((d.device, name), state.group) == state.group]
    healthy = failed = unavailable = in_progress = staged = missing = 0
    # In-progress deadlines run from the step's start, or from the last admission of devices to it.
    started = max(filter(None, (state.step_started, state.last_admitted)), default=None)
    for desired in step_devices:
        status = statuses.get((desired.device, desired.model))
        if tracks_artifacts and desired.artifact is None:
            missing += 1
            continue
        held = current.get((desired.device, desired.model)) if current is not None else None
        if current is not None and (held is None or held.version != desired.version):
            verdict = status is not None and status.phase in ("Failed", "RolledBack")
            if verdict and status.target_version == spec.version:
                failed += 1  # it had the new version and failed it (then was sent back): a failure all the same
            else:
                in_progress += 1  # not given the new version yet: waiting for its turn
            continue
        seen = parse_moment(status.last_seen) if status else None
        if status is None or seen is None:
            # Never reported: in progress for a while, then unavailable (offline devices must not wedge a step).
            if is_overdue(state.step_started, now, spec.offline_after):
                unavailable += 1
            else:
                in_progress += 1
        elif status.phase in ("Failed", "RolledBack") and status.target_version in (None, spec.version):
            failed += 1  # a failure of this version counts even when the device went quiet afterwards
        elif now - seen > spec.offline_after:
            unavailable += 1
        elif status.phase == "Healthy" and status.installed_version == spec.version:
            healthy += 1
        elif status.phase == "Staged":
            staged += 1  # ready, waiting for its maintenance window: never overdue, never holding the step
        elif status.phase == "Retrying":
            # A transient failure (network, a frozen repository) is no verdict on the version: the device has
            # not got there yet, and counts as unavailable once the step has waited its deadline for it.
            if is_overdue(started, now, spec.progress_deadline):
                unavailable += 1
            else:
                in_progress += 1
        elif is_overdue(started, now, spec.progress_deadline):
            failed += 1  # stuck in progress
        else:
            in_progress += 1
    summaries = list(summaries)
    devices = {d.device for d in step_devices}
    new = aggregate(summaries, spec.model, spec.version, devices)
    old = aggregate(summaries, spec.model, state.stable_version or "", None) if state.stable_version else None
    drift = psi(old.predictions, new.predictions) if old is not None else None
    outputs = None
    if state.stable_version and spec.analysis.max_drift_ks is not None:
        model = tree.models.get(spec.model)
        rate = model.spec.monitoring.drift.false_alarm_rate if model else DEFAULT_FALSE_ALARM_RATE
        outputs = _output_drift(
            (s for s in summaries if s.get("model") == spec.model and s.get("version") == spec.version
             and s.get("device") in devices),
            (s for s in summaries if s.get("model") == spec.model and s.get("version") == state.stable_version),
            rate,
        )  # fmt: skip
    # Latency is compared per hardware profile (a Jetson is not a Cortex-A); the worst profile counts.
    regression = None
    if state.stable_version:
        for profile in sorted({target.profiles.get(d) for d in devices} - {None}):
            members = {d for d, p in target.profiles.items() if p == profile}
            new_p95 = aggregate(summaries, spec.model, spec.version, devices & members).latency_percentile(95)
            old_p95 = aggregate(summaries, spec.model, state.stable_version, members).latency_percentile(95)
            if new_p95 is not None and old_p95:
                change = (new_p95 / old_p95 - 1) * 100
                regression = change if regression is None else max(regression, change)
    return Observation(len(step_devices), healthy, failed, unavailable, in_progress, staged=staged,
                       missing_artifacts=missing,
                       error_rate=new.error_rate, latency_regression=regression, drift_psi=drift,
                       drift_ks=outputs[0] if outputs else None, drift_detail=outputs[1] if outputs else "",
                       telemetry_devices=len(new.devices),
                       lab=observe_lab(tree, name, state, target, statuses, now, tracks_artifacts))  # fmt: skip


LAB_FIGURES = {"p50_ms": "labP50Ms", "p95_ms": "labP95Ms", "memory_bytes": "labMemoryBytes", "power_w": "labPowerW",
               "temperature_c": "labTemperatureC"}  # fmt: skip
"""LabFigures field -> the status report's figure an agent in benchmark mode sends (``reconciler.agent.bench``)."""


def observe_lab(
    tree: FleetTree,
    name: str,
    state: RolloutState,
    target: Plan,
    statuses: Mapping[tuple[str, str], AssignmentStatus],
    now: datetime,
    tracks_artifacts: bool = False,
) -> LabObservation | None:
    """What the rollout's lab devices reported about its new version; None without a lab in the fleet. A report counts
    only for the artifact assigned (``labArtifact``), so an older build's figures never pass a newer one. A lab device
    not seen for ``offlineAfter``, or retrying a download past ``progressDeadline``, is unavailable (no verdict);
    one still measuring after ``progressDeadline`` failed. A lab device busy with another rollout of the model is
    waited for."""
    spec = tree.rollouts[name].spec
    lab, busy = target.lab_for(name), target.lab_busy.get(name, 0)
    if not lab and not busy:  # a fleet with a lab says which profiles it has none for; one without, nothing
        has_lab = any(g.spec.role == "lab" for g in tree.groups.values())
        delivered = tuple(sorted(target.delivered.get(name, set())))
        return LabObservation(unmeasured=delivered) if has_lab and delivered else None
    results: list[LabFigures] = []
    failures: list[tuple[str, str]] = []
    unavailable = missing = 0
    for desired in lab:
        if tracks_artifacts and desired.artifact is None:
            missing += 1
            continue
        status = statuses.get((desired.device, desired.model))
        seen = parse_moment(status.last_seen) if status else None
        answers = status is not None and status.target_version == spec.version and (
            status.phase != "Benchmarked" or desired.artifact is None
            or status.extra.get("labArtifact") == desired.artifact)  # fmt: skip
        overdue = is_overdue(state.step_started, now, spec.progress_deadline)
        if answers and status.phase == "Benchmarked":
            figures = {field: _number(status.extra.get(key)) for field, key in LAB_FIGURES.items()}
            absent = [LAB_FIGURES[f] for f in ("p50_ms", "p95_ms", "memory_bytes") if figures[f] is None]
            if absent:  # a benchmark without its figures cannot pass a gate
                failures.append((desired.device, f"reported no usable {', '.join(absent)}"))
            else:
                results.append(LabFigures(desired.device, desired.profile, **figures))
        elif answers and status.phase in ("Failed", "RolledBack"):
            failures.append((desired.device, status.message or status.reason or "failed"))
        elif seen is None or now - seen > spec.offline_after:
            if seen is not None or is_overdue(state.step_started, now, spec.offline_after):
                unavailable += 1
        elif answers and status.phase == "Retrying":
            if overdue:  # a transient failure is no verdict on the version
                unavailable += 1
        elif overdue:
            failures.append((desired.device, f"no benchmark within progressDeadline ({spec.progress_deadline})"))
    gates = spec.analysis.lab
    limits = {}
    for profile in {d.profile for d in lab}:
        hardware = tree.profiles[profile].spec.limits if profile in tree.profiles else None
        latency = gates.max_latency_p95 or (hardware.max_latency_p95 if hardware else None)
        memory = gates.max_memory or (hardware.max_memory if hardware else None)
        limits[profile] = LabLimits(latency.total_seconds() * 1000 if latency else None, memory, gates.max_power,
                                    gates.max_temperature)  # fmt: skip
    measured = {d.profile for d in lab}
    unmeasured = tuple(sorted(target.delivered.get(name, set()) - measured))
    return LabObservation(len(lab) + busy, tuple(results), tuple(failures), unavailable, missing, limits, unmeasured)


def _number(value: object) -> float | None:
    """A figure from a device's report as a finite float, or None (a string, a bool, NaN, a number past float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def run_rollouts(
    tree: FleetTree,
    previous: Mapping[str, RolloutStatus],
    target: Plan,
    statuses: Mapping[tuple[str, str], AssignmentStatus],
    telemetry: TelemetryWindow,
    now: datetime,
    tracks_artifacts: bool = False,
    current: Mapping[tuple[str, str], Desired] | None = None,
    operator: Mapping[str, OperatorActions] | None = None,
    builds: Mapping[tuple[str, str], BuildProgress] | None = None,
) -> dict[str, RolloutCycle]:
    """``telemetry(model, versions, since)``: the summaries each rollout's gates read, those of its new and stable
    versions over its ``analysis.window`` (``TelemetryStore.window``). ``operator``: actions asked through the
    operator API, read with the Rollout's annotations. ``builds``: where the builds of each (model, version)
    stand, when the controller builds."""
    cycles = {}
    for name, rollout in sorted(tree.rollouts.items()):
        if not rollout.active:
            continue
        before = initial_state(tree, name, previous.get(name) or RolloutStatus(name), statuses)
        spec = rollout.spec
        versions = sorted({spec.version, before.stable_version} - {None})
        summaries = telemetry(spec.model, versions, now - spec.analysis.window)
        obs = observe(tree, name, before, target, statuses, summaries, now, tracks_artifacts, current)
        progress = (builds or {}).get((spec.model, spec.version))
        if progress is not None:
            obs = replace(obs, builds=(progress.built, progress.total), build_refused=progress.refused)
        manual = with_operator(manual_actions(rollout), (operator or {}).get(name, OperatorActions()).of(spec.version))
        cycles[name] = RolloutCycle(name, before, decide(rollout.spec, before, obs, now, manual), obs)
    return cycles


def is_abort(cycle: RolloutCycle) -> bool:
    return cycle.outcome.decision is not None and cycle.outcome.decision.kind is DecisionKind.ABORT


def rollback_message(tree: FleetTree, cycle: RolloutCycle) -> str:
    decision = cycle.outcome.decision
    assert decision is not None
    spec = tree.rollouts[cycle.name].spec
    step = cycle.before.step
    returned = cycle.outcome.state.stable_version or "no version (devices keep what they run)"
    return (
        f"rollback: {cycle.name} ({spec.model} {spec.version}) aborted at step {step + 1} of {len(spec.steps)} "
        f"({spec.steps[step].percent}%): {decision.message} on {decision.devices} device(s); "
        f"returning to {returned}"
    )


def _output_drift(new, old, rate: float) -> tuple[float, str] | None:
    """The drift gate's reading; None (the gate waits) when the summaries' sketches cannot be read."""
    try:
        return output_drift(new, old, rate)
    except (ValueError, RuntimeError):
        return None
