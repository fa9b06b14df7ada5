"""The rollout step machine: from what the devices of the current step report to the next decision.

Pure (no I/O, the time is passed in). Who calls it: the controller, once per rollout and cycle, with the
state read from the rollout's status file and an observation of its devices and telemetry. The result is
the new state (written back to the status file, so a restarted controller resumes exactly here) and at most
one decision.

Phases: Pending (no device reached yet), Progressing, Paused (a person holds it, or a ``pause: {}`` step
waits for ``promote``), Succeeded, Aborted (rolled back; stays so until the spec changes or a ``retry``).

A step completes when every device of the step is Healthy on the new version, Staged (waiting for its
maintenance window) or counted unavailable (offline, or failed within ``maxUnavailable``), or when the step's
``successThreshold`` share of its devices is Healthy; and every gate passed with enough reports, and its pause is
over. A step whose devices lack a build of the new version waits for it (WaitingForArtifacts); those devices
count as neither failed nor unavailable. With ``rollback.automatic: false`` a failed gate holds the rollout
(Paused, HeldAfterGateFailed) instead of aborting it, until a person aborts or promotes past the gate.
Only a device whose new version passed its on-device health check counts as a success. A device still in
progress after ``progressDeadline`` counts as failed; a device not seen for ``offlineAfter`` as unavailable.

Gates and their defaults (a threshold left out of ``spec.analysis``):

    failure rate      failed ÷ devices in the step           default max 0.05, always evaluated
    error rate        inference errors ÷ requests            only when maxErrorRate is set
    latency           p95 new vs previous version, percent   only when maxLatencyRegression is set
    drift             KS of outputs, new vs previous,        only when maxDriftKS is set
                      past the sample-size threshold
    drift (PSI)       PSI of predictions, new vs previous    only when maxDriftPSI is set
    reports needed    minDevicesReporting                    default 1
    failure limit     consecutive failed evaluations         default 0: abort on the first failure

A gate with fewer reports than needed is Inconclusive and holds the step; it never passes silently.

The lab stage comes before the first step when the rollout has lab devices (DeviceGroups with ``role: lab``): no
fleet device is given the version (``RolloutState.lab`` Waiting holds the plan back) until every lab device has
benchmarked it, failed it or gone offline. A failed benchmark, or a lab figure over its limit (``analysis.lab``,
default the profile's limits), stalls the rollout (Paused, LabFailed) with the figures, until a person promotes
past it or aborts, or the spec names another version. Lab devices that all went offline leave the build's figures
(build machine, emulated target) standing, and the message says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from reconciler.api.rollout import RolloutSpec
from reconciler.api.status import DecisionKind, GateStatus, Reason, RolloutPhase, RolloutState, Verdict

DEFAULT_MAX_FAILURE_RATE = 0.05
DEFAULT_MIN_REPORTING = 1
DEFAULT_FAILURE_LIMIT = 0


@dataclass(frozen=True)
class LabFigures:
    """One lab device's benchmark of the new version (None: not measured there, e.g. no power sensor)."""

    device: str
    profile: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    memory_bytes: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None


@dataclass(frozen=True)
class LabLimits:
    """What a profile's lab figures must stay under (None: not gated)."""

    latency_p95_ms: float | None = None
    memory_bytes: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None


LAB_GATES = (("labLatencyP95Ms", "p95_ms", "latency_p95_ms"), ("labMemoryBytes", "memory_bytes", "memory_bytes"),
             ("labPowerW", "power_w", "power_w"), ("labTemperatureC", "temperature_c", "temperature_c"))  # fmt: skip
"""(gate, figure, limit): the lab gates, each judged per profile on its worst device."""


@dataclass(frozen=True)
class LabObservation:
    """The rollout's lab devices and what they reported about the new version."""

    devices: int = 0
    results: tuple[LabFigures, ...] = ()
    failures: tuple[tuple[str, str], ...] = ()
    """(device, what failed): the artifact did not download, verify, load or reproduce its golden outputs there."""
    unavailable: int = 0
    missing_artifacts: int = 0
    limits: Mapping[str, LabLimits] = field(default_factory=dict)
    """profile -> its limits."""
    unmeasured: tuple[str, ...] = ()
    """Profiles of the rollout's devices without a lab device: their build's figures stand."""

    @property
    def pending(self) -> int:
        return self.devices - len(self.results) - len(self.failures) - self.unavailable


