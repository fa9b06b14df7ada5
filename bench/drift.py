"""Fleet monitoring with sketches: what a device sends, what the controller pays to merge a fleet, and how soon a
half-sigma shift is flagged.

    python bench/drift.py [--quick]

Prints:
- summary bytes per device per hour (JSON as uploaded: counts every FLUSH_SECONDS, sketches every SKETCH_SECONDS)
  for a 64-feature, 3-class model at 1 and 10 requests a second, against sketches at every hand-over of counts
  (the ratio) and counts alone;
- the controller's time to evaluate drift for one cycle over 10,000 devices' hourly summaries (fleet, profiles,
  groups and every device, 34 figures), against adding up the same summaries' counts (the aggregate the gates
  read before sketches) as the baseline (--quick: 500 devices);
- drift detection delay for a 0.5-sigma shift on one feature of every device, 60 requests an hour each, 6-hour
  window, evaluated every 10 minutes: how long the shifted data ran before the feature was flagged fleet-wide, at
  100 and 10,000 devices (--quick: 100), and that no other input feature was flagged on the way (the outputs
  read the shifted columns: they may move too).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from _check import parser, ratio, require

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler.agent.supervisor import FLUSH_SECONDS, SKETCH_SECONDS
from reconciler.agent.telemetry import Gathered, Summary
from reconciler.artifact import sketches
from reconciler.artifact.manifest import reference_sketches
from reconciler.telemetry.aggregate import aggregate
from reconciler.telemetry.drift import Reference, compare_all, merge_sketch_maps, version_drift
from reconciler.telemetry.summaries import merge

FEATURES, CLASSES = 64, 3
EDGES = {"inputMean": [float(e) for e in np.linspace(-1, 1, 9)], "inputStd": [float(e) for e in np.linspace(0, 2, 9)]}


def outputs_of(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rows[:, :CLASSES] + rng.normal(0, 0.5, (len(rows), CLASSES))


def summary_of(rows: np.ndarray, rng: np.random.Generator, with_sketches: bool = True) -> dict:
    summary = Summary("m", "1", "d", EDGES, CLASSES)
    for row in rows:
        summary.add({"input_0": row[None, :]}, outputs_of(row[None, :], rng), 0.003, False)
    if not with_sketches:
        summary.sketches = Gathered()
    return summary.to_json()


def bytes_per_hour(rate: float, rng: np.random.Generator, sketch_seconds: float | None) -> float:
    """JSON bytes an hour: a summary of counts every FLUSH_SECONDS, and sketches every ``sketch_seconds`` (None:
    never)."""
    per_flush = max(round(rate * FLUSH_SECONDS), 1)
    counts = float(np.mean([len(json.dumps(summary_of(rng.normal(size=(per_flush, FEATURES)), rng, False)))
                            for _ in range(12)])) * 3600 / FLUSH_SECONDS  # fmt: skip
    if sketch_seconds is None:
        return counts
    rows = rng.normal(size=(max(round(rate * sketch_seconds), 1), FEATURES))
    sketched = summary_of(rows, rng)["sketches"]
    return counts + len(json.dumps({"sketches": sketched})) * 3600 / sketch_seconds


def hourly(devices: int, rng: np.random.Generator, rows: int = 60) -> list[dict]:
    """One folded hour per device (what the telemetry store keeps), with device names and a profile."""
    found = []
    for device in range(devices):
        summary = summary_of(rng.normal(size=(rows, FEATURES)), rng)
        found.append({**merge(None, summary), "device": f"d{device:05d}", "model": "m", "version": "1"})
    return found


def main() -> None:
    args = parser(__doc__).parse_args()
    rng = np.random.default_rng(7)
    reference_rows = rng.normal(size=(600, FEATURES)).astype(np.float32)
    reference, counted = reference_sketches(reference_rows, outputs_of(reference_rows, rng))
    built = Reference(reference, counted)

    print(f"summary bytes per device per hour ({FEATURES} features; counts every {FLUSH_SECONDS:g} s)")
    for rate in (1.0, 10.0):
        plain = bytes_per_hour(rate, rng, None)
        every = bytes_per_hour(rate, rng, FLUSH_SECONDS)
        chosen = bytes_per_hour(rate, rng, SKETCH_SECONDS)
        require(every > chosen > plain > 0, "summaries were not measured")
        print(f"  {rate:g} request/s  sketches every {SKETCH_SECONDS:g} s {chosen / 1024:.0f} KiB  "
              f"(sketches at every hand-over {every / 1024:.0f} KiB, ratio {ratio(every, chosen, 'interval'):.1f}x;"
              f" counts alone {plain / 1024:.0f} KiB)")  # fmt: skip

    devices = 500 if args.quick else 10_000
    summaries = hourly(devices, rng)
    profile_of = {s["device"]: ("cortex-a" if i % 3 else "jetson") for i, s in enumerate(summaries)}
    groups = {f"site-{g}": {s["device"] for i, s in enumerate(summaries) if i % 10 == g} for g in range(10)}
    started = time.perf_counter()
    found = version_drift(summaries, {"cortex-a": built, "jetson": built}, profile_of, groups)
    drift_seconds = time.perf_counter() - started
    started = time.perf_counter()
    added = aggregate(summaries, "m", "1")
    baseline = time.perf_counter() - started
    require(found.fleet.devices == devices and len(found.fleet.figures) == FEATURES // 2 + 2,
            f"drift compared {found.fleet.devices} devices and {len(found.fleet.figures)} figures")  # fmt: skip
    require(added.requests == devices * 60, "the baseline added nothing")
    print(f"drift evaluation, {devices} devices (fleet, 2 profiles, 10 groups, every device; "
          f"{len(found.fleet.figures)} figures)")  # fmt: skip
    print(f"  sketches merged and compared  {drift_seconds:.2f} s  ({drift_seconds / devices * 1e3:.2f} ms/device; "
          f"{found.drifted_devices} device(s) flagged on reference-like data)")  # fmt: skip
    print(f"  counts added (baseline)       {baseline:.3f} s")
    print(f"  ratio                         {ratio(drift_seconds, baseline, 'drift vs counts'):.0f}x")

    name = "input_0[0:2]"  # the pair of columns 0 and 1: both shifted by half a sigma
    print("detection delay, 0.5-sigma shift on one feature of every device from t=0, 60 requests/hour each, "
          "evaluated every 10 min")  # fmt: skip
    step, per_step = 600, 10  # seconds between evaluations, requests per device between them
    for fleet in (100,) if args.quick else (100, 10_000):
        for hours in (6, 1):
            steps = hours * 3600 // step
            window = [_window(rng, fleet, per_step, 0.0) for _ in range(steps)]  # the window before the shift
            delay, other = None, 0
            for index in range(6 * 3600 // step):
                window = [*window[1:], _window(rng, fleet, per_step, 0.5)]
                result = compare_all(reference, merge_sketch_maps(window), reference_values=counted)
                other += sum(1 for n, f in result.items() if f.drifted and n.startswith("input_") and n != name)
                if result[name].drifted:
                    delay = (index + 1) * step
                    break
            require(delay is not None, f"a half-sigma shift at {fleet} devices was not flagged in six hours")
            print(f"  {fleet} devices, {hours} h window  flagged after {delay / 60:.0f} min of shifted data  "
                  f"({other} other input feature(s) flagged on the way)")  # fmt: skip


def _window(rng: np.random.Generator, devices: int, rows: int, shift: float) -> dict:
    """The devices' sketches of one evaluation step, merged (one sketch of the pooled rows stands for them: merging
    is exact within the rank error, tests/telemetry/test_sketches.py)."""
    data = rng.normal(size=(devices * rows, FEATURES)).astype(np.float32)
    data[:, :2] += shift
    return sketches.sketch_rows({"input_0": data}, outputs_of(data, rng))


if __name__ == "__main__":
    main()
