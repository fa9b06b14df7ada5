"""kill -9 the agent process at random points of download, verify, install and switch (seeded, 50 times):
after every kill the device holds a complete, verified active model, and a restarted agent converges.

The kill point is chosen by what the agent has reported to the device API (it reports each phase as it enters
it), never by the wall clock: on a slow machine or a fast one the kills land in the same phases."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.agent.slots import ModelSlots
from reconciler.signing import Expectation, verify_artifact

from ..device_fleet import MODEL, PROFILE, Fleet

EDGECTL = Path(sys.executable).parent / "edgectl"
ITERATIONS = 50
KILL_POINTS = ("start", "Downloading", "Verifying", "Installing", "Testing", "completion")
"""Where a kill lands: right after the process starts, as soon as the agent reports entering a phase of this
iteration's version, or not at all (the run completes)."""


def reached(fleet: Fleet, process: subprocess.Popen, version: str, point: str) -> bool:
    """Wait until the agent reports ``point`` for ``version`` (True), or exits first (False)."""
    if point == "start":
        return process.poll() is None
    while process.poll() is None:
        status = fleet.backend.statuses().get(("factory-1", MODEL))
        if status is not None and status.target_version == version and status.phase == point:
            return True
        time.sleep(0.002)
    return False


def test_killed_at_random_points_the_device_always_serves_a_verified_model(fleet: Fleet, tmp_path: Path):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    root_file = tmp_path / "root.json"
    root_file.write_bytes(fleet.pinned_root)
    data_dir = tmp_path / "device"
    token = fleet.identity.registry.create_token(timedelta(hours=1), datetime.now(UTC), device="factory-1")
    command = [
        str(EDGECTL), "agent", "--device", "factory-1", "--profile", PROFILE, "--device-api", fleet.server.url,
        "--ca", str(fleet.root / "ca" / "ca.crt"), "--token", token, "--data-dir", str(data_dir),
        "--trusted-root", str(root_file), "--release-key", str(fleet.owner.public), "--trial-period", "0s", "--once",
    ]  # fmt: skip
    policy = fleet.agent("factory-2").config.policy
    rng = random.Random(20261203)
    kills: Counter[str] = Counter()
    completed = 0
    for i in range(ITERATIONS):
        version = ("1.0.0", "2.0.0")[i % 2]
        fleet.assign("factory-1", version)
        point = rng.choice(KILL_POINTS)
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        if point != "completion" and reached(fleet, process, version, point):
            os.killpg(process.pid, signal.SIGKILL)
            kills[point] += 1
        process.wait(timeout=120)
        completed += process.returncode == 0
        active = ModelSlots(data_dir, MODEL).active_dir()
        if active is not None:  # nothing before the first completed install; never a broken model after it
            assert verify_artifact(active, policy, Expectation(MODEL, None, PROFILE)).version in ("1.0.0", "2.0.0")
    assert kills["start"] > 0 and sum(kills.values()) >= ITERATIONS // 3 and completed > 0, (kills, completed)

    final = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    last = ("1.0.0", "2.0.0")[(ITERATIONS - 1) % 2]
    assert f"{MODEL}: Healthy {last}" in final.stdout
    active = ModelSlots(data_dir, MODEL).active_dir()
    assert verify_artifact(active, policy, Expectation(MODEL, last, PROFILE)).version == last