@dataclass(frozen=True)
class Observation:
    """The current step's devices and telemetry, as the controller sees them at one moment."""

    targeted: int = 0
    healthy: int = 0
    failed: int = 0
    unavailable: int = 0
    in_progress: int = 0
    staged: int = 0
    """Verified and tested, waiting for their maintenance window: they do not hold the step."""
    missing_artifacts: int = 0
    """Devices of the step whose build of the new version does not exist yet: the step waits for it."""
    builds: tuple[int, int] | None = None
    """(built, wanted) builds of the new version, when the controller builds them."""
    build_refused: str | None = None
    """A build of the new version was refused (its report): the rollout stops there, devices untouched."""
    error_rate: float | None = None
    latency_regression: float | None = None
    """Percent rise of p95 latency, new version vs previous, worst profile."""
    drift_psi: float | None = None
    drift_ks: float | None = None
    """Largest KS distance of the new version's outputs from the previous version's past its threshold (0.0: none)."""
    drift_detail: str = ""
    telemetry_devices: int = 0
    lab: LabObservation | None = None
    """The rollout's lab devices (None or no devices: no lab stage)."""

    @property
    def reporting(self) -> int:
        return self.healthy + self.failed


@dataclass(frozen=True)
class Manual:
    """A person's actions, read from the Rollout's annotations (each one is a commit)."""

    paused: bool = False
    promotions: int = 0
    retries: int = 0
    abort: str | None = None


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    message: str
    gate: GateStatus | None = None
    devices: int = 0


@dataclass(frozen=True)
class Outcome:
    state: RolloutState
    decision: Decision | None
    gates: list[GateStatus] = field(default_factory=list)


def max_unavailable(spec: RolloutSpec, targeted: int) -> int:
    return _count(spec.max_unavailable, targeted)


def max_concurrent(spec: RolloutSpec, targeted: int) -> int | None:
    """How many devices may take the new version at once (at least one), or None: no limit."""
    return None if spec.max_concurrent is None else max(1, _count(spec.max_concurrent, targeted))


def _count(value: int | str, total: int) -> int:
    return total * int(value.rstrip("%")) // 100 if isinstance(value, str) else int(value)


def evaluate_gates(spec: RolloutSpec, obs: Observation) -> list[GateStatus]:
    analysis = spec.analysis
    needed = analysis.min_devices_reporting or DEFAULT_MIN_REPORTING
    gates: list[GateStatus] = []
    threshold = analysis.max_failure_rate if analysis.max_failure_rate is not None else DEFAULT_MAX_FAILURE_RATE
    if obs.reporting + obs.unavailable < min(needed, obs.targeted):
        gates.append(
            GateStatus(
                "failureRate",
                None,
                threshold,
                Verdict.INCONCLUSIVE,
                f"{obs.reporting} of {needed} device reports needed",
            )
        )
    else:
        rate = obs.failed / obs.targeted if obs.targeted else 0.0
        verdict = Verdict.FAIL if rate > threshold else Verdict.PASS
        gates.append(
            GateStatus("failureRate", rate, threshold, verdict, f"{obs.failed} of {obs.targeted} devices failed")
        )
    telemetry = [
        ("errorRate", analysis.max_error_rate, obs.error_rate),
        ("latencyRegressionPercent", analysis.max_latency_regression, obs.latency_regression),
        ("driftPSI", analysis.max_drift_psi, obs.drift_psi),
        ("driftKS", analysis.max_drift_ks, obs.drift_ks),
    ]
    for name, limit, value in telemetry:
        if limit is None:
            continue
        if value is None or obs.telemetry_devices < min(needed, obs.targeted):
            gates.append(
                GateStatus(
                    name,
                    value,
                    limit,
                    Verdict.INCONCLUSIVE,
                    f"telemetry from {obs.telemetry_devices} of {needed} devices needed"
                    if value is not None or name != "driftKS"
                    else "no sketched outputs of both versions yet",
                )
            )
        else:
            detail = obs.drift_detail if name == "driftKS" else ""
            gates.append(GateStatus(name, value, limit, Verdict.FAIL if value > limit else Verdict.PASS, detail))
    return gates


