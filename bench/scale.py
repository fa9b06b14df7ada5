"""The scale figures: real rollouts to 1,000 / 10,000 / 100,000 simulated devices, compared with earlier runs.

Each size runs ``reconciler.simulate`` (what ``edgectl simulate`` runs): a real controller with its device API,
the devices in worker processes over mutual TLS, a three-step rollout with one-minute pauses to Succeeded, then a
defective release that must abort. 5 % of the devices take offline periods, 10 % are on flaky links. The largest
size runs without downloads and without the defect (its devices report the phases but fetch no bytes, so
that what is measured is the controller and the device API under the fleet's polling).

Printed per size: time to 50/90/99 % converged, controller cycle p50/p99 and peak RSS, device API p50/p99, bytes
served, status commits, the defect's exposure; then each figure against the runs kept in
``bench/results/scale.json``: beyond 3 standard deviations of three or more earlier runs (a floor of 5 % of their
mean), or more than 25 % above the one earlier run, is a regression (exit status 2 with ``--strict``).
``--record`` appends this run to that file.

    python bench/scale.py [SIZES ...] [--record] [--strict] [--quick]
    # default sizes 1000 10000 100000; --quick: 40 devices, short pauses (the same code path, for tests)
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from _check import parser, require

from reconciler.simulate import results
from reconciler.simulate.faults import Faults
from reconciler.simulate.scenario import Scenario, ScenarioConfig, cleanup

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale.json"
FAULTS = Faults(offline=0.05, flaky=0.10)


def config_for(size: int, quick: bool) -> ScenarioConfig:
    if quick:
        return ScenarioConfig(devices=size, faults=FAULTS, pause_seconds=5, trial_seconds=3, poll_seconds=3,
                              telemetry_seconds=20, controller_interval=2, timeout_seconds=300, settle_seconds=30,
                              steps=(10, 50))  # fmt: skip
    if size >= 50_000:
        return ScenarioConfig(devices=size, faults=FAULTS, processes=2, poll_seconds=300, telemetry_seconds=1800,
                              controller_interval=5, defect=False, downloads=False, enrol="issued",
                              pause_seconds=60, trial_seconds=30, timeout_seconds=1200, unfinished_ok=True,
                              settle_seconds=0)  # fmt: skip
    return ScenarioConfig(devices=size, faults=FAULTS, processes=2, pause_seconds=60, trial_seconds=30,
                          poll_seconds=30, controller_interval=5, timeout_seconds=1800)  # fmt: skip


def figures(result: dict) -> dict[str, float | None]:
    """The figures compared across runs (lower is better for each)."""
    converged = result["rollout"]["converged"]
    found = {
        "converged50Seconds": converged["50"], "converged90Seconds": converged["90"],
        "converged99Seconds": converged["99"],
        "cycleP50Seconds": result["controller"]["cycleSeconds"]["p50"],
        "cycleP99Seconds": result["controller"]["cycleSeconds"]["p99"],
        "controllerRssMiB": round(result["controller"]["rssBytes"] / 2**20, 1) if result["controller"]["rssBytes"]
        else None,
        "apiP99Ms": result["deviceApi"]["p99Ms"],
    }  # fmt: skip
    if result["controller"].get("deviceApiHelpersRssBytes"):  # the device API's other processes, together
        found["helpersRssMiB"] = round(result["controller"]["deviceApiHelpersRssBytes"] / 2**20, 1)
    if "defect" in result:
        found["defectExposedShare"] = result["defect"]["exposedShare"]
    return found


def goals(size: int, found: dict[str, float | None]) -> list[str]:
    """The issue's goals for this size, each met or missed with the figure."""

    def judged(name: str, value: float | None, limit: float, unit: str) -> str:
        if value is None:
            return f"{name}: not reached"
        return f"{name}: {'met' if value < limit else 'MISSED'} ({value:g}{unit} against {limit:g}{unit})"

    said = []
    if 10_000 <= size < 50_000:  # the goal scenario: 10,000 devices, 5 % offline, 10 % flaky, 1-minute pauses
        said.append(judged("99 % converged", found["converged99Seconds"], 600, " s"))
    if "defectExposedShare" in found:
        said.append(judged("defect exposure", found["defectExposedShare"], 0.05, ""))
    if size >= 50_000:
        said.append(judged("cycle p99", found["cycleP99Seconds"], 5, " s"))
        rss = found["controllerRssMiB"]
        rss = rss + (found.get("helpersRssMiB") or 0) if rss is not None else None  # the helpers are its memory too
        said.append(judged("controller RSS (with its device API helpers)", rss, 2048, " MiB"))
    return said or ["none at this size"]


