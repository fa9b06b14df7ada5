"""Typed status: what the controller writes reads back equal, a broken file reads as an empty status (never an
exception), bytes are a function of the values only, and the status path is split where the Fleet says."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from reconciler.api import SourceFile
from reconciler.api.status import (
    ControllerStatus,
    DecisionKind,
    DecisionRecord,
    DeviceCounts,
    FleetStatus,
    GateStatus,
    GroupStatus,
    Reason,
    RolloutPhase,
    RolloutState,
    RolloutStatus,
    StatusPaths,
    Verdict,
    load_with_status,
)
from reconciler.gitops.files import read_fleet_dir

STATUS = RolloutStatus(
    rollout="r", model="m", version="2.0.0",
    state=RolloutState(RolloutPhase.PROGRESSING, 1, "1.0.0", "2026-01-01T00:00:00+00:00", None, Reason.PAUSING,
                       "pause until 04:00", 1, 2, 0),
    observed_revision="sha256:ab", observed_commit="0123",
    devices=DeviceCounts(40, 20, {"1.0.0": {"Healthy": 20}, "2.0.0": {"Failed": 1, "Healthy": 18,
                                                                      "Downloading(1.0.0)": 1}}),
    gates=(GateStatus("failureRate", 0.05, 0.02, Verdict.FAIL, "1 of 20 devices failed"),),
    history=(DecisionRecord("2026-01-01T00:00:00+00:00", DecisionKind.PROMOTE, "step 2 of 3 (50%)", 1),),
    problems=("d-1: no device profile matches its labels",),
)  # fmt: skip


def test_a_rollout_status_reads_back_equal_and_renders_the_same_bytes():
    status = STATUS.with_decision(DecisionRecord("2026-01-02T00:00:00+00:00", DecisionKind.PAUSE, "held", 1))
    data = status.to_yaml()
    again = RolloutStatus.from_yaml(data)
    assert again == status
    assert again.to_yaml() == data
    assert again.ready == (18, 40)
    assert again.devices.by_phase() == {"Healthy": 38, "Failed": 1, "Downloading": 1}
    assert again.phase is RolloutPhase.PROGRESSING and again.state.reason == Reason.PAUSING
    body = yaml.safe_load(data)
    # kubectl style: empty fields are left out, phase and step always shown.
    assert "stepDone" not in body and "retriesSeen" not in body and body["step"] == 2
    assert body["gates"][0] == {"name": "failureRate", "value": 0.05, "threshold": 0.02, "verdict": "Fail",
                                "message": "1 of 20 devices failed"}  # fmt: skip


def test_steps_are_written_counted_from_one_and_earlier_files_read_as_they_were_meant():
    body = yaml.safe_load(STATUS.with_decision(DecisionRecord("t", DecisionKind.PROMOTE, "m", 1)).to_yaml())
    assert (body["step"], body["history"][-1]["step"], body["lastDecision"]["step"]) == (2, 2, 2)
    assert "currentStep" not in body
    # Written by an earlier controller: ``currentStep`` and history steps counted from 0.
    earlier = {**body, "currentStep": 1, "history": [{**body["history"][-1], "step": 1}]}
    del earlier["step"], earlier["lastDecision"]
    read = RolloutStatus.from_json(earlier)
    assert (read.state.step, read.history[-1].step) == (1, 1)
    assert RolloutStatus.from_json(body).state.step == 1


def test_history_is_bounded_and_the_last_decision_is_the_newest():
    status = STATUS
    for step in range(15):
        status = status.with_decision(DecisionRecord(f"t{step}", DecisionKind.PROMOTE, "m", step))
    assert len(status.history) == 10 and status.history[-1].time == "t14" and status.last_decision.time == "t14"


@pytest.mark.parametrize(
    "data",
    [None, b"", b"{{{ not yaml", b"- a list\n", b"phase: [1, 2]\ncurrentStep: many\ndevices: 7\ngates: {}\n",
     b"phase: Exploded\nhistory: [1, {time: 3}]\n"],
)  # fmt: skip
def test_a_broken_status_file_reads_as_an_empty_status(data: bytes | None):
    status = RolloutStatus.from_yaml(data, "r")
    assert status.rollout == "r"
    assert status.phase is RolloutPhase.PENDING and status.state.step == 0
    assert status.ready[1] == 0 and status.gates == ()


def test_gate_details_written_under_their_older_key_still_show():
    gate = GateStatus.from_json({"name": "errorRate", "value": None, "threshold": 0.1, "verdict": "Inconclusive",
                                 "detail": "telemetry from 0 of 2 devices needed"})  # fmt: skip
    assert gate.message == "telemetry from 0 of 2 devices needed" and gate.sentence() == "errorRate n/a"


@given(
    st.dictionaries(st.text(min_size=1, max_size=8), st.dictionaries(st.text(min_size=1, max_size=8),
                    st.integers(0, 10_000), max_size=4), max_size=4),
    st.integers(0, 10_000),
)  # fmt: skip
def test_group_status_round_trips(assignments: dict, devices: int):
    status = GroupStatus("g", devices, assignments)
    assert GroupStatus.from_yaml(status.to_yaml()) == status
    assert sum(status.by_phase().values()) == sum(sum(c.values()) for c in assignments.values())


def test_controller_status_says_why_it_stalled():
    stalled = ControllerStatus("abc", "commit abc is not signed")
    body = yaml.safe_load(stalled.to_yaml())
    assert body["ready"] is False and body["reason"] == "Stalled" and "not signed" in body["message"]
    assert ControllerStatus.from_yaml(stalled.to_yaml()) == stalled
    assert ControllerStatus.from_yaml(ControllerStatus("abc").to_yaml()).ready


def test_the_status_path_is_split_where_the_fleet_says(fleet_example, tmp_path):
    files = read_fleet_dir(str(fleet_example))
    fleet = next(f for f in files if f.path == "fleet.yaml")
    moved = SourceFile("fleet.yaml", fleet.content.replace(b"statusPath: status", b"statusPath: ops/state"))
    written = [
        SourceFile("ops/state/rollouts/vibration-anomaly-2.yaml", STATUS.to_yaml()),
        SourceFile("ops/state/groups/us-factories.yaml", GroupStatus("us-factories", 3).to_yaml()),
        SourceFile("ops/state/controller.yaml", ControllerStatus("abc").to_yaml()),
    ]
    loaded = load_with_status([*(f for f in files if f.path != "fleet.yaml"), moved, *written])
    assert loaded.status.paths == StatusPaths("ops/state")
    assert loaded.status.rollout("vibration-anomaly-2") == STATUS
    assert loaded.status.group("us-factories").devices == 3 and loaded.status.controller.ready
    assert loaded.status.rollout("digits-cnn-1-1") == RolloutStatus("digits-cnn-1-1")  # no file yet: empty
    assert not any(f.path.startswith("ops/state/") for f in loaded.spec_files)
    # Status commits do not change the spec revision: only spec files are digested.
    again = load_with_status([*(f for f in files if f.path != "fleet.yaml"), moved])
    assert again.revision == loaded.revision
    assert FleetStatus.from_files(written, StatusPaths("status")).rollouts == {}