def evaluate_lab(lab: LabObservation) -> list[GateStatus]:
    """Pass or Fail only: the lab stage waits for every lab device before it judges."""
    gates = []
    if lab.failures:
        device, why = lab.failures[0]
        more = f" (and {len(lab.failures) - 1} more)" if len(lab.failures) > 1 else ""
        gates.append(GateStatus("labBenchmarks", len(lab.failures), 0, Verdict.FAIL, f"{device}: {why}{more}"))
    for profile in sorted({r.profile for r in lab.results}):
        limits = lab.limits.get(profile, LabLimits())
        results = [r for r in lab.results if r.profile == profile]
        for gate, figure, limit_name in LAB_GATES:
            limit = getattr(limits, limit_name)
            measured = [(getattr(r, figure), r.device) for r in results if getattr(r, figure) is not None]
            if limit is None or (not measured and lab.pending):
                continue
            if not measured:  # a limit nothing can be held to: said, never passed silently
                gates.append(GateStatus(f"{gate}[{profile}]", None, limit, Verdict.FAIL,
                                        f"no lab device of {profile} measures it"))  # fmt: skip
                continue
            worst, device = max(measured)
            verdict = Verdict.FAIL if worst > limit else Verdict.PASS
            gates.append(GateStatus(f"{gate}[{profile}]", worst, limit, verdict,
                                    f"worst of {len(measured)} lab device(s): {device}"))  # fmt: skip
    return gates


def _lab_stage(spec: RolloutSpec, state: RolloutState, lab: LabObservation, stamp: str, manual: Manual) -> Outcome:
    """Before the first step: wait for the lab, stall on its failure, or let the first step begin."""
    first = _step_text(spec, 0)
    if manual.promotions > state.promotions_seen:
        message = f"lab stage passed by a person; {first}"
        promoted = replace(state, phase=RolloutPhase.PROGRESSING, lab="Overridden", step_started=stamp,
                           reason=Reason.PROMOTED, message=message, promotions_seen=manual.promotions)  # fmt: skip
        return Outcome(promoted, Decision(DecisionKind.PROMOTE, message))
    gates = evaluate_lab(lab)
    failed = next((g for g in gates if g.verdict is Verdict.FAIL), None)
    if state.lab == "Failed":  # stalled until a person decides or the spec changes; the figures stay in view
        message = _lab_failure(spec, failed) if failed is not None else state.message
        return Outcome(replace(state, phase=RolloutPhase.PAUSED, reason=Reason.LAB_FAILED, message=message), None,
                       gates)  # fmt: skip
    if lab.missing_artifacts:  # the lab's deadline runs from when its artifacts exist
        waiting = f"{lab.missing_artifacts} lab device(s) wait for a build of {spec.version}"
        return Outcome(replace(state, phase=RolloutPhase.PROGRESSING, reason=Reason.WAITING_FOR_ARTIFACTS,
                               message=waiting, step_started=stamp), None)  # fmt: skip
    if failed is not None:
        message = _lab_failure(spec, failed)
        held = replace(state, phase=RolloutPhase.PAUSED, reason=Reason.LAB_FAILED, lab="Failed", message=message)
        return Outcome(held, Decision(DecisionKind.PAUSE, message, failed), gates)
    if lab.pending > 0:
        waiting = (f"lab: {len(lab.results)} of {lab.devices} lab device(s) benchmarked {spec.version}; no fleet "
                   "device has it yet")  # fmt: skip
        return Outcome(replace(state, phase=RolloutPhase.PROGRESSING, reason=Reason.WAITING_FOR_LAB,
                               message=waiting), None, gates)  # fmt: skip
    figures = "; ".join(g.sentence() + f" <= {g.threshold:g}" for g in gates) or "no lab limits set"
    if not lab.devices:
        measured = "no lab device left: the build's figures stand"
    elif not lab.results:
        measured = f"every lab device offline: the build's figures stand ({lab.unavailable} unavailable)"
    else:
        measured = f"{len(lab.results)} lab device(s) benchmarked {spec.version}: {figures}"
    if lab.unmeasured:
        measured += f"; no lab device for {', '.join(lab.unmeasured)}: build figures"
    message = f"lab passed: {measured}; {first}"
    passed = replace(state, phase=RolloutPhase.PROGRESSING, lab="Passed", step_started=stamp, reason=Reason.LAB_PASSED,
                     message=message)  # fmt: skip
    return Outcome(passed, Decision(DecisionKind.PROMOTE, message), gates)


def _lab_failure(spec: RolloutSpec, failed: GateStatus) -> str:
    return (f"lab: {failed.sentence()} ({failed.message}); no fleet device has {spec.version}: edgectl rollout "
            "promote to go on without the lab, or abort")  # fmt: skip


