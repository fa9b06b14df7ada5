"""Delta updates: the agent rebuilds the new model file from the installed one and a zstd delta, verifies it
like any download, and falls back to the full file when the delta is bad (unless told not to)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reconciler.agent.agent import Agent

from ..device_fleet import MODEL, Fleet
from .test_agent import serving


def upgrade(fleet: Fleet, agent: Agent):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    fleet.assign("factory-1", "1.0.0")
    first = agent.cycle()[MODEL]
    assert first.extra["transfer"] == "full"
    agent.bytes_transferred = 0
    fleet.assign("factory-1", "2.0.0")
    return agent.cycle()[MODEL]


def test_an_upgrade_downloads_a_delta_not_the_whole_model(fleet: Fleet):
    agent = fleet.agent()
    status = upgrade(fleet, agent)
    assert (status.phase, status.installed_version) == ("Healthy", "2.0.0")
    assert status.extra["transfer"].startswith("delta (")
    full = (fleet.artifacts["2.0.0"] / "model.onnx").stat().st_size
    delta_bytes = int(status.extra["transfer"].split("(")[1].split(" ")[0])
    assert 0 < delta_bytes < full
    assert serving(fleet, agent.data_dir) == "2.0.0"


def test_a_corrupt_delta_falls_back_to_the_full_file(fleet: Fleet, tmp_path: Path):
    garbage = tmp_path / "garbage.zst"
    garbage.write_bytes(b"\x28\xb5\x2f\xfd" + b"not a delta" * 10)
    fleet.server.deltas = lambda base, target: garbage
    agent = fleet.agent()
    status = upgrade(fleet, agent)
    assert (status.phase, status.installed_version) == ("Healthy", "2.0.0")
    assert status.extra["transfer"].startswith("delta failed") and status.extra["transfer"].endswith("full download")
    assert serving(fleet, agent.data_dir) == "2.0.0"


def test_without_full_fallback_a_bad_delta_is_reported_and_nothing_changes(fleet: Fleet, tmp_path: Path):
    garbage = tmp_path / "garbage.zst"
    garbage.write_bytes(b"junk")
    fleet.server.deltas = lambda base, target: garbage
    agent = fleet.agent()
    agent.config = replace(agent.config, full_fallback=False)
    status = upgrade(fleet, agent)
    assert (status.phase, status.reason) == ("Retrying", "DownloadFailed")
    assert "full downloads are disabled" in status.message
    assert serving(fleet, agent.data_dir) == "1.0.0"
