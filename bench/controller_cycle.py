"""The controller's cycle at fleet scale: time and memory with a month of telemetry in the store.

A fleet repo (fleet-example, in a local Git repository) and the local backend with 10,000 factory devices that
all report Healthy; each device uploaded a summary a day for 30 days (merged per device and version as the device
API stores them). Prints the steady-state cycle time (fetch, load, plan, observe the gates over every device's
telemetry, render status; nothing to apply) and the controller process's resident memory, against the same
fleet with no telemetry stored (the baseline: what the telemetry costs a cycle), and the store's size (merged
records do not grow with days).

    python bench/controller_cycle.py            # 10,000 devices, 30 days
    python bench/controller_cycle.py --quick    # 300 devices, 30 days
"""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _check import parser, ratio, require

from reconciler.cluster import AssignmentStatus, LocalBackend
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.telemetry.summaries import record

ROOT = Path(__file__).resolve().parents[1]
FACTORY = {
    "acme.example/site-type": "factory",
    "acme.example/network": "ethernet",
    "topology.kubernetes.io/region": "us-east",
    "edgereconciler.io/hardware": "cortex-a",
    "kubernetes.io/arch": "arm64",
}
DAYS = 30
CYCLES = 5


def fleet_repo(work: Path) -> Path:
    """fleet-example committed once, served bare (the controller pushes its status commits there)."""
    repo = work / "fleet-work"
    shutil.copytree(ROOT / "fleet-example", repo, ignore=shutil.ignore_patterns("*.keras", "*.npz"))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=bench", "-c", "user.email=bench@example", "commit", "-qm", "fleet"]):  # fmt: skip
        subprocess.run(["git", *args], cwd=repo, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(work / "fleet.git")], check=True)
    return work / "fleet.git"


def summary(day: int, version: str) -> dict:
    requests = 2000 + day
    return {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "TelemetrySummary", "model": "vibration-anomaly",
            "version": version, "requests": requests, "errors": day % 3,
            "latencyMs": {"buckets": [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, "+Inf"],
                          "counts": [requests - 60, 30, 15, 10, 3, 2, 0], "p50": 1.0, "p95": 2.0, "p99": 5.0},
            "predictions": [requests - 300, 200, 100],
            "inputs": {"mean": {"edges": [-1.0, 0.0, 1.0], "counts": [10, requests - 20, 5, 5]}}}  # fmt: skip


def fleet(work: Path, repo: Path, name: str, devices: int, days: int) -> tuple[Controller, LocalBackend]:
    state = work / name
    backend = LocalBackend(state)
    for i in range(devices):
        backend.register_device(f"factory-{i:05d}", FACTORY)
    controller = Controller(ControllerConfig(str(repo), state, interval=3600), backend)
    first = controller.cycle()
    require(first.stalled is None and first.applied == devices,
            f"the first cycle applied {first.applied} of {devices} ({first.stalled or 'not stalled'})")  # fmt: skip
    for (device, model), spec in backend.assignments().items():
        backend.report_status(device, model, AssignmentStatus("Healthy", installed_version=spec.version,
                                                              target_version=spec.version))  # fmt: skip
        for day in range(days):
            require(record(backend, device, {**summary(day, spec.version), "device": device}), "not stored")
    return controller, backend


def cycle_seconds(controller: Controller) -> float:
    controller.cycle()  # warm: the first steady cycle pays for lazy imports and caches
    times = []
    for _ in range(CYCLES):
        start = time.perf_counter()
        outcome = controller.cycle()
        times.append(time.perf_counter() - start)
        require(outcome.stalled is None, f"a cycle stalled: {outcome.stalled}")
    return statistics.median(times)


def main() -> None:
    args = parser(__doc__).parse_args()
    devices = 300 if args.quick else 10_000
    with tempfile.TemporaryDirectory(prefix="controller-cycle-") as tmp:
        work = Path(tmp)
        repo = fleet_repo(work)
        bare, _ = fleet(work, repo, "baseline", devices, 0)
        baseline = cycle_seconds(bare)
        controller, backend = fleet(work, repo, "month", devices, DAYS)
        stored = backend.telemetry()
        require(len(stored) == devices and all(s["summaries"] == DAYS for s in stored),
                f"{len(stored)} telemetry records stored, not {devices} of {DAYS} summaries each")  # fmt: skip
        took = cycle_seconds(controller)
        size = (work / "month" / "fleet.sqlite").stat().st_size - (work / "baseline" / "fleet.sqlite").stat().st_size
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"controller cycle, {devices:,} devices Healthy, {DAYS} days of telemetry merged per device and version")
    print(f"  cycle time with telemetry     {took:8.3f} s  (median of {CYCLES}; nothing to apply)")
    print(f"  cycle time without telemetry  {baseline:8.3f} s  (baseline)")
    print(f"  ratio                         {ratio(took, baseline, 'with vs without telemetry'):8.2f}x")
    print(f"  peak RSS of this process      {rss:8.1f} MiB  (both fleets, both controllers)")
    print(f"  telemetry in the store        {size / 2**20:8.1f} MiB  ({size / devices:.0f} bytes per device: one "
          f"record per device and version, whatever the days)")  # fmt: skip


if __name__ == "__main__":
    main()