def decide(spec: RolloutSpec, state: RolloutState, obs: Observation, now: datetime, manual: Manual) -> Outcome:
    stamp = now.isoformat(timespec="seconds")
    if state.phase is RolloutPhase.ABORTED:
        if manual.retries > state.retries_seen:
            fresh = RolloutState(
                RolloutPhase.PROGRESSING,
                0,
                state.stable_version,
                stamp,
                retries_seen=manual.retries,
                promotions_seen=manual.promotions,
                reason=Reason.RETRIED,
                message="retried by a person",
                lab="Waiting" if obs.lab is not None and obs.lab.devices else "",
            )
            return Outcome(fresh, Decision(DecisionKind.RETRY, "retried by a person"))
        return Outcome(state, None)
    if state.phase is RolloutPhase.SUCCEEDED:
        return Outcome(state, None)
    if manual.abort:
        aborted = replace(state, phase=RolloutPhase.ABORTED, reason=Reason.ABORTED_BY_PERSON, message=manual.abort)
        return Outcome(
            aborted, Decision(DecisionKind.ABORT, f"aborted by a person: {manual.abort}", devices=obs.targeted)
        )
    if state.phase is RolloutPhase.PENDING:
        lab = "Waiting" if obs.lab is not None and obs.lab.devices else ""
        started = replace(state, phase=RolloutPhase.PROGRESSING, step_started=stamp, reason=Reason.STARTED, message="",
                          lab=lab)  # fmt: skip
        after = decide(spec, started, obs, now, manual)  # the first step is evaluated at once
        text = _step_text(spec, 0)
        if obs.lab is not None and not obs.lab.devices and obs.lab.unmeasured:
            text += f"; no lab device for {', '.join(obs.lab.unmeasured)}: the build's figures stand"
        return Outcome(after.state, after.decision or Decision(DecisionKind.START, text), after.gates)

    gates = evaluate_gates(spec, obs) if obs.targeted else []
    if state.reason == Reason.HELD_AFTER_GATE_FAILED:  # held for a person, whatever the gates say now
        if manual.promotions > state.promotions_seen:
            return _next_step(spec, state, gates, stamp, manual.promotions)
        return Outcome(state, None, gates)
    failed = next((g for g in gates if g.verdict is Verdict.FAIL), None)
    if failed is not None:
        failures = state.failures + 1
        limit = spec.analysis.failure_limit if spec.analysis.failure_limit is not None else DEFAULT_FAILURE_LIMIT
        if failures > limit and not spec.rollback.automatic:
            held = replace(state, phase=RolloutPhase.PAUSED, reason=Reason.HELD_AFTER_GATE_FAILED, failures=failures,
                           message=f"{failed.sentence()}; automatic rollback is off: edgectl rollout abort, or "
                                   "promote past it")  # fmt: skip
            decision = None if state.reason == Reason.HELD_AFTER_GATE_FAILED else Decision(
                DecisionKind.PAUSE, held.message, failed, obs.targeted)  # fmt: skip
            return Outcome(held, decision, gates)
        if failures > limit:
            aborted = replace(
                state,
                phase=RolloutPhase.ABORTED,
                reason=Reason.GATE_FAILED,
                message=failed.sentence(),
                failures=failures,
            )
            return Outcome(aborted, Decision(DecisionKind.ABORT, failed.sentence(), failed, obs.targeted), gates)
        return Outcome(
            replace(state, failures=failures, reason=Reason.GATE_FAILED, message=failed.sentence()), None, gates
        )
    state = replace(state, failures=0)
    if manual.paused:
        if state.phase is not RolloutPhase.PAUSED or state.reason != Reason.PAUSED_BY_PERSON:
            paused = replace(
                state, phase=RolloutPhase.PAUSED, reason=Reason.PAUSED_BY_PERSON, message="paused by a person"
            )
            return Outcome(paused, Decision(DecisionKind.PAUSE, "paused by a person"), gates)
        return Outcome(state, None, gates)
    if state.reason == Reason.PAUSED_BY_PERSON:
        state = replace(state, phase=RolloutPhase.PROGRESSING, reason=Reason.RESUMED, message="resumed by a person")

    if obs.build_refused:
        return Outcome(replace(state, phase=RolloutPhase.PROGRESSING, reason=Reason.BUILD_REFUSED,
                               message=obs.build_refused), None, gates)  # fmt: skip
    if state.lab in ("Waiting", "Failed"):
        return _lab_stage(spec, state, obs.lab or LabObservation(), stamp, manual)
    if obs.missing_artifacts:
        waiting = f"{obs.missing_artifacts} device(s) of the step wait for a build of {spec.version}"
        if obs.builds is not None:
            waiting += f" ({obs.builds[0]}/{obs.builds[1]} built)"
        return Outcome(replace(state, phase=RolloutPhase.PROGRESSING, reason=Reason.WAITING_FOR_ARTIFACTS,
                               message=waiting), None, gates)  # fmt: skip
    inconclusive = next((g for g in gates if g.verdict is Verdict.INCONCLUSIVE), None)
    allowed = max_unavailable(spec, obs.targeted)
    settled = obs.healthy + obs.staged + min(obs.unavailable + obs.failed, allowed) >= obs.targeted
    threshold = spec.steps[min(state.step, len(spec.steps) - 1)].success_threshold
    if threshold is not None and obs.targeted:
        settled = settled or obs.healthy * 100 >= int(threshold.rstrip("%")) * obs.targeted
    if inconclusive is not None or not settled:
        waiting = (
            inconclusive.message
            if inconclusive
            else (
                f"{obs.healthy} of {obs.targeted} healthy, {obs.in_progress} in progress, {obs.unavailable} unavailable"
            )
        )
        return Outcome(
            replace(state, phase=RolloutPhase.PROGRESSING, reason=Reason.WAITING, message=waiting), None, gates
        )

    state = replace(state, step_done=state.step_done or stamp)
    pause = spec.steps[min(state.step, len(spec.steps) - 1)].pause
    if pause is not None and pause.duration is None and manual.promotions <= state.promotions_seen:
        held = replace(
            state,
            phase=RolloutPhase.PAUSED,
            reason=Reason.WAITING_FOR_PROMOTION,
            message=f"{_step_text(spec, state.step)} done; edgectl rollout promote to continue",
        )
        decision = Decision(DecisionKind.PAUSE, held.message) if state.phase is not RolloutPhase.PAUSED else None
        return Outcome(held, decision, gates)
    if pause is not None and pause.duration is not None:
        ends = datetime.fromisoformat(state.step_done) + pause.duration
        if now < ends and manual.promotions <= state.promotions_seen:
            return Outcome(
                replace(state, reason=Reason.PAUSING, message=f"pause until {ends.isoformat()}"), None, gates
            )
    return _next_step(spec, state, gates, stamp, max(manual.promotions, state.promotions_seen))


