"""The model server runs in its own process: a runtime that crashes takes the server down, never the agent; the
agent starts it again, and a crash of a version on trial rolls that version back."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import urllib3

from reconciler.agent.phases import TrialStats
from reconciler.agent.slots import ModelSlots
from reconciler.agent.supervisor import ServingProcess

from ..device_fleet import MODEL, Fleet, free_port
from ..waiting import eventually


def predict(url: str, rows: list) -> urllib3.BaseHTTPResponse | None:
    try:
        return urllib3.request("POST", f"{url}/v1/models/{MODEL}:predict", json={"instances": rows}, timeout=30,
                               retries=False)  # fmt: skip
    except urllib3.exceptions.HTTPError:
        return None


def golden(data_dir: Path) -> list:
    active = ModelSlots(data_dir, MODEL).active_dir()
    return json.loads((active / "manifest.json").read_text())["golden"]["inputs"][:2]


@pytest.fixture
def installed(fleet: Fleet) -> Path:
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    assert agent.cycle()[MODEL].phase == "Healthy"
    return agent.data_dir


def test_a_server_that_dies_is_started_again(installed: Path):
    server = ServingProcess(installed, ("127.0.0.1", free_port()), 1, "factory-1", 1 << 20).start()
    try:
        rows = golden(installed)
        first = eventually(lambda: predict(server.url, rows), "the server answers")
        assert first.status == 200 and first.json()["modelVersion"] == "1.0.0"
        pid = server.pid
        os.kill(pid, signal.SIGKILL)  # a runtime that segfaults
        again = eventually(lambda: server.pid != pid and predict(server.url, rows), "the server answers again")
        assert again.status == 200 and server.restarts == 1 and server.crashes(MODEL, "1.0.0") == 1
        eventually(lambda: server.totals(MODEL, "1.0.0")[0] >= 1, "the new server hands its counts over")
    finally:
        server.close()


def test_a_switch_while_the_server_is_starting_is_loaded_and_no_crash(fleet: Fleet, installed: Path):
    agent = fleet.agent(data_dir=installed)
    fleet.assign("factory-1", "2.0.0")
    assert agent.cycle()[MODEL].installed_version == "2.0.0"
    slots = ModelSlots(installed, MODEL)
    server = ServingProcess(installed, ("127.0.0.1", free_port()), 1, "factory-1", 1 << 20).start()
    try:
        slots.activate(slots.slot(slots.state().inactive))  # back to 1.0.0 while the child is still importing
        server.reload(MODEL)  # the agent's switch hook, long before the child can handle SIGHUP
        eventually(lambda: _loaded(server.url) == "1.0.0", "1.0.0 loaded")
        assert server.restarts == 0 and server.crashes(MODEL, "1.0.0") == 0 and server.crashes(MODEL, "2.0.0") == 0
    finally:
        server.close()


def test_a_version_that_crashes_the_server_on_trial_is_rolled_back(fleet: Fleet, installed: Path):
    env = {**os.environ, "EDGE_AGENT_CRASH_AT": "serve"}  # the server's runtime dies at its next inference
    server = ServingProcess(installed, ("127.0.0.1", free_port()), 1, "factory-1", 1 << 20, env=env).start()
    try:
        agent = fleet.agent(on_switch=server.reload, trial_stats=lambda model, version: TrialStats(
            *server.totals(model, version), crashes=server.crashes(model, version)))  # fmt: skip
        agent.config = replace(agent.config, trial_period=timedelta(hours=1))
        fleet.assign("factory-1", "2.0.0")
        assert agent.cycle()[MODEL].phase == "Trial"
        rows = golden(installed)
        eventually(lambda: server.pid is not None and _loaded(server.url) == "2.0.0", "2.0.0 loaded")
        assert predict(server.url, rows) is None  # the process died answering
        eventually(lambda: server.crashes(MODEL, "2.0.0") == 1, "the crash counted")
        status = agent.cycle()[MODEL]
        assert (status.phase, status.reason, status.installed_version) == ("RolledBack", "TrialFailed", "1.0.0")
        assert "crashed 1 time(s)" in status.message
    finally:
        server.close()


def _loaded(url: str) -> str | None:
    try:
        response = urllib3.request("GET", f"{url}/v1/models/{MODEL}", timeout=5, retries=False)
    except urllib3.exceptions.HTTPError:
        return None
    return response.json().get("version") if response.status == 200 else None
