"""A device's life with one assigned model, as a pure phase machine: what the agent knows -> the next step.

Pure (no I/O, the time is passed in). Who calls it: :class:`reconciler.agent.agent.Agent`, the executor, once
per model and cycle and again after each step it performs. The executor does the I/O (fetch: download, verify,
install, test; switch; roll back; mark good) and each step ends in one atomic state write, so a crash anywhere
leaves the device as the last completed step left it, and the next start observes that and goes on.

    what the agent observes                                  phase        action
    another version is on trial (the assignment moved on)    Downloading  END_TRIAL  (back to the good slot; no
                                                                                      failure: superseded)
    the target is active and marked good                     Healthy      -
    the target is on trial, and broke a limit                RolledBack   ROLL_BACK  (previous slot; failure kept)
    the target is on trial, the trial is over                Healthy      MARK_GOOD  (revocation floor raised)
    the target is on trial                                   Trial        -
    assigned a build of another profile                      Failed       -          (WrongProfile)
    this version and generation failed before                as recorded  -          (no download loop)
    a transient failure, the next attempt not yet due        Retrying     -
    staged in the inactive slot, the window closed           Staged       -
    staged in the inactive slot, the window open             Trial        SWITCH
    anything else                                            Downloading  FETCH

    how a FETCH ends                                         phase        action
    transient: network, server error, TUF Frozen/Expired     Retrying     -          (capped, jittered backoff)
    permanent refusal: signature, key, revoked, profile      Failed       -          (kept for this generation)
    health check failed: hang, crash, out of memory, output  Failed       -          (HealthCheckFailed, kept)
    passed, the window closed                                Staged       -
    passed, the window open                                  Trial        SWITCH

END_TRIAL keeps the rule "while a version is on trial, the other slot holds the last good one": the version on
trial has not earned a place as anybody's fallback, so a new assignment first returns to the good slot (at once,
no download), and the new version is installed over the unproven one. An assignment back to the good version
(the controller rolled the rollout back) is then already Healthy.

Only a permanent failure or a trial rollback is a failure for the rollout's gates; Retrying is a device that has
not got there yet. The active model is never touched before SWITCH, and SWITCH keeps the previous slot, so the
device serves a verified model at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Phase(StrEnum):
    DOWNLOADING = "Downloading"
    VERIFYING = "Verifying"
    INSTALLING = "Installing"
    TESTING = "Testing"
    STAGED = "Staged"
    TRIAL = "Trial"
    HEALTHY = "Healthy"
    RETRYING = "Retrying"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"


class Action(StrEnum):
    NONE = "none"
    FETCH = "fetch"
    SWITCH = "switch"
    ROLL_BACK = "roll-back"
    END_TRIAL = "end-trial"
    MARK_GOOD = "mark-good"


class Outcome(StrEnum):
    """How a FETCH ended."""

    PASSED = "passed"
    TRANSIENT = "transient"
    REFUSED = "refused"
    UNHEALTHY = "unhealthy"


DEFAULT_TRIAL = timedelta(minutes=10)
TRIAL_MIN_REQUESTS_FOR_RATE = 20
"""Requests a trial needs before its error rate is judged: two errors in three requests is no rate yet."""
RETRY_BASE = timedelta(seconds=5)
RETRY_CAP = timedelta(minutes=10)


@dataclass(frozen=True)
class TrialLimits:
    """What a new version must hold to while on trial (the rollout's ``trial``)."""

    duration: timedelta = DEFAULT_TRIAL
    requests: int | None = None
    """Ends the trial early once this many requests were served within the limits."""
    max_error_rate: float | None = None
    max_latency_ms: float | None = None


@dataclass(frozen=True)
class TrialStats:
    """What the new version did since its switch: requests served, inference errors, runtime crashes."""

    requests: int = 0
    errors: int = 0
    crashes: int = 0
    latency_p95_ms: float | None = None


@dataclass(frozen=True)
class Trial:
    """A version on trial, as the state file keeps it (the switch and this record are one write)."""

    version: str
    started: datetime
    minimum_counter: int
    """The revocation floor to raise when the trial passes (not before: a rollback must stay possible)."""


@dataclass(frozen=True)
class Recorded:
    """A failure kept for one version and generation: the same spec is not tried again."""

    phase: Phase
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    version: str
    generation: int
    now: datetime
    active_version: str | None = None
    good: bool = False
    """The active version passed its trial (or came before trials existed)."""
    trial: Trial | None = None
    stats: TrialStats | None = None
    profile_matches: bool = True
    failure: Recorded | None = None
    """A failure recorded for this version and generation."""
    retry_at: datetime | None = None
    staged: bool = False
    """The target version is verified and tested in the inactive slot."""
    window_open: bool = True


@dataclass(frozen=True)
class Step:
    phase: Phase
    action: Action = Action.NONE
    reason: str = ""
    message: str = ""


def next_step(obs: Observation, limits: TrialLimits) -> Step:
    """The table's first half: what to do with what is on disk now."""
    if obs.trial is not None and obs.trial.version != obs.version and obs.active_version == obs.trial.version:
        return Step(Phase.DOWNLOADING, Action.END_TRIAL, "Superseded",
                    f"{obs.trial.version} was on trial when {obs.version} was assigned: back to the last good "
                    "version first")  # fmt: skip
    if obs.active_version == obs.version:
        if obs.trial is not None and obs.trial.version == obs.version:
            return _judge_trial(obs.trial, obs.stats or TrialStats(), limits, obs.now)
        return Step(Phase.HEALTHY)
    if not obs.profile_matches:
        return Step(Phase.FAILED, reason="WrongProfile", message="assigned a build of another hardware profile")
    if obs.failure is not None:
        return Step(obs.failure.phase, reason=obs.failure.reason, message=obs.failure.message)
    if obs.retry_at is not None and obs.now < obs.retry_at:
        return Step(Phase.RETRYING, message=f"next attempt at {obs.retry_at.isoformat(timespec='seconds')}")
    if obs.staged:
        if not obs.window_open:
            return Step(Phase.STAGED, message="verified and tested; switching in the maintenance window")
        return Step(Phase.TRIAL, Action.SWITCH, message="switching to the staged version")
    return Step(Phase.DOWNLOADING, Action.FETCH)


def after_fetch(outcome: Outcome, reason: str, message: str, window_open: bool) -> Step:
    """The table's second half: where a FETCH leads."""
    if outcome is Outcome.TRANSIENT:
        return Step(Phase.RETRYING, reason=reason, message=message)
    if outcome is Outcome.REFUSED:
        return Step(Phase.FAILED, reason=reason, message=message)
    if outcome is Outcome.UNHEALTHY:
        return Step(Phase.FAILED, reason="HealthCheckFailed", message=message)
    if not window_open:
        return Step(Phase.STAGED, message="verified and tested; switching in the maintenance window")
    return Step(Phase.TRIAL, Action.SWITCH, message=message)


def retry_delay(attempts: int, jitter: float) -> timedelta:
    """Capped exponential backoff; ``jitter`` in [0, 1) spreads a fleet that lost its controller at once."""
    base = min(RETRY_CAP, RETRY_BASE * (2 ** min(max(attempts - 1, 0), 16)))
    return base * (0.5 + jitter / 2)


def _judge_trial(trial: Trial, stats: TrialStats, limits: TrialLimits, now: datetime) -> Step:
    if stats.crashes:
        return Step(Phase.ROLLED_BACK, Action.ROLL_BACK, "TrialFailed",
                    f"{trial.version}: the runtime crashed {stats.crashes} time(s) on trial")  # fmt: skip
    if limits.max_error_rate is not None and stats.requests >= TRIAL_MIN_REQUESTS_FOR_RATE:
        rate = stats.errors / stats.requests
        if rate > limits.max_error_rate:
            return Step(Phase.ROLLED_BACK, Action.ROLL_BACK, "TrialFailed",
                        f"{trial.version}: error rate {rate:.1%} on trial exceeds "
                        f"{limits.max_error_rate:.1%} ({stats.errors} of {stats.requests})")  # fmt: skip
    slow = limits.max_latency_ms is not None and stats.latency_p95_ms is not None
    if slow and stats.latency_p95_ms > limits.max_latency_ms:  # type: ignore[operator]
        return Step(Phase.ROLLED_BACK, Action.ROLL_BACK, "TrialFailed",
                    f"{trial.version}: latency p95 {stats.latency_p95_ms:.1f} ms on trial exceeds "
                    f"{limits.max_latency_ms:.1f} ms")  # fmt: skip
    served = limits.requests is not None and stats.requests >= limits.requests
    if served or now - trial.started >= limits.duration:
        return Step(Phase.HEALTHY, Action.MARK_GOOD, message=f"{trial.version} passed its trial")
    left = trial.started + limits.duration - now
    return Step(Phase.TRIAL, message=f"{trial.version} on trial for {int(left.total_seconds())} s more")
