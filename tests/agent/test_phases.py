"""The device's phase machine, row by row of its table (pure: no files, no clock but the one passed in)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.agent.phases import (
    RETRY_CAP,
    Action,
    Observation,
    Outcome,
    Phase,
    Recorded,
    Trial,
    TrialLimits,
    TrialStats,
    after_fetch,
    next_step,
    retry_delay,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LIMITS = TrialLimits(timedelta(minutes=10), requests=500, max_error_rate=0.05, max_latency_ms=50.0)


def observe(**changes) -> Observation:
    return Observation(**{"version": "2.0.0", "generation": 3, "now": NOW, "active_version": "1.0.0", **changes})


def on_trial(stats: TrialStats, started: datetime = NOW - timedelta(minutes=1)) -> Observation:
    return observe(active_version="2.0.0", trial=Trial("2.0.0", started, 7), stats=stats)


@pytest.mark.parametrize(
    ("observation", "phase", "action"),
    [
        (observe(active_version="2.0.0", good=True), Phase.HEALTHY, Action.NONE),
        (on_trial(TrialStats(100, 1)), Phase.TRIAL, Action.NONE),
        (on_trial(TrialStats(100, 1), started=NOW - timedelta(minutes=10)), Phase.HEALTHY, Action.MARK_GOOD),
        (on_trial(TrialStats(500, 2)), Phase.HEALTHY, Action.MARK_GOOD),  # enough requests within the limits
        (on_trial(TrialStats(100, 10)), Phase.ROLLED_BACK, Action.ROLL_BACK),  # 10 % errors
        (on_trial(TrialStats(10, 5)), Phase.TRIAL, Action.NONE),  # too few requests to judge a rate
        (on_trial(TrialStats(3, 0, crashes=1)), Phase.ROLLED_BACK, Action.ROLL_BACK),
        (on_trial(TrialStats(100, 0, latency_p95_ms=80.0)), Phase.ROLLED_BACK, Action.ROLL_BACK),
        # Another version on trial when this one is assigned: back to the good slot first, whatever the stats.
        (
            observe(version="3.0.0", active_version="2.0.0", trial=Trial("2.0.0", NOW, 7), stats=TrialStats(3, 3)),
            Phase.DOWNLOADING,
            Action.END_TRIAL,
        ),
        (
            observe(version="1.0.0", active_version="2.0.0", trial=Trial("2.0.0", NOW, 7)),
            Phase.DOWNLOADING,
            Action.END_TRIAL,
        ),
        (observe(profile_matches=False), Phase.FAILED, Action.NONE),
        (observe(failure=Recorded(Phase.FAILED, "UntrustedSigner", "no")), Phase.FAILED, Action.NONE),
        (observe(failure=Recorded(Phase.ROLLED_BACK, "TrialFailed", "no")), Phase.ROLLED_BACK, Action.NONE),
        (observe(retry_at=NOW + timedelta(seconds=30)), Phase.RETRYING, Action.NONE),
        (observe(retry_at=NOW - timedelta(seconds=1)), Phase.DOWNLOADING, Action.FETCH),
        (observe(staged=True, window_open=False), Phase.STAGED, Action.NONE),
        (observe(staged=True), Phase.TRIAL, Action.SWITCH),
        (observe(), Phase.DOWNLOADING, Action.FETCH),
        (observe(active_version=None), Phase.DOWNLOADING, Action.FETCH),
    ],
)
def test_next_step(observation: Observation, phase: Phase, action: Action):
    step = next_step(observation, LIMITS)
    assert (step.phase, step.action) == (phase, action), step


def test_a_rollback_says_why():
    step = next_step(on_trial(TrialStats(100, 10)), LIMITS)
    assert step.reason == "TrialFailed" and "error rate 10.0%" in step.message and "(10 of 100)" in step.message


@pytest.mark.parametrize(
    ("outcome", "window_open", "phase", "action"),
    [
        (Outcome.TRANSIENT, True, Phase.RETRYING, Action.NONE),
        (Outcome.REFUSED, True, Phase.FAILED, Action.NONE),
        (Outcome.UNHEALTHY, True, Phase.FAILED, Action.NONE),
        (Outcome.PASSED, False, Phase.STAGED, Action.NONE),
        (Outcome.PASSED, True, Phase.TRIAL, Action.SWITCH),
    ],
)
def test_after_fetch(outcome: Outcome, window_open: bool, phase: Phase, action: Action):
    step = after_fetch(outcome, "Reason", "message", window_open)
    assert (step.phase, step.action) == (phase, action)
    assert step.reason == ("HealthCheckFailed" if outcome is Outcome.UNHEALTHY else
                           "" if outcome is Outcome.PASSED else "Reason")  # fmt: skip


def test_retries_back_off_capped_and_jittered():
    delays = [retry_delay(n, 0.999) for n in range(1, 20)]
    assert delays == sorted(delays) and delays[-1] <= RETRY_CAP and delays[0] < timedelta(seconds=6)
    assert retry_delay(3, 0.0) < retry_delay(3, 0.999)  # two devices that failed together retry apart
    assert retry_delay(30, 0.0) >= RETRY_CAP / 2  # never below half the cap once capped
