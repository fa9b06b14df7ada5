"""The rollout step machine: from what the devices of the current step report to the next decision.

Pure (no I/O, the time is passed in). Who calls it: the controller, once per rollout and cycle, with the
state read from the rollout's status file and an observation of its devices and telemetry. The result is
the new state (written back to the status file, so a restarted controller resumes exactly here) and at most
one decision.

Phases: Pending (no device reached yet), Progressing, Paused (a person holds it, or a ``pause: {}`` step
waits for ``promote``), Succeeded, Aborted (rolled back; stays so until the spec changes or a ``retry``).

A step completes when every device of the step is Healthy on the new version or counted unavailable
(offline, or failed within ``maxUnavailable``), every gate passed with enough reports, and its pause is over.
Only a device whose new version passed its on-device health check counts as a success. A device still in
progress after ``progressDeadline`` counts as failed; a device not seen for ``offlineAfter`` as unavailable.

Gates and their defaults (a threshold left out of ``spec.analysis``):

    failure rate      failed ÷ devices in the step           default max 0.05, always evaluated
    error rate        inference errors ÷ requests            only when maxErrorRate is set
    latency           p95 new vs previous version, percent   only when maxLatencyRegression is set
    drift             PSI of predictions, new vs previous    only when maxDriftPSI is set
    reports needed    minDevicesReporting                    default 1
    failure limit     consecutive failed evaluations         default 0: abort on the first failure

A gate with fewer reports than needed is Inconclusive and holds the step; it never passes silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from reconciler.api.rollout import RolloutSpec

DEFAULT_MAX_FAILURE_RATE = 0.05
DEFAULT_MIN_REPORTING = 1
DEFAULT_FAILURE_LIMIT = 0


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ABORTED = "Aborted"


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class GateResult:
    name: str
    value: float | None
    threshold: float
    verdict: Verdict
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        value = None if self.value is None else round(self.value, 4)
        return {
            "name": self.name,
            "value": value,
            "threshold": self.threshold,
            "verdict": str(self.verdict),
            "detail": self.detail,
        }

    def sentence(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} {shown} > {self.threshold:g}" if self.verdict is Verdict.FAIL else f"{self.name} {shown}"


@dataclass(frozen=True)
class Observation:
    """The current step's devices and telemetry, as the controller sees them at one moment."""

    targeted: int = 0
    healthy: int = 0
    failed: int = 0
    unavailable: int = 0
    in_progress: int = 0
    error_rate: float | None = None
    latency_regression: float | None = None
    """Percent rise of p95 latency, new version vs previous, worst profile."""
    drift_psi: float | None = None
    telemetry_devices: int = 0

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
class RolloutState:
    phase: Phase = Phase.PENDING
    step: int = 0
    stable_version: str | None = None
    step_started: str | None = None
    """RFC 3339: when the current step began (deadlines and offline counting run from here)."""
    step_done: str | None = None
    """RFC 3339: when the step's devices settled (its pause runs from here)."""
    reason: str = ""
    message: str = ""
    failures: int = 0
    promotions_seen: int = 0
    retries_seen: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": str(self.phase),
            "currentStep": self.step,
            "stableVersion": self.stable_version,
            "stepStarted": self.step_started,
            "stepDone": self.step_done,
            "reason": self.reason,
            "message": self.message,
            "consecutiveFailures": self.failures,
            "promotionsSeen": self.promotions_seen,
            "retriesSeen": self.retries_seen,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RolloutState:
        try:
            phase = Phase(body.get("phase", "Pending"))
        except ValueError:
            phase = Phase.PENDING
        return cls(
            phase,
            int(body.get("currentStep") or 0),
            body.get("stableVersion"),
            body.get("stepStarted"),
            body.get("stepDone"),
            str(body.get("reason") or ""),
            str(body.get("message") or ""),
            int(body.get("consecutiveFailures") or 0),
            int(body.get("promotionsSeen") or 0),
            int(body.get("retriesSeen") or 0),
        )


@dataclass(frozen=True)
class Decision:
    kind: str
    """Start, Promote, Succeed, Abort, Retry, Pause, Resume."""
    message: str
    gate: GateResult | None = None
    devices: int = 0


@dataclass(frozen=True)
class Outcome:
    state: RolloutState
    decision: Decision | None
    gates: list[GateResult] = field(default_factory=list)


def max_unavailable(spec: RolloutSpec, targeted: int) -> int:
    value = spec.max_unavailable
    if isinstance(value, str):
        return targeted * int(value.rstrip("%")) // 100
    return int(value)


