"""The controller's cycle at fleet scale: time and memory with a month of telemetry in the store.

A fleet repo (fleet-example, in a local Git repository) and the local backend with 10,000 factory devices that
all report Healthy; each device uploaded a summary every hour for 30 days, into the telemetry store through
``TelemetryStore.record`` as the device API files them: the last 48 hours one summary an hour, each earlier day
as one summary of its 24 hours (what the hours fold into), then compacted. Prints the steady-state cycle time
(fetch, load, plan, read each rollout's gate window and observe, render status; nothing to apply) and the
process's resident memory, against the same fleet with no telemetry stored (the baseline: what the telemetry
costs a cycle); the rate of store writes, the time a compaction takes, what a gate window of an hour, a week and
the whole month reads, and the store's size.

    python bench/controller_cycle.py            # 10,000 devices, 30 days
    python bench/controller_cycle.py --quick    # 300 devices, 30 days
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _check import parser, ratio, require

from reconciler.cluster import AssignmentStatus, LocalBackend
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.telemetry.store import FOLD_PER_CALL, HOURLY_FOR, TelemetryStore

ROOT = Path(__file__).resolve().parents[1]
FACTORY = {
    "acme.example/site-type": "factory",
    "acme.example/network": "ethernet",
    "topology.kubernetes.io/region": "us-east",
    "edgereconciler.io/hardware": "cortex-a",
    "kubernetes.io/arch": "arm64",
}
DAYS = 30
HOURS = int(HOURLY_FOR.total_seconds() // 3600)
CYCLES = 5
MODEL = "vibration-anomaly"


def fleet_repo(work: Path) -> Path:
    """fleet-example committed once, served bare (the controller pushes its status commits there)."""
    repo = work / "fleet-work"
    shutil.copytree(ROOT / "fleet-example", repo, ignore=shutil.ignore_patterns("*.keras", "*.npz"))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=bench", "-c", "user.email=bench@example", "commit", "-qm", "fleet"]):  # fmt: skip
        subprocess.run(["git", *args], cwd=repo, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(work / "fleet.git")], check=True)
    return work / "fleet.git"


def summary(hour: int, version: str, hours: int = 1) -> dict:
    """``hours`` hours of one device's requests at ``version`` (one upload an hour; more: a day folded)."""
    requests = (2000 + hour % 24) * hours
    return {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "TelemetrySummary", "model": MODEL,
            "version": version, "requests": requests, "errors": hour % 3,
            "latencyMs": {"buckets": [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, "+Inf"],
                          "counts": [requests - 60, 30, 15, 10, 3, 2, 0], "p50": 1.0, "p95": 2.0, "p99": 5.0},
            "predictions": [requests - 300, 200, 100], "summaries": hours,
            "inputs": {"mean": {"edges": [-1.0, 0.0, 1.0], "counts": [10, requests - 20, 5, 5]}}}  # fmt: skip


@dataclass
class Filled:
    controller: Controller
    writes_per_second: float = 0.0
    compaction: float = 0.0


