"""Kept versions: the last good versions stay on the device, so going back to one costs no download; the count
and the disk budget bound them, and a kept file is used only when it is exactly the signed one."""

from __future__ import annotations

from dataclasses import replace

from reconciler.agent.agent import Agent
from reconciler.agent.slots import KeepPolicy, ModelSlots

from ..device_fleet import MODEL, Fleet
from .test_agent import serving


def publish(fleet: Fleet, *versions: str) -> None:
    for version in versions:
        if version not in fleet.artifacts:
            fleet.variant(version)
    fleet.publish(*(fleet.release(version, 1) for version in versions))


def install(fleet: Fleet, agent: Agent, *versions: str) -> None:
    for version in versions:
        fleet.assign("factory-1", version)
        status = agent.cycle()[MODEL]
        assert (status.phase, status.installed_version) == ("Healthy", version), status.message


def kept(agent: Agent) -> list[str]:
    return list(ModelSlots(agent.data_dir, MODEL).kept_versions())


def with_policy(agent: Agent, policy: KeepPolicy) -> Agent:
    agent.config = replace(agent.config, keep=policy)
    return agent


def test_going_back_to_a_kept_version_downloads_nothing(fleet: Fleet):
    publish(fleet, "1.0.0", "2.0.0", "3.0.0")
    agent = fleet.agent()
    install(fleet, agent, "1.0.0", "2.0.0", "3.0.0")
    # 3.0.0 active, 2.0.0 in the other slot, 1.0.0 kept: three good versions on the device.
    assert kept(agent) == ["1.0.0"]
    before = fleet.server.bytes_sent("artifact")
    fleet.assign("factory-1", "1.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version) == ("Healthy", "1.0.0")
    assert status.extra["transfer"] == "local"
    assert fleet.server.bytes_sent("artifact") == before
    assert serving(fleet, agent.data_dir) == "1.0.0"
    # 1.0.0 is in a slot again; 2.0.0 moved out of the slot it overwrote into kept/.
    assert kept(agent) == ["2.0.0"]


def test_the_count_bounds_the_kept_versions(fleet: Fleet):
    publish(fleet, "1.0.0", "2.0.0", "3.0.0", "4.0.0")
    agent = with_policy(fleet.agent(), KeepPolicy(versions=3))
    install(fleet, agent, "1.0.0", "2.0.0", "3.0.0", "4.0.0")
    assert kept(agent) == ["2.0.0"]  # 4.0.0 active, 3.0.0 in the other slot, 2.0.0: three; 1.0.0 dropped
    before = fleet.server.bytes_sent("artifact")
    fleet.assign("factory-1", "1.0.0")
    status = agent.cycle()[MODEL]
    assert status.installed_version == "1.0.0" and status.extra["transfer"] != "local"
    assert fleet.server.bytes_sent("artifact") > before


def test_a_zero_budget_keeps_only_the_two_slots(fleet: Fleet):
    publish(fleet, "1.0.0", "2.0.0", "3.0.0")
    agent = with_policy(fleet.agent(), KeepPolicy(versions=5, budget_bytes=0))
    install(fleet, agent, "1.0.0", "2.0.0", "3.0.0")
    assert kept(agent) == []
    # The other slot still answers a rollback by the controller without a download.
    before = fleet.server.bytes_sent("artifact")
    install(fleet, agent, "2.0.0")
    assert fleet.server.bytes_sent("artifact") == before


def test_a_damaged_kept_file_is_downloaded_again(fleet: Fleet):
    publish(fleet, "1.0.0", "2.0.0", "3.0.0")
    agent = fleet.agent()
    install(fleet, agent, "1.0.0", "2.0.0", "3.0.0")
    model_file = ModelSlots(agent.data_dir, MODEL).kept_versions()["1.0.0"] / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, other bytes: only the sha256 can tell
    model_file.write_bytes(bytes(data))
    before = fleet.server.bytes_sent("artifact")
    fleet.assign("factory-1", "1.0.0")
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version) == ("Healthy", "1.0.0")
    assert fleet.server.bytes_sent("artifact") > before
    assert serving(fleet, agent.data_dir) == "1.0.0"


def test_a_version_that_failed_its_trial_is_not_kept(fleet: Fleet):
    from reconciler.agent.phases import TrialStats

    crashes = {"2.0.0": 1}
    publish(fleet, "1.0.0", "2.0.0", "3.0.0")
    agent = fleet.agent(trial_stats=lambda model, version: TrialStats(crashes=crashes.get(version, 0)))
    install(fleet, agent, "1.0.0")
    fleet.assign("factory-1", "2.0.0")
    assert agent.cycle()[MODEL].phase == "RolledBack"
    install(fleet, agent, "3.0.0")  # overwrites the slot that held the rolled-back 2.0.0
    assert kept(agent) == []
    assert ModelSlots(agent.data_dir, MODEL).state().history == ("1.0.0", "3.0.0")
