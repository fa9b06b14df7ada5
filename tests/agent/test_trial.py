"""After the switch a version is on trial: it is marked good (and only then raises the revocation floor) when its
period ends within the limits, and the device switches back by itself when it breaks them. The health check runs
in a child process: a hang, a crash or too much memory fails it, and the agent carries on."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.agent.health import health_check_isolated
from reconciler.agent.phases import TrialStats
from reconciler.agent.slots import ModelSlots
from reconciler.signing import Expectation, verify_artifact

from ..device_fleet import MODEL, PROFILE, Fleet


def serving(fleet: Fleet, data_dir: Path) -> str | None:
    active = ModelSlots(data_dir, MODEL).active_dir()
    if active is None:
        return None
    return verify_artifact(active, fleet.agent().config.policy, Expectation(MODEL, None, PROFILE)).version


def test_a_trial_that_holds_is_marked_good_and_only_then_raises_the_floor(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2, minimum=2))
    now = {"t": datetime(2026, 12, 4, 12, 0, tzinfo=UTC)}
    stats = {"value": TrialStats(40, 1)}
    switched: list[str] = []
    agent = fleet.agent(trial=timedelta(minutes=10), on_switch=switched.append,
                        trial_stats=lambda model, version: stats["value"])  # fmt: skip
    agent.clock = lambda: now["t"]
    fleet.assign("factory-1", "1.0.0")
    assert agent.cycle()[MODEL].phase == "Trial"
    now["t"] += timedelta(minutes=10)
    assert agent.cycle()[MODEL].phase == "Healthy"

    fleet.assign("factory-1", "2.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version, status.previous_version) == ("Trial", "2.0.0", "1.0.0")
    assert "on trial for 600 s more" in status.message
    assert agent.trial_ends_in() == 600.0  # the agent wakes then, whatever its poll interval
    state = ModelSlots(agent.data_dir, MODEL).state()
    assert (state.good, state.minimum_counter, state.trial.version) == ("1.0.0", 0, "2.0.0")  # 1.0.0 still allowed
    assert fleet.backend.statuses()[("factory-1", MODEL)].phase == "Trial"  # not Healthy for the rollout yet

    now["t"] += timedelta(minutes=10)
    status = agent.cycle()[MODEL]
    assert (status.phase, status.message) == ("Healthy", "2.0.0 passed its trial")
    assert agent.trial_ends_in() is None
    state = ModelSlots(agent.data_dir, MODEL).state()
    assert (state.good, state.minimum_counter, state.trial) == ("2.0.0", 2, None)
    assert switched == [MODEL, MODEL]


def test_a_trial_over_the_error_rate_switches_back_by_itself(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2, minimum=2))
    stats = {"value": TrialStats(0, 0)}
    switched: list[str] = []
    agent = fleet.agent(on_switch=switched.append, trial_stats=lambda model, version: stats["value"])
    fleet.assign("factory-1", "1.0.0")
    assert agent.cycle()[MODEL].phase == "Healthy"  # no trial (0 s): good at once
    agent.config = replace(agent.config, trial_period=timedelta(hours=1))
    fleet.assign("factory-1", "2.0.0", max_error_rate=0.05)
    assert agent.cycle()[MODEL].phase == "Trial"
    assert serving(fleet, agent.data_dir) == "2.0.0"

    stats["value"] = TrialStats(200, 30)  # 15 % errors since the switch
    status = agent.cycle()[MODEL]
    assert (status.phase, status.reason, status.installed_version) == ("RolledBack", "TrialFailed", "1.0.0")
    assert "error rate 15.0%" in status.message
    assert serving(fleet, agent.data_dir) == "1.0.0" and switched[-1] == MODEL
    state = ModelSlots(agent.data_dir, MODEL).state()
    assert (state.good, state.minimum_counter, state.trial) == ("1.0.0", 0, None)  # the floor never rose
    before = fleet.server.bytes_served
    assert agent.cycle()[MODEL].phase == "RolledBack" and fleet.server.bytes_served == before  # no loop


@pytest.fixture
def installed(fleet: Fleet) -> tuple[Path, dict]:
    fleet.publish(fleet.release("1.0.0", 1))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    assert agent.cycle()[MODEL].phase == "Healthy"
    slot = ModelSlots(agent.data_dir, MODEL).active_dir()
    return slot, json.loads((slot / "manifest.json").read_text())


def test_the_health_check_passes_in_its_child_process(installed: tuple[Path, dict]):
    report = health_check_isolated(*installed)
    assert report.passed and report.reason == "golden outputs reproduced" and report.latency_p95_ms > 0


def test_a_hung_health_check_is_killed_at_its_time_limit(installed: tuple[Path, dict]):
    report = health_check_isolated(*installed, wall_seconds=0.001)  # no runtime loads a model that fast
    assert not report.passed and report.reason == "the model hung: no answer within 0.001 s"


def test_a_crashed_runtime_fails_the_check_and_not_the_agent(installed: tuple[Path, dict], monkeypatch):
    monkeypatch.setenv("EDGE_AGENT_CRASH_AT", "health")  # the child process dies by SIGKILL, as a segfault would
    report = health_check_isolated(*installed)
    assert not report.passed and report.reason == "the runtime crashed (signal SIGKILL)"


def test_a_model_over_the_memory_limit_fails_the_check(installed: tuple[Path, dict]):
    report = health_check_isolated(*installed, max_memory_bytes=1)
    assert not report.passed and "memory" in report.reason and "more than 1" in report.reason


def test_a_spinning_health_check_is_stopped_by_its_cpu_limit(installed: tuple[Path, dict], monkeypatch):
    # A CPU limit of one second, and a child that spins for it (the crash point's stand-in for a runtime that
    # loops): the wall clock is never what decides.
    monkeypatch.setenv("EDGE_AGENT_SPIN_AT", "health")
    report = health_check_isolated(*installed, timeout_seconds=1, wall_seconds=600)
    assert not report.passed and report.reason == "the model hung: it spun for 1 s of CPU without an answer"


def test_a_new_assignment_during_a_trial_keeps_the_good_version_as_the_fallback(fleet: Fleet):
    for version in ("3.0.0",):
        fleet.variant(version)
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2), fleet.release("3.0.0", 3))
    crashes: dict[str, int] = {}
    switched: list[str] = []
    agent = fleet.agent(trial=timedelta(hours=1), on_switch=switched.append,
                        trial_stats=lambda model, version: TrialStats(crashes=crashes.get(version, 0)))  # fmt: skip
    agent.config = replace(agent.config, trial_period=timedelta(0))
    fleet.assign("factory-1", "1.0.0")
    assert agent.cycle()[MODEL].phase == "Healthy"
    agent.config = replace(agent.config, trial_period=timedelta(hours=1))
    fleet.assign("factory-1", "2.0.0")
    assert agent.cycle()[MODEL].phase == "Trial"

    # The rollout moves on while 2.0.0 is on trial: 3.0.0 goes over the unproven 2.0.0, never over 1.0.0.
    fleet.assign("factory-1", "3.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version, status.previous_version) == ("Trial", "3.0.0", "1.0.0")
    state = ModelSlots(agent.data_dir, MODEL).state()
    assert (state.good, state.trial.version, state.failed) == ("1.0.0", "3.0.0", None)  # superseded is no failure
    crashes["3.0.0"] = 1
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version) == ("RolledBack", "1.0.0")
    assert serving(fleet, agent.data_dir) == "1.0.0"


def test_a_rollback_by_the_controller_during_a_trial_is_instant(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    agent = fleet.agent(trial=timedelta(0))
    fleet.assign("factory-1", "1.0.0")
    assert agent.cycle()[MODEL].phase == "Healthy"
    agent.config = replace(agent.config, trial_period=timedelta(hours=1))
    fleet.assign("factory-1", "2.0.0")
    assert agent.cycle()[MODEL].phase == "Trial"
    before = fleet.server.bytes_sent("artifact")
    fleet.assign("factory-1", "1.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version) == ("Healthy", "1.0.0")
    assert fleet.server.bytes_sent("artifact") == before
    assert ModelSlots(agent.data_dir, MODEL).state().trial is None


def test_the_agent_wakes_at_the_end_of_a_trial_not_at_its_next_poll(fleet: Fleet):
    """A rollout step waits for its devices' Healthy reports: an agent polling hourly still reports Healthy once the
    trial's period is over. (60 s is no timing: without the wake-up the next cycle would come after an hour.)"""
    fleet.publish(fleet.release("1.0.0", 1))
    agent = fleet.agent(trial=timedelta(seconds=2))
    fleet.assign("factory-1", "1.0.0")
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, args=(stop, 3600.0), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = fleet.backend.statuses().get(("factory-1", MODEL))
            if status is not None and status.phase == "Healthy":
                break
            time.sleep(0.2)
        assert status is not None and (status.phase, status.installed_version) == ("Healthy", "1.0.0"), status
    finally:
        stop.set()
        worker.join(30)
