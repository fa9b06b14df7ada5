"""The step machine, table-driven with a fake clock: every phase and transition, and a restart (state written
to the status file and read back) in every phase gives the same decision."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from reconciler.api.rollout import RolloutSpec
from reconciler.api.status import RolloutPhase as Phase
from reconciler.api.status import RolloutState, Verdict
from reconciler.rollout.engine import LabFigures, LabLimits, LabObservation, Manual, Observation, decide, evaluate_gates

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def spec(**overrides) -> RolloutSpec:
    body = {
        "model": "digits-cnn", "version": "1.1.0", "groups": ["eu-stores"],
        "steps": [{"percent": 5}, {"percent": 25, "pause": {"duration": "30m"}}, {"percent": 50, "pause": {}},
                  {"percent": 100}],
        "maxUnavailable": 1,
    }  # fmt: skip
    body.update(overrides)
    return RolloutSpec.model_validate(yaml.safe_load(yaml.safe_dump(body)))


def state(phase: Phase, step: int = 0, **kw) -> RolloutState:
    return RolloutState(phase, step, "1.0.0", T0.isoformat(), **kw)


ALL_HEALTHY = Observation(targeted=10, healthy=10)
CASES = [
    # (name, spec, state, observation, now, manual, expected phase, expected step, decision kind)
    ("pending starts", spec(), RolloutState(), Observation(targeted=5, in_progress=5), T0, Manual(),
     Phase.PROGRESSING, 0, "Start"),
    ("pending with an empty first step goes on at once", spec(), RolloutState(), Observation(), T0, Manual(),
     Phase.PROGRESSING, 1, "Promote"),
    ("settled step without pause promotes", spec(), state(Phase.PROGRESSING, 0), ALL_HEALTHY, T0, Manual(),
     Phase.PROGRESSING, 1, "Promote"),
    ("devices still installing hold the step", spec(), state(Phase.PROGRESSING, 0),
     Observation(targeted=10, healthy=6, in_progress=4), T0, Manual(), Phase.PROGRESSING, 0, None),
    ("unavailable within maxUnavailable still settles", spec(), state(Phase.PROGRESSING, 0),
     Observation(targeted=10, healthy=9, unavailable=1), T0, Manual(), Phase.PROGRESSING, 1, "Promote"),
    ("unavailable beyond maxUnavailable holds", spec(), state(Phase.PROGRESSING, 0),
     Observation(targeted=10, healthy=8, unavailable=2), T0, Manual(), Phase.PROGRESSING, 0, None),
    ("a step with no device passes through", spec(), state(Phase.PROGRESSING, 0), Observation(), T0, Manual(),
     Phase.PROGRESSING, 1, "Promote"),
    ("failure rate over the threshold aborts", spec(), state(Phase.PROGRESSING, 0),
     Observation(targeted=10, healthy=9, failed=1), T0, Manual(), Phase.ABORTED, 0, "Abort"),
    ("too few reports is inconclusive and holds", spec(analysis={"minDevicesReporting": 3}),
     state(Phase.PROGRESSING, 0), Observation(targeted=10, healthy=2, in_progress=8), T0, Manual(),
     Phase.PROGRESSING, 0, None),
    ("a timed pause waits", spec(), state(Phase.PROGRESSING, 1, step_done=T0.isoformat()), ALL_HEALTHY,
     T0 + timedelta(minutes=10), Manual(), Phase.PROGRESSING, 1, None),
    ("a timed pause ends", spec(), state(Phase.PROGRESSING, 1, step_done=T0.isoformat()), ALL_HEALTHY,
     T0 + timedelta(minutes=31), Manual(), Phase.PROGRESSING, 2, "Promote"),
    ("an open pause waits for a person", spec(), state(Phase.PROGRESSING, 2), ALL_HEALTHY, T0, Manual(),
     Phase.PAUSED, 2, "Pause"),
    ("a promotion continues the open pause", spec(), state(Phase.PAUSED, 2, reason="WaitingForPromotion"),
     ALL_HEALTHY, T0, Manual(promotions=1), Phase.PROGRESSING, 3, "Promote"),
    ("the last step succeeds", spec(), state(Phase.PROGRESSING, 3), ALL_HEALTHY, T0, Manual(), Phase.SUCCEEDED, 3,
     "Succeed"),
    ("succeeded stays", spec(), state(Phase.SUCCEEDED, 3), ALL_HEALTHY, T0, Manual(), Phase.SUCCEEDED, 3, None),
    ("a person pauses", spec(), state(Phase.PROGRESSING, 0), ALL_HEALTHY, T0, Manual(paused=True), Phase.PAUSED, 0,
     "Pause"),
    ("a person resumes", spec(), state(Phase.PAUSED, 0, reason="PausedByPerson"), ALL_HEALTHY, T0, Manual(),
     Phase.PROGRESSING, 1, "Promote"),
    ("a person aborts", spec(), state(Phase.PROGRESSING, 1), ALL_HEALTHY, T0, Manual(abort="bad labels"),
     Phase.ABORTED, 1, "Abort"),
    ("aborted stays aborted", spec(), state(Phase.ABORTED, 1), ALL_HEALTHY, T0, Manual(), Phase.ABORTED, 1, None),
    ("a retry starts over", spec(), state(Phase.ABORTED, 1), ALL_HEALTHY, T0, Manual(retries=1),
     Phase.PROGRESSING, 0, "Retry"),
    ("a latency regression aborts", spec(analysis={"maxLatencyRegression": 20}), state(Phase.PROGRESSING, 0),
     Observation(targeted=10, healthy=10, latency_regression=35.0, telemetry_devices=10), T0, Manual(),
     Phase.ABORTED, 0, "Abort"),
    ("drift without telemetry is inconclusive", spec(analysis={"maxDriftPSI": 0.2}), state(Phase.PROGRESSING, 0),
     ALL_HEALTHY, T0, Manual(), Phase.PROGRESSING, 0, None),
    ("outputs past the drift gate abort", spec(analysis={"maxDriftKS": 0.1}), state(Phase.PROGRESSING, 0),
     Observation(targeted=10, healthy=10, drift_ks=0.31, telemetry_devices=10), T0, Manual(), Phase.ABORTED, 0,
     "Abort"),
    ("outputs within the drift gate promote", spec(analysis={"maxDriftKS": 0.1}), state(Phase.PROGRESSING, 0),
     Observation(targeted=10, healthy=10, drift_ks=0.0, telemetry_devices=10), T0, Manual(), Phase.PROGRESSING, 1,
     "Promote"),
    ("no sketched outputs hold the drift gate", spec(analysis={"maxDriftKS": 0.1}), state(Phase.PROGRESSING, 0),
     Observation(targeted=10, healthy=10, telemetry_devices=10), T0, Manual(), Phase.PROGRESSING, 0, None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "rollout", "before", "obs", "now", "manual", "phase", "step", "kind"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_transitions(name, rollout, before, obs, now, manual, phase, step, kind):
    outcome = decide(rollout, before, obs, now, manual)
    assert (outcome.state.phase, outcome.state.step) == (phase, step)
    assert (outcome.decision.kind if outcome.decision else None) == kind
    # Restart in this phase: the state goes through the status file and the next decision is the same.
    restored = RolloutState.from_json(yaml.safe_load(yaml.safe_dump(before.to_json())))
    again = decide(rollout, restored, obs, now, manual)
    assert again.state == outcome.state and again.decision == outcome.decision


def test_devices_waiting_for_their_window_do_not_hold_a_step():
    outcome = decide(spec(), state(Phase.PROGRESSING, 0), Observation(targeted=10, healthy=6, staged=4), T0, Manual())
    assert (outcome.state.step, outcome.decision.kind) == (1, "Promote")
    waiting = decide(spec(), state(Phase.PROGRESSING, 0), Observation(targeted=10, healthy=6, in_progress=4), T0,
                     Manual())  # fmt: skip
    assert waiting.state.step == 0 and waiting.decision is None


def test_a_success_threshold_lets_a_few_slow_devices_not_hold_a_step():
    steps = [{"percent": 10, "successThreshold": "90%"}, {"percent": 100}]
    slow = Observation(targeted=20, healthy=18, in_progress=2)
    assert decide(spec(steps=steps), state(Phase.PROGRESSING, 0), slow, T0, Manual()).state.step == 1
    short = Observation(targeted=20, healthy=17, in_progress=3)
    assert decide(spec(steps=steps), state(Phase.PROGRESSING, 0), short, T0, Manual()).state.step == 0
    # Gates still decide: failures over the threshold abort even when enough devices are healthy.
    bad = Observation(targeted=20, healthy=18, failed=2)
    assert decide(spec(steps=steps), state(Phase.PROGRESSING, 0), bad, T0, Manual()).state.phase is Phase.ABORTED


@pytest.mark.parametrize("value", ["0%", "101%", "95", 95, "ninety"])
def test_a_success_threshold_must_be_a_percentage(value):
    with pytest.raises(ValueError, match="percentage"):
        spec(steps=[{"percent": 100, "successThreshold": value}])


def test_without_automatic_rollback_a_failed_gate_holds_the_rollout_for_a_person():
    rollout = spec(rollback={"automatic": False})
    bad = Observation(targeted=10, healthy=7, failed=3)
    held = decide(rollout, state(Phase.PROGRESSING, 0), bad, T0, Manual())
    assert (held.state.phase, held.state.reason, held.decision.kind) == (Phase.PAUSED, "HeldAfterGateFailed", "Pause")
    assert "automatic rollback is off" in held.state.message and held.state.stable_version == "1.0.0"
    # Held whatever the gates say later, without a new decision each cycle.
    again = decide(rollout, held.state, ALL_HEALTHY, T0, Manual())
    assert again.state == held.state and again.decision is None
    # A person promotes past it, or aborts.
    promoted = decide(rollout, held.state, bad, T0, Manual(promotions=1))
    assert (promoted.state.phase, promoted.state.step, promoted.decision.kind) == (Phase.PROGRESSING, 1, "Promote")
    aborted = decide(rollout, held.state, bad, T0, Manual(abort="bad canary"))
    assert aborted.state.phase is Phase.ABORTED


def test_sequential_groups_walk_every_step_before_the_next_group_starts():
    rollout = spec(groups=["canary-lab", "eu-stores"], groupStrategy="Sequential", steps=[{"percent": 50},
                                                                                       {"percent": 100}])  # fmt: skip
    last = decide(rollout, state(Phase.PROGRESSING, 1), ALL_HEALTHY, T0, Manual())
    assert (last.state.group, last.state.step, last.decision.kind) == (1, 0, "Promote")
    assert last.decision.message == "group 2 of 2 (eu-stores): step 1 of 2 (50%)"
    restored = RolloutState.from_json(yaml.safe_load(yaml.safe_dump(last.state.to_json())))
    assert restored == last.state
    done = decide(rollout, replace(state(Phase.PROGRESSING, 1), group=1), ALL_HEALTHY, T0, Manual())
    assert (done.state.phase, done.state.group) == (Phase.SUCCEEDED, 1)
    together = decide(spec(steps=[{"percent": 50}, {"percent": 100}]), state(Phase.PROGRESSING, 1), ALL_HEALTHY, T0,
                      Manual())  # fmt: skip
    assert together.state.phase is Phase.SUCCEEDED


def test_an_abort_names_the_gate_its_value_and_threshold():
    outcome = decide(spec(), state(Phase.PROGRESSING, 0), Observation(targeted=4, healthy=1, failed=3), T0, Manual())
    assert outcome.decision.gate.name == "failureRate" and outcome.decision.devices == 4
    assert outcome.decision.message == "failureRate 0.75 > 0.05"
    assert outcome.state.stable_version == "1.0.0"


def test_a_failure_limit_tolerates_consecutive_failures_before_aborting():
    rollout = spec(analysis={"failureLimit": 2})
    current = state(Phase.PROGRESSING, 0)
    bad = Observation(targeted=10, healthy=8, failed=2)
    for expected in (1, 2):
        outcome = decide(rollout, current, bad, T0, Manual())
        assert outcome.state.phase is Phase.PROGRESSING and outcome.state.failures == expected
        current = outcome.state
    assert decide(rollout, current, bad, T0, Manual()).state.phase is Phase.ABORTED
    # A passing evaluation resets the count.
    assert decide(rollout, replace(current, failures=2), ALL_HEALTHY, T0, Manual()).state.failures == 0


def test_gate_defaults_and_opt_in_telemetry_gates():
    gates = evaluate_gates(spec(), ALL_HEALTHY)
    assert [(g.name, g.threshold, g.verdict) for g in gates] == [("failureRate", 0.05, Verdict.PASS)]
    gates = evaluate_gates(
        spec(analysis={"maxErrorRate": 0.01}), replace(ALL_HEALTHY, error_rate=0.002, telemetry_devices=3)
    )
    assert [g.verdict for g in gates] == [Verdict.PASS, Verdict.PASS]


# --- the lab stage -------------------------------------------------------------------------------------------

LIMITS = {"cortex": LabLimits(latency_p95_ms=20.0, memory_bytes=64e6, temperature_c=80.0)}


def lab(results=(), failures=(), devices=2, **kw) -> Observation:
    return Observation(lab=LabObservation(devices, tuple(results), tuple(failures), limits=LIMITS, **kw))


def figures(device: str, p95: float, temperature: float | None = None) -> LabFigures:
    return LabFigures(device, "cortex", p95 / 2, p95, 30e6, None, temperature)


def test_a_rollout_with_a_lab_starts_in_it_and_waits_for_every_lab_device():
    outcome = decide(spec(), RolloutState(), lab([figures("lab-1", 3.0)]), T0, Manual())
    assert outcome.state.lab == "Waiting" and outcome.state.reason == "WaitingForLab"
    assert outcome.decision.kind == "Start" and outcome.state.step == 0
    assert outcome.state.message.startswith("lab: 1 of 2 lab device(s) benchmarked 1.1.0")
    # A restart in the lab stage (written to the status file and read back) continues there.
    again = decide(spec(), RolloutState.from_json(outcome.state.to_json()), lab([figures("lab-1", 3.0)]), T0, Manual())
    assert again.state == outcome.state and again.decision is None


def test_the_lab_passing_starts_the_first_step_with_its_figures_and_a_fresh_deadline():
    waiting = state(Phase.PROGRESSING, lab="Waiting")
    later = T0 + timedelta(hours=2)
    outcome = decide(spec(), waiting, lab([figures("lab-1", 3.0), figures("lab-2", 4.5, 61.0)]), later, Manual())
    assert (outcome.state.lab, outcome.state.reason, outcome.state.step) == ("Passed", "LabPassed", 0)
    assert outcome.state.step_started == later.isoformat()
    assert outcome.decision.kind == "Promote"
    assert "labLatencyP95Ms[cortex] 4.5 <= 20" in outcome.decision.message
    assert "labTemperatureC[cortex] 61 <= 80" in outcome.decision.message
    assert outcome.decision.message.endswith("step 1 of 4 (5%)")
    # After it, the step machine judges the first step's devices as ever.
    after = decide(spec(), outcome.state, ALL_HEALTHY, later, Manual())
    assert (after.state.step, after.decision.kind) == (1, "Promote")


@pytest.mark.parametrize(
    ("observation", "gate"),
    [
        (lab([figures("lab-1", 3.0), figures("lab-2", 31.0)]), "labLatencyP95Ms[cortex] 31 > 20"),
        (lab([figures("lab-1", 3.0, 91.0), figures("lab-2", 3.0)]), "labTemperatureC[cortex] 91 > 80"),
        (lab([figures("lab-1", 3.0)], [("lab-2", "golden outputs differ by 3.2")]), "labBenchmarks 1 > 0"),
    ],
)
def test_a_lab_failure_stalls_until_a_person_promotes_past_it(observation: Observation, gate: str):
    waiting = state(Phase.PROGRESSING, lab="Waiting")
    stalled = decide(spec(), waiting, observation, T0, Manual())
    assert (stalled.state.phase, stalled.state.reason, stalled.state.lab) == (Phase.PAUSED, "LabFailed", "Failed")
    assert stalled.decision.kind == "Pause" and gate in stalled.decision.message
    still = decide(spec(), stalled.state, observation, T0 + timedelta(hours=1), Manual())
    assert still.decision is None and still.state == stalled.state and still.gates  # the figures stay in view
    promoted = decide(spec(), stalled.state, observation, T0, Manual(promotions=1))
    assert (promoted.state.phase, promoted.state.lab, promoted.decision.kind) == (Phase.PROGRESSING, "Overridden",
                                                                                  "Promote")  # fmt: skip
    aborted = decide(spec(), stalled.state, observation, T0, Manual(abort="bad board"))
    assert aborted.state.phase is Phase.ABORTED


def test_a_lab_gone_offline_leaves_the_builds_figures_and_says_so():
    waiting = state(Phase.PROGRESSING, lab="Waiting")
    outcome = decide(spec(), waiting, lab(unavailable=2, unmeasured=("jetson",)), T0, Manual())
    assert outcome.state.lab == "Passed"
    assert "every lab device offline: the build's figures stand" in outcome.decision.message
    assert "no lab device for jetson: build figures" in outcome.decision.message


def test_a_pause_in_the_lab_stage_keeps_the_fleet_waiting():
    waiting = state(Phase.PROGRESSING, lab="Waiting")
    paused = decide(spec(), waiting, lab([figures("lab-1", 3.0), figures("lab-2", 3.0)]), T0, Manual(paused=True))
    assert paused.state.phase is Phase.PAUSED and paused.state.lab == "Waiting"


def test_without_lab_devices_nothing_changes():
    outcome = decide(spec(), RolloutState(), Observation(targeted=5, in_progress=5, lab=LabObservation()), T0,
                     Manual())  # fmt: skip
    assert outcome.state.lab == "" and outcome.state.reason == "Waiting"


def test_a_retry_after_an_abort_goes_through_the_lab_again():
    aborted = state(Phase.ABORTED, lab="Failed", reason="AbortedByPerson")
    retried = decide(spec(), aborted, lab([figures("lab-1", 3.0)]), T0, Manual(retries=1))
    assert (retried.state.phase, retried.state.lab, retried.decision.kind) == (Phase.PROGRESSING, "Waiting", "Retry")


def test_a_stalled_lab_stays_stalled_through_a_pause_and_a_resume():
    failing = lab([figures("lab-1", 3.0), figures("lab-2", 31.0)])
    stalled = decide(spec(), state(Phase.PROGRESSING, lab="Waiting"), failing, T0, Manual()).state
    paused = decide(spec(), stalled, failing, T0, Manual(paused=True)).state
    resumed = decide(spec(), paused, failing, T0, Manual())
    assert (resumed.state.phase, resumed.state.reason) == (Phase.PAUSED, "LabFailed")
    assert "labLatencyP95Ms[cortex] 31 > 20" in resumed.state.message and resumed.decision is None


def test_the_lab_verdict_stays_in_the_status_through_the_steps():
    passed = decide(spec(), state(Phase.PROGRESSING, lab="Waiting"), lab([figures("a", 1.0, 50), figures("b", 1.0)]),
                    T0, Manual()).state  # fmt: skip
    walked = decide(spec(), passed, ALL_HEALTHY, T0, Manual()).state
    assert (walked.step, walked.lab) == (1, "Passed")
    last = decide(spec(), replace(walked, step=3), ALL_HEALTHY, T0, Manual()).state
    assert (last.phase, last.lab) == (Phase.SUCCEEDED, "Passed")


def test_a_lab_limit_no_device_can_measure_stalls_once_every_device_reported():
    no_sensor = lab([figures("lab-1", 3.0), figures("lab-2", 3.0)])  # no temperature sensor on either board
    outcome = decide(spec(), state(Phase.PROGRESSING, lab="Waiting"), no_sensor, T0, Manual())
    assert outcome.state.reason == "LabFailed"
    assert "labTemperatureC[cortex] n/a > 80 (no lab device of cortex measures it)" in outcome.state.message


def test_a_start_without_a_lab_device_for_its_profiles_says_the_builds_figures_stand():
    obs = Observation(targeted=5, in_progress=5, lab=LabObservation(unmeasured=("jetson",)))
    outcome = decide(spec(), RolloutState(), obs, T0, Manual())
    assert outcome.state.lab == "" and outcome.decision.kind == "Start"
    assert outcome.decision.message == "step 1 of 4 (5%); no lab device for jetson: the build's figures stand"