def fleet(work: Path, repo: Path, name: str, devices: int, days: int) -> Filled:
    state = work / name
    backend = LocalBackend(state)
    for i in range(devices):
        backend.register_device(f"factory-{i:05d}", FACTORY)
    controller = Controller(ControllerConfig(str(repo), state, interval=3600), backend)
    first = controller.cycle()
    require(first.stalled is None and first.applied == devices,
            f"the first cycle applied {first.applied} of {devices} ({first.stalled or 'not stalled'})")  # fmt: skip
    filled = Filled(controller)
    if not days:
        return filled
    now = datetime.now(UTC)
    writes, start = 0, time.perf_counter()
    for (device, model), spec in backend.assignments().items():
        backend.report_status(device, model, AssignmentStatus("Healthy", installed_version=spec.version,
                                                              target_version=spec.version))  # fmt: skip
        for day in range(HOURS // 24, days):  # the days older than the hourly span, each folded already
            ended = now - timedelta(days=day)
            body = {**summary(day, spec.version, hours=24), "device": device, "ended": ended.isoformat()}
            require(controller.telemetry.record(device, body, now) is True, "not stored")
        for hour in range(HOURS):
            ended = now - timedelta(hours=hour)
            body = {**summary(hour, spec.version), "device": device, "ended": ended.isoformat()}
            require(controller.telemetry.record(device, body, now) is True, "not stored")
            writes += 1
        writes += days - HOURS // 24
    filled.writes_per_second = writes / (time.perf_counter() - start)
    start = time.perf_counter()
    while controller.telemetry.compact(now).more:  # a month to catch up: a bounded share per call
        pass
    filled.compaction = time.perf_counter() - start
    return filled


def window_read(store: TelemetryStore, span: timedelta) -> tuple[float, int]:
    versions = sorted({row[0] for row in store._file.read("SELECT DISTINCT version FROM buckets")})
    start = time.perf_counter()
    rows = store.window(MODEL, versions, datetime.now(UTC) - span)
    return time.perf_counter() - start, len(rows)


def cycle_seconds(controller: Controller) -> float:
    controller.cycle()  # warm: the first steady cycle pays for lazy imports and caches
    times = []
    for _ in range(CYCLES):
        start = time.perf_counter()
        outcome = controller.cycle()
        times.append(time.perf_counter() - start)
        require(outcome.stalled is None, f"a cycle stalled: {outcome.stalled}")
    return statistics.median(times)


def measured_cycles(repo: Path, state: Path) -> tuple[float, float]:
    """Median cycle time and peak RSS (MiB) of a controller process of its own started on ``state``: what a
    controller restarted on a filled state directory costs, apart from this process's filling."""
    answer = subprocess.run([sys.executable, __file__, "--measure", str(repo), str(state)], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    body = json.loads(answer.splitlines()[-1])
    return body["seconds"], body["rss"]


def measure(repo: Path, state: Path) -> None:
    controller = Controller(ControllerConfig(str(repo), state, interval=3600), LocalBackend(state))
    seconds = cycle_seconds(controller)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss": rss}))


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--measure", nargs=2, metavar=("REPO", "STATE"), help=argparse.SUPPRESS)
    args = arguments.parse_args()
    if args.measure:
        measure(Path(args.measure[0]), Path(args.measure[1]))
        return
    devices = 300 if args.quick else 10_000
    with tempfile.TemporaryDirectory(prefix="controller-cycle-") as tmp:
        work = Path(tmp)
        repo = fleet_repo(work)
        fleet(work, repo, "baseline", devices, 0)
        baseline, baseline_rss = measured_cycles(repo, work / "baseline")
        month = fleet(work, repo, "month", devices, DAYS)
        store = month.controller.telemetry
        rows, size = store.size()
        took, rss = measured_cycles(repo, work / "month")
        reads = {span: window_read(store, span) for span in (timedelta(hours=1), timedelta(days=7))}
        reads[timedelta(days=DAYS)] = window_read(store, timedelta(days=DAYS))
        counted = sum(r["summaries"] for r in store.window(MODEL, None, datetime.now(UTC) - timedelta(days=DAYS)))
        require(counted == devices * DAYS * 24, f"{counted} summaries in the store, not {devices * DAYS * 24}")
        on_disk = sum(p.stat().st_size for p in (work / "month").glob("telemetry.sqlite*"))
    print(f"controller cycle, {devices:,} devices Healthy, {DAYS} days of hourly telemetry in the store")
    print(f"  cycle time with telemetry     {took:8.3f} s  (median of {CYCLES}; gate window 1 h; nothing to apply)")
    print(f"  cycle time without telemetry  {baseline:8.3f} s  (baseline)")
    print(f"  ratio                         {ratio(took, baseline, 'with vs without telemetry'):8.2f}x")
    print(f"  controller peak RSS           {rss:8.1f} MiB  (a controller process started on the month's state)")
    print(f"  controller peak RSS, baseline {baseline_rss:8.1f} MiB  ({ratio(rss, baseline_rss, 'RSS'):.2f}x)")
    print(f"  store writes                  {month.writes_per_second:8.0f} /s  (one transaction per summary)")
    print(f"  compaction                    {month.compaction:8.3f} s  (a month's hours into days, "
          f"{FOLD_PER_CALL:,} rows a call)")  # fmt: skip
    for span, (seconds, read) in reads.items():
        label = f"gate window {span.days} d" if span.days else "gate window 1 h"
        print(f"  {label:<29} {seconds:8.3f} s  ({read:,} rows)")
    print(f"  telemetry in the store        {on_disk / 2**20:8.1f} MiB  ({rows:,} rows, {size / rows:.0f} bytes of "
          f"summary each; {on_disk / devices / 1024:.1f} KiB per device)")  # fmt: skip


if __name__ == "__main__":
    main()
