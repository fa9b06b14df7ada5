"""Temporary log verbosity end to end: ``edgectl debug`` commits a DebugSession, the controller hands its level to
the devices it names, their agents log at that level and upload their recent lines through the device API, and
each agent goes back to its own level when the time is up, by its own clock. A device the session does not name
cannot upload its lines."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.agent.verbosity import upload_logs
from reconciler.cli.main import main
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.deviceapi.client import DeviceRefusedError

from ..device_fleet import Fleet
from ..git_server import GitServer, git
from ..rollout.test_end_to_end import LABELS, fleet_repo


def test_a_debug_session_raises_the_level_uploads_lines_and_reverts_on_time(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    url = fleet_repo(git_server, tmp_path)
    fleet.backend.register_device("factory-00", {**LABELS, "acme.example/line": "7"})
    fleet.backend.register_device("factory-01", LABELS)
    config = ControllerConfig(url, fleet.root / "controller-state", store=build_store.root)
    controller = Controller(config, fleet.backend)
    controller.cycle()

    work = tmp_path / "work"
    git("clone", "-q", url, str(work), cwd=tmp_path)
    asked = CliRunner().invoke(main, ["debug", "-l", "acme.example/line=7", "--for", "30m", "--repo", str(work),
                                      "--reason", "line 7 drops frames"])  # fmt: skip
    assert asked.exit_code == 0, asked.output
    [session_file] = (work / "debug").glob("*.yaml")
    session = yaml.safe_load(session_file.read_text())
    until = datetime.fromisoformat(session["spec"]["until"].replace("Z", "+00:00"))
    assert timedelta(minutes=29) < until - datetime.now(UTC) <= timedelta(minutes=30)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    assert git("log", "-1", "--format=%s", cwd=work).startswith("debug: debug logs from acme.example/line=7")
    controller.cycle()
    assignments = fleet.backend.assignments()
    assert assignments[("factory-00", "vibration-anomaly")].debug is not None
    assert assignments[("factory-01", "vibration-anomaly")].debug is None

    clock = [datetime.now(UTC)]
    agent = fleet.agent("factory-00", clock=lambda: clock[0])
    logger = logging.getLogger("edge_reconciler")
    own = logger.level
    try:
        agent.cycle()
        assert logger.level == logging.DEBUG and agent.verbosity.active is not None
        logging.getLogger("edge_reconciler.agent").debug("frame dropped", extra={"line": 7})
        sent = upload_logs(agent.verbosity, fleet.client("factory-00"))
        assert sent >= 2  # the raise itself and the debug line
        shown = CliRunner().invoke(main, ["logs", "factory-00", "--state-dir", str(fleet.root)])
        assert shown.exit_code == 0, shown.output
        assert "DEBUG    edge_reconciler.agent: frame dropped {'line': 7}" in shown.output
        assert "log level raised from the fleet repo" in shown.output

        # The time is up on the device's own clock: its level comes back, with the assignment unchanged.
        clock[0] = until + timedelta(seconds=1)
        agent.cycle()
        assert logger.level == own and agent.verbosity.active is None
        logging.getLogger("edge_reconciler.agent").debug("not kept")
        assert upload_logs(agent.verbosity, fleet.client("factory-00")) == 0
    finally:
        agent.verbosity.apply(None)

    # A device no session names keeps its lines: the device API refuses them.
    stranger = fleet.client("factory-01")
    stranger.ensure_identity()
    with pytest.raises(DeviceRefusedError) as refused:
        stranger.upload_logs([{"time": "2026-12-05T00:00:00Z", "level": "info",
                                                 "logger": "edge_reconciler.agent", "message": "hello"}])  # fmt: skip
    assert refused.value.status == 403 and refused.value.reason == "not-debugging"