def main() -> None:
    options = parser(__doc__)
    options.add_argument("sizes", nargs="*", type=int)
    options.add_argument("--record", action="store_true", help=f"append this run to {RESULTS.relative_to(ROOT)}")
    options.add_argument("--strict", action="store_true", help="exit 2 when a figure regressed")
    options.add_argument("--results", type=Path, default=RESULTS)
    options.add_argument("--from", dest="made", action="append", default=[], metavar="SIZE=RESULT.json",
                         help="take SIZE's figures from a result `edgectl simulate` wrote with this script's settings "
                         "for SIZE (simulate/result.json in its workdir) instead of running it again")  # fmt: skip
    args = options.parse_args()
    made = {int(size): Path(path) for size, _, path in (item.partition("=") for item in args.made)}
    sizes = args.sizes or ([40] if args.quick else [1_000, 10_000, 100_000])
    history = json.loads(args.results.read_text())["runs"] if args.results.exists() else []
    run = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "sizes": {}}  # fmt: skip
    regressions: list[str] = []
    for size in sizes:
        scenario = None
        if size in made:
            result, wall = json.loads(made[size].read_text()), 0.0
        else:
            scenario = Scenario(config_for(size, args.quick), None, ROOT / "fleet-example",
                                say=lambda text: print(f"  {text}", file=sys.stderr, flush=True))  # fmt: skip
            started = time.monotonic()
            result = scenario.run()
            wall = time.monotonic() - started
        require(result["enrolled"] >= 0.95 * size, f"{size:,} devices: only {result['enrolled']} enrolled")
        require(result["rollout"]["convergedDevices"] > 0, f"{size:,} devices: none converged")
        found = figures(result)
        run["sizes"][str(size)] = found
        converged = result["rollout"]["converged"]
        print(f"{size:,} devices ({result['enrolled']:,} enrolled, {wall:.0f} s wall)")
        print(f"  converged 50/90/99 %: {converged['50']} / {converged['90']} / {converged['99']} s after the commit; "
              f"rollout {result['rollout']['phase']} in {result['rollout']['seconds']} s")  # fmt: skip
        cycle = result["controller"]["cycleSeconds"]
        controller = result["controller"]
        print(f"  controller: {controller['cycles']} cycles, p50 {cycle['p50']} s, p99 {cycle['p99']} s, "
              f"peak RSS {found['controllerRssMiB']} MiB"
              + (f" (+ {found['helpersRssMiB']} MiB in device API helpers)" if "helpersRssMiB" in found else "")
              + f", {controller['errorCount']} errors logged")  # fmt: skip
        api = result["deviceApi"]
        print(f"  device API: {api['requests']:,} requests, p50 {api['p50Ms']} ms, p99 {api['p99Ms']} ms, "
              f"{api['unanswered']} unanswered, {api['http5xx']} 5xx, {api['rateLimited']} 429")  # fmt: skip
        print(f"  served {result['bytesServed']['total'] / 1e6:.1f} MB; {result['statusCommits']} status commits; "
              f"{result['transfers']['cuts']} cuts, {result['transfers']['resumed']} resumed")  # fmt: skip
        if "defect" in result:
            defect = result["defect"]
            print(f"  defective {defect['version']}: {defect['phase']} in {defect['seconds']} s, given to "
                  f"{defect['exposed']} devices ({defect['exposedShare']:.2%} of the fleet)")  # fmt: skip
        print("  goals: " + "; ".join(goals(size, found)))
        earlier = [r["sizes"][str(size)] for r in history if str(size) in r.get("sizes", {})]
        found_now = {k: v for k, v in found.items() if v is not None}
        regressed = results.compare(found_now, earlier)
        regressions += [f"{size:,} devices: {line}" for line in regressed]
        print(f"  against {len(earlier)} earlier runs: " + ("; ".join(regressed) if regressed else "no regression"))
        if scenario is not None:
            cleanup(scenario.workdir)
    if args.record:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({"runs": [*history, run]}, indent=2) + "\n")
        print(f"recorded in {args.results}")
    if regressions and args.strict:
        print("REGRESSION: " + "; ".join(regressions), file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
