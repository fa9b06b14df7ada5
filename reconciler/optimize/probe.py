"""Benchmark one artifact in a clean process, the way a device of its profile would run it.

    python -m reconciler.optimize.probe ARTIFACT FORMAT DATA OUT_DIR --threads N [--memory-limit BYTES] [--runs N]

Who calls it: ``benchmark.measure`` (never in-process: a fresh interpreter gives honest peak memory and
keeps one variant's arenas from inflating the next). The profile's thread count is applied to the
runtime. What a device does is measured as a device does it: the model loaded, then single samples;
peak memory is the resident memory that adds over the bare runtime (VmHWM, reset after the imports), and a
variant is refused for the profile's memory limit only when that really is more. An address-space limit is
not used: runtimes reserve far more address space than they touch. The evaluation set runs afterwards, in
batches, and is not counted. Writes OUT_DIR/result.json (latency percentiles, peak memory) and
OUT_DIR/outputs.npy (outputs for every row of DATA).
Exit codes: 0 measured, 3 memory limit exceeded (result.json says by how much), 4 the runtime refused the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from reconciler.artifact.runtime import ModelRunner, inputs_from_arrays, row_count, take


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


EVALUATION_BATCH = 64
"""Rows of the evaluation set per run: enough to be quick, few enough not to need much memory."""


def _reset_peak() -> bool:
    """Start the resident-memory peak (VmHWM) afresh (Linux 4.0+); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact", type=Path)
    parser.add_argument("format")
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-limit", type=int, default=0)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--providers", default="")
    args = parser.parse_args(argv)

    with np.load(args.data) as data:
        x = inputs_from_arrays({key: data[key].astype(np.float32) for key in data.files})
    # Import the runtime before measuring: its own footprint is not the model's.
    if args.format == "onnx":
        import onnxruntime  # noqa: F401
    else:
        import ai_edge_litert.interpreter  # noqa: F401
    _reset_peak()
    baseline_rss = _status_kib("VmRSS") * 1024
    try:
        runner = ModelRunner(args.artifact, args.format, args.threads, [p for p in args.providers.split(",") if p])
        rows = row_count(x)
        for i in range(min(10, rows)):  # warm-up
            runner.run(take(x, i, i + 1))
        times = []
        for i in range(args.runs):
            sample = take(x, i % rows, i % rows + 1)
            start = time.perf_counter()
            runner.run(sample)
            times.append(time.perf_counter() - start)
        # The device's case ends here: a loaded model answering single samples.
        peak = max(0, _status_kib("VmHWM") * 1024 - baseline_rss)
        if args.memory_limit and peak > args.memory_limit:
            print(json.dumps({"error": f"uses {peak} bytes of resident memory, more than the limit of "
                                       f"{args.memory_limit}", "peak_memory_bytes": peak}))  # fmt: skip
            return 3
        batches = range(0, rows, EVALUATION_BATCH)
        outputs = np.concatenate([runner.run(take(x, i, i + EVALUATION_BATCH)) for i in batches])
    except MemoryError:
        print(json.dumps({"error": "out of memory"}))
        return 3
    except Exception as exc:  # the runtimes raise their own types for models they cannot load or run
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 4
    # VmHWM, not ru_maxrss: Linux carries the parent's pre-exec peak into ru_maxrss of a fresh child.
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "outputs.npy", outputs)
    result = {
        "latency_p50_ms": float(np.percentile(times, 50) * 1000),
        "latency_p95_ms": float(np.percentile(times, 95) * 1000),
        "peak_memory_bytes": peak,
        "runs": args.runs,
        "threads": args.threads,
        "providers": runner.providers,
    }
    (args.out / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
