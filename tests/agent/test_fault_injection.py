"""kill -9 the agent process at random points of download, verify, install and switch (seeded, 50 times):
after every kill the device holds a complete, verified active model, and a restarted agent converges."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from reconciler.agent.slots import ModelSlots
from reconciler.signing import Expectation, verify_artifact

from ..device_fleet import MODEL, PROFILE, Fleet

EDGECTL = Path(sys.executable).parent / "edgectl"
ITERATIONS = 50


def test_killed_at_random_points_the_device_always_serves_a_verified_model(fleet: Fleet, tmp_path: Path):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    root_file = tmp_path / "root.json"
    root_file.write_bytes(fleet.pinned_root)
    data_dir = tmp_path / "device"
    command = [
        str(EDGECTL), "agent", "--device", "factory-1", "--profile", PROFILE, "--state-dir",
        str(fleet.root / "controller-state"), "--data-dir", str(data_dir), "--repository", f"{fleet.server.url}/tuf",
        "--trusted-root", str(root_file), "--release-key", str(fleet.owner.public), "--once",
    ]  # fmt: skip
    policy = fleet.agent().config.policy
    rng = random.Random(20261203)
    kills = completed = 0
    for i in range(ITERATIONS):
        fleet.assign("factory-1", ("1.0.0", "2.0.0")[i % 2])
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(rng.uniform(0.05, 1.2))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        else:
            completed += 1
        process.wait(timeout=30)
        active = ModelSlots(data_dir, MODEL).active_dir()
        if active is not None:  # nothing before the first completed install; never a broken model after it
            assert verify_artifact(active, policy, Expectation(MODEL, None, PROFILE)).version in ("1.0.0", "2.0.0")
    assert kills >= ITERATIONS // 3 and completed > 0

    final = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    last = ("1.0.0", "2.0.0")[(ITERATIONS - 1) % 2]
    assert f"{MODEL}: Healthy {last}" in final.stdout
    active = ModelSlots(data_dir, MODEL).active_dir()
    assert verify_artifact(active, policy, Expectation(MODEL, last, PROFILE)).version == last
