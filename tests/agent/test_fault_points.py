"""The agent killed (SIGKILL) at each named fault point of an upgrade from 1.0.0 to 2.0.0: after the kill the
device's state names a complete, verified slot, and a restarted agent converges to 2.0.0. The agent kills itself
at exactly that point of its own work (``EDGE_AGENT_CRASH_AT``), so the test lands in the same place on any
machine however fast processes start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.agent.faults import POINTS
from reconciler.agent.slots import ModelSlots
from reconciler.signing import Expectation, verify_artifact

from ..device_fleet import MODEL, PROFILE, Fleet

EDGECTL = Path(sys.executable).parent / "edgectl"


def agent_command(fleet: Fleet, data_dir: Path, root_file: Path, trial: str) -> list[str]:
    token = fleet.identity.registry.create_token(timedelta(hours=1), datetime.now(UTC), device="factory-1")
    return [
        str(EDGECTL), "agent", "--device", "factory-1", "--profile", PROFILE, "--device-api", fleet.server.url,
        "--ca", str(fleet.root / "ca" / "ca.crt"), "--token", token, "--data-dir", str(data_dir),
        "--trusted-root", str(root_file), "--release-key", str(fleet.owner.public), "--trial-period", trial, "--once",
    ]  # fmt: skip


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_fault_point_leaves_a_verified_model_and_converges(fleet: Fleet, tmp_path: Path, point: str):
    # 2.0.0 revokes 1.0.0 (minimumCounter 2): the device may raise that floor only once 2.0.0 is marked good.
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2, minimum=2))
    root_file = tmp_path / "root.json"
    root_file.write_bytes(fleet.pinned_root)
    data_dir = tmp_path / "device"
    policy = fleet.agent("factory-2").config.policy
    fleet.assign("factory-1", "1.0.0")
    first = subprocess.run(agent_command(fleet, data_dir, root_file, "0s"), capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]

    fleet.assign("factory-1", "2.0.0")
    # A trial long enough to be entered, so that the "trial" point is reached (and judged only on the rerun).
    killed = subprocess.run(agent_command(fleet, data_dir, root_file, "1h"), capture_output=True, text=True,
                            timeout=300, env={**os.environ, "EDGE_AGENT_CRASH_AT": point})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached: {killed.stderr[-2000:]}"
    active = ModelSlots(data_dir, MODEL).active_dir()
    assert active is not None, f"killed at {point}, the device serves nothing"
    assert verify_artifact(active, policy, Expectation(MODEL, None, PROFILE)).version in ("1.0.0", "2.0.0")
    assert ModelSlots(data_dir, MODEL).state().minimum_counter == 0  # not marked good: 1.0.0 still allowed

    again = subprocess.run(agent_command(fleet, data_dir, root_file, "0s"), capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0 and f"{MODEL}: Healthy 2.0.0" in again.stdout, again.stdout + again.stderr[-2000:]
    state = ModelSlots(data_dir, MODEL).state()
    assert (state.active_version, state.good, state.minimum_counter, state.trial) == ("2.0.0", "2.0.0", 2, None)
    assert verify_artifact(ModelSlots(data_dir, MODEL).active_dir(), policy,
                           Expectation(MODEL, "2.0.0", PROFILE)).version == "2.0.0"  # fmt: skip
