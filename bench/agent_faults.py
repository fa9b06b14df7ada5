"""Randomized kills of the edge agent: how many left a device without a verified active model.

The agent converges one device back and forth between vibration-anomaly 1.0.0 and 2.0.0 over the real device
API (mutual TLS, TUF, signed releases); each round forks an agent that kills itself (SIGKILL) at a named fault
point chosen at random (``EDGE_AGENT_CRASH_AT``: mid-download, after-download, mid-verify, mid-copy, switch,
mid-state-write, after-switch, trial), or at no point. After every round the device's state must name a slot
that verifies (owner signature, files, profile) and a restarted agent converges. Prints the rounds per point,
the rounds that ended with an unverified or missing active model (goal: 0), and the rounds that converged,
against the rounds run.

    python bench/agent_faults.py            # 1,000 rounds
    python bench/agent_faults.py --quick    # 40 rounds
"""

from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from _check import parser, ratio, require

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.agent.faults import POINTS  # noqa: E402
from reconciler.agent.slots import ModelSlots  # noqa: E402
from reconciler.artifact.store import ArtifactStore  # noqa: E402
from reconciler.signing import Expectation, RefusedError, verify_artifact  # noqa: E402
from tests.device_fleet import MODEL, PROFILE, build_artifacts, close_fleet, open_fleet  # noqa: E402

STORE = Path.home() / ".cache" / "edge-reconciler" / "bench-store"
ROUND_LIMIT_SECONDS = 300


def one_round(fleet, data_dir: Path, point: str | None, trial: timedelta) -> str:
    """Fork an agent that converges once and kills itself at ``point``: "killed", "completed" or "hung"."""
    pid = os.fork()
    if pid == 0:  # the child: the imports are done, so a round costs the work, not an interpreter start
        code = 0
        try:
            if point:
                os.environ["EDGE_AGENT_CRASH_AT"] = point
            agent = fleet.agent(data_dir=data_dir, trial=trial)
            agent.cycle()
        except BaseException:
            code = 1
        os._exit(code)
    deadline = time.monotonic() + ROUND_LIMIT_SECONDS
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else "completed"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.01)


def main() -> None:
    args = parser(__doc__).parse_args()
    rounds = 40 if args.quick else 1000
    rng = random.Random(20261204)
    with tempfile.TemporaryDirectory(prefix="agent-faults-") as tmp:
        work = Path(tmp)
        built = build_artifacts(ArtifactStore(STORE), work / "artifacts")
        fleet = open_fleet(work / "fleet", built, ArtifactStore(STORE))
        try:
            fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
            policy = fleet.agent("factory-2").config.policy
            data_dir = work / "device"
            fleet.assign("factory-1", "1.0.0")
            require(one_round(fleet, data_dir, None, timedelta(0)) == "completed", "the first install did not run")
            outcomes: Counter[str] = Counter()
            points: Counter[str] = Counter()
            broken = converged = 0
            started = time.perf_counter()
            for index in range(rounds):
                version = ("2.0.0", "1.0.0")[index % 2]
                fleet.assign("factory-1", version)
                point = rng.choice([*POINTS, None])
                points[point or "none"] += 1
                outcome = one_round(fleet, data_dir, point, timedelta(hours=1) if point == "trial" else timedelta(0))
                outcomes[outcome] += 1
                active = ModelSlots(data_dir, MODEL).active_dir()
                try:
                    require(active is not None, "no active model")
                    verify_artifact(active, policy, Expectation(MODEL, None, PROFILE))
                except (RefusedError, SystemExit, OSError) as exc:
                    broken += 1
                    print(f"round {index}: killed at {point}: the active model does not verify: {exc}", flush=True)
                if one_round(fleet, data_dir, None, timedelta(0)) == "completed":  # restart: must converge
                    state = ModelSlots(data_dir, MODEL).state()
                    converged += state.active_version == version and state.good == version
            elapsed = time.perf_counter() - started
        finally:
            close_fleet(fleet)
    require(outcomes["killed"] > 0, "no round was killed: the fault points were never reached")
    print(f"rounds: {rounds}; killed {outcomes['killed']}, completed {outcomes['completed']}, hung {outcomes['hung']}")
    print("kill points: " + ", ".join(f"{name} {count}" for name, count in sorted(points.items())))
    print(f"unverified or missing active model after a kill: {broken} of {rounds} (goal 0)")
    print(f"converged after the restart: {converged} of {rounds} "
          f"({ratio(converged, rounds, 'converged per round'):.3f})")  # fmt: skip
    print(f"seconds per round (kill + restart): {elapsed / rounds:.2f}")
    require(broken == 0 and outcomes["hung"] == 0, f"{broken} broken and {outcomes['hung']} hung rounds")


if __name__ == "__main__":
    main()