def evaluate_gates(spec: RolloutSpec, obs: Observation) -> list[GateResult]:
    analysis = spec.analysis
    needed = analysis.min_devices_reporting or DEFAULT_MIN_REPORTING
    gates: list[GateResult] = []
    threshold = analysis.max_failure_rate if analysis.max_failure_rate is not None else DEFAULT_MAX_FAILURE_RATE
    if obs.reporting + obs.unavailable < min(needed, obs.targeted):
        gates.append(
            GateResult(
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
            GateResult("failureRate", rate, threshold, verdict, f"{obs.failed} of {obs.targeted} devices failed")
        )
    telemetry = [
        ("errorRate", analysis.max_error_rate, obs.error_rate),
        ("latencyRegressionPercent", analysis.max_latency_regression, obs.latency_regression),
        ("driftPSI", analysis.max_drift_psi, obs.drift_psi),
    ]
    for name, limit, value in telemetry:
        if limit is None:
            continue
        if value is None or obs.telemetry_devices < min(needed, obs.targeted):
            gates.append(
                GateResult(
                    name,
                    value,
                    limit,
                    Verdict.INCONCLUSIVE,
                    f"telemetry from {obs.telemetry_devices} of {needed} devices needed",
                )
            )
        else:
            gates.append(GateResult(name, value, limit, Verdict.FAIL if value > limit else Verdict.PASS))
    return gates


def decide(spec: RolloutSpec, state: RolloutState, obs: Observation, now: datetime, manual: Manual) -> Outcome:
    stamp = now.isoformat(timespec="seconds")
    if state.phase is Phase.ABORTED:
        if manual.retries > state.retries_seen:
            fresh = RolloutState(
                Phase.PROGRESSING,
                0,
                state.stable_version,
                stamp,
                retries_seen=manual.retries,
                promotions_seen=manual.promotions,
                reason="Retried",
                message="retried by a person",
            )
            return Outcome(fresh, Decision("Retry", "retried by a person"))
        return Outcome(state, None)
    if state.phase is Phase.SUCCEEDED:
        return Outcome(state, None)
    if manual.abort:
        aborted = replace(state, phase=Phase.ABORTED, reason="AbortedByPerson", message=manual.abort)
        return Outcome(aborted, Decision("Abort", f"aborted by a person: {manual.abort}", devices=obs.targeted))
    if state.phase is Phase.PENDING:
        started = replace(state, phase=Phase.PROGRESSING, step_started=stamp, reason="Started", message="")
        after = decide(spec, started, obs, now, manual)  # the first step is evaluated at once
        return Outcome(after.state, after.decision or Decision("Start", _step_text(spec, 0)), after.gates)

    gates = evaluate_gates(spec, obs) if obs.targeted else []
    failed = next((g for g in gates if g.verdict is Verdict.FAIL), None)
    if failed is not None:
        failures = state.failures + 1
        limit = spec.analysis.failure_limit if spec.analysis.failure_limit is not None else DEFAULT_FAILURE_LIMIT
        if failures > limit:
            aborted = replace(
                state, phase=Phase.ABORTED, reason="GateFailed", message=failed.sentence(), failures=failures
            )
            return Outcome(aborted, Decision("Abort", failed.sentence(), failed, obs.targeted), gates)
        return Outcome(replace(state, failures=failures, reason="GateFailed", message=failed.sentence()), None, gates)
    state = replace(state, failures=0)
    if manual.paused:
        if state.phase is not Phase.PAUSED or state.reason != "PausedByPerson":
            paused = replace(state, phase=Phase.PAUSED, reason="PausedByPerson", message="paused by a person")
            return Outcome(paused, Decision("Pause", "paused by a person"), gates)
        return Outcome(state, None, gates)
    if state.reason == "PausedByPerson":
        state = replace(state, phase=Phase.PROGRESSING, reason="Resumed", message="resumed by a person")

    inconclusive = next((g for g in gates if g.verdict is Verdict.INCONCLUSIVE), None)
    allowed = max_unavailable(spec, obs.targeted)
    settled = obs.healthy + min(obs.unavailable + obs.failed, allowed) >= obs.targeted
    if inconclusive is not None or not settled:
        waiting = (
            inconclusive.detail
            if inconclusive
            else (
                f"{obs.healthy} of {obs.targeted} healthy, {obs.in_progress} in progress, {obs.unavailable} unavailable"
            )
        )
        return Outcome(replace(state, phase=Phase.PROGRESSING, reason="Waiting", message=waiting), None, gates)

    state = replace(state, step_done=state.step_done or stamp)
    pause = spec.steps[state.step].pause
    if pause is not None and pause.duration is None and manual.promotions <= state.promotions_seen:
        held = replace(
            state,
            phase=Phase.PAUSED,
            reason="WaitingForPromotion",
            message=f"{_step_text(spec, state.step)} done; edgectl rollout promote to continue",
        )
        decision = Decision("Pause", held.message) if state.phase is not Phase.PAUSED else None
        return Outcome(held, decision, gates)
    if pause is not None and pause.duration is not None:
        ends = datetime.fromisoformat(state.step_done) + pause.duration
        if now < ends and manual.promotions <= state.promotions_seen:
            return Outcome(replace(state, reason="Pausing", message=f"pause until {ends.isoformat()}"), None, gates)
    promotions = max(manual.promotions, state.promotions_seen)
    if state.step + 1 >= len(spec.steps):
        done = RolloutState(
            Phase.SUCCEEDED,
            state.step,
            spec.version,
            state.step_started,
            state.step_done,
            "Succeeded",
            f"all devices on {spec.version}",
            0,
            promotions,
            state.retries_seen,
        )
        return Outcome(done, Decision("Succeed", f"{spec.version} on every device of the rollout"), gates)
    following = state.step + 1
    promoted = RolloutState(
        Phase.PROGRESSING,
        following,
        state.stable_version,
        stamp,
        None,
        "Promoted",
        _step_text(spec, following),
        0,
        promotions,
        state.retries_seen,
    )
    return Outcome(promoted, Decision("Promote", promoted.message), gates)


def is_overdue(step_started: str | None, now: datetime, limit: timedelta) -> bool:
    """Whether a device still in progress has run past a deadline counted from the step's start."""
    return step_started is not None and now - datetime.fromisoformat(step_started) > limit


def _step_text(spec: RolloutSpec, index: int) -> str:
    """How people count steps: ``step 2 of 3 (50%)`` for index 1 (the state counts from 0)."""
    return f"step {index + 1} of {len(spec.steps)} ({spec.steps[index].percent}%)"