def _next_step(spec: RolloutSpec, state: RolloutState, gates: list[GateStatus], stamp: str, promotions: int) -> Outcome:
    """The step is done: on to the next one; after the last, on to the next group (Sequential), or Succeeded."""
    last_step = state.step + 1 >= len(spec.steps)
    if last_step and spec.group_strategy == "Sequential" and state.group + 1 < len(spec.groups):
        group = state.group + 1
        message = f"group {group + 1} of {len(spec.groups)} ({spec.groups[group]}): {_step_text(spec, 0)}"
        moved = RolloutState(RolloutPhase.PROGRESSING, 0, state.stable_version, stamp, None, Reason.PROMOTED, message,
                             0, promotions, state.retries_seen, group=group, lab=state.lab)  # fmt: skip
        return Outcome(moved, Decision(DecisionKind.PROMOTE, message), gates)
    if last_step:
        done = RolloutState(
            RolloutPhase.SUCCEEDED,
            state.step,
            spec.version,
            state.step_started,
            state.step_done,
            Reason.SUCCEEDED,
            f"all devices on {spec.version}",
            0,
            promotions,
            state.retries_seen,
            group=state.group,
            lab=state.lab,
        )
        return Outcome(done, Decision(DecisionKind.SUCCEED, f"{spec.version} on every device of the rollout"), gates)
    following = state.step + 1
    promoted = RolloutState(
        RolloutPhase.PROGRESSING,
        following,
        state.stable_version,
        stamp,
        None,
        Reason.PROMOTED,
        _step_text(spec, following),
        0,
        promotions,
        state.retries_seen,
        group=state.group,
        lab=state.lab,
    )
    return Outcome(promoted, Decision(DecisionKind.PROMOTE, promoted.message), gates)


def is_overdue(step_started: str | None, now: datetime, limit: timedelta) -> bool:
    """Whether a device still in progress has run past a deadline counted from the step's start."""
    return step_started is not None and now - datetime.fromisoformat(step_started) > limit


def _step_text(spec: RolloutSpec, index: int) -> str:
    """How people count steps: ``step 2 of 3 (50%)`` for index 1 (the state counts from 0)."""
    return f"step {index + 1} of {len(spec.steps)} ({spec.steps[index].percent}%)"
