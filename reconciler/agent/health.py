"""On-device health check of an installed (not yet active) slot: does this model, in this runtime, on this
hardware, reproduce the outputs the build recorded?

Who calls it: the agent, between installing into the inactive slot and switching to it. The manifest's
golden vectors are evaluation inputs with the artifact's own outputs from the build machine; the device
must match them within the manifest's tolerance (and agree on the top class when asked). Latency is
measured warm and compared with the profile's limit when one is given. Any exception while loading or
running the model is a failed check, never a crash of the agent.

The agent runs it in a child process (:func:`health_check_isolated`, ``python -m reconciler.agent.health``): a
model that hangs the runtime is stopped at its CPU-time limit (a spinning hang) or at five times that on the wall
clock (a blocked one; a device busy serving gives the check only part of a core, so the wall clock alone would
call a slow check a hang), one that crashes it (a segfault in a kernel) ends the
child only, one that takes more memory than the profile allows is stopped by a watchdog in the child as soon as
it does. Each is a failed check with that reason.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from reconciler.artifact.runtime import ModelRunner, from_lists, take


@dataclass(frozen=True)
class HealthReport:
    passed: bool
    reason: str
    max_abs_error: float = float("nan")
    top1_agreement: float = float("nan")
    latency_p95_ms: float = float("nan")
    memory_bytes: int = 0
    """Resident memory the model added to the process while loading and running."""
    latency_p50_ms: float = float("nan")
    peak_memory_bytes: int = 0
    """The highest resident memory the process reached, over what it held before loading the model."""


def health_check(
    slot: Path,
    manifest: dict,
    threads: int = 1,
    max_latency_ms: float | None = None,
    runs: int = 20,
    max_memory_bytes: int | None = None,
) -> HealthReport:
    before = _rss()
    try:
        model_file = next(name for name in manifest["files"] if name.startswith("model."))
        runner = ModelRunner(Path(slot) / model_file, manifest["format"], threads)
        golden = manifest["golden"]
        inputs = from_lists(golden["inputs"])
        expected = np.asarray(golden["outputs"], dtype=np.float32)
        outputs = runner.run(inputs)
    except Exception as exc:  # a model that does not load or run is unhealthy, whatever the reason
        return HealthReport(False, f"model does not load or run: {type(exc).__name__}: {str(exc)[:200]}")
    if outputs.shape != expected.shape:
        return HealthReport(False, f"outputs have shape {outputs.shape}, the golden vectors {expected.shape}")
    error = float(np.max(np.abs(outputs - expected))) if expected.size else 0.0
    tolerance = golden.get("tolerance", {})
    atol = float(tolerance.get("atol", 1e-4))
    agreement = float(np.mean(np.argmax(outputs, axis=-1) == np.argmax(expected, axis=-1))) if expected.size else 1.0
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run(take(inputs, 0, 1))
        latencies.append((time.perf_counter() - start) * 1000)
    p95 = float(np.percentile(latencies, 95))
    memory = max(0, _rss() - before)
    peak = max(0, _rss("VmHWM") - before)
    if max_memory_bytes is not None and memory > max_memory_bytes:
        return HealthReport(False, f"the model took {memory} bytes of memory, more than {max_memory_bytes}",
                            error, agreement, p95, memory)  # fmt: skip
    if error > atol:
        return HealthReport(
            False, f"golden outputs differ by {error:.4g} (tolerance {atol:.4g})", error, agreement, p95
        )
    if tolerance.get("top1") and agreement < 1.0:
        return HealthReport(
            False, f"top-1 class differs on {1 - agreement:.0%} of golden inputs", error, agreement, p95
        )
    if max_latency_ms is not None and p95 > max_latency_ms:
        return HealthReport(False, f"latency p95 {p95:.2f} ms exceeds {max_latency_ms:.2f} ms", error, agreement, p95)
    return HealthReport(True, "golden outputs reproduced", error, agreement, p95, memory,
                        float(np.percentile(latencies, 50)), peak)  # fmt: skip


OUT_OF_MEMORY_EXIT = 86
"""The child's exit code when its watchdog stopped it for memory (distinct from a crash by signal)."""


def health_check_isolated(
    slot: Path,
    manifest: dict,
    threads: int = 1,
    max_latency_ms: float | None = None,
    max_memory_bytes: int | None = None,
    timeout_seconds: float = 120.0,
    wall_seconds: float | None = None,
    runs: int = 20,
) -> HealthReport:
    """:func:`health_check` in a child process: a hang, a crash or too much memory is a failed check.
    ``timeout_seconds``: CPU seconds the child may use; ``wall_seconds`` (default five times that): real time.
    ``runs``: single-sample inferences timed (a lab benchmark times more than a health check)."""
    wall = wall_seconds if wall_seconds is not None else 5 * timeout_seconds
    with tempfile.TemporaryDirectory(prefix="health-") as scratch:
        request = Path(scratch) / "request.json"
        body = {"slot": str(slot), "manifest": manifest, "threads": threads, "maxLatencyMs": max_latency_ms,
                "maxMemoryBytes": max_memory_bytes, "cpuSeconds": timeout_seconds, "runs": runs}  # fmt: skip
        request.write_text(json.dumps(body))
        child = subprocess.Popen([sys.executable, "-m", "reconciler.agent.health", str(request)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            out, err = child.communicate(timeout=wall)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return HealthReport(False, f"the model hung: no answer within {wall:g} s")
    if child.returncode == OUT_OF_MEMORY_EXIT:
        return HealthReport(False, f"out of memory: {err.decode(errors='replace').strip()[-200:]}")
    if child.returncode == -signal.SIGXCPU:
        return HealthReport(False, f"the model hung: it spun for {timeout_seconds:g} s of CPU without an answer")
    if child.returncode < 0:
        return HealthReport(False, f"the runtime crashed (signal {signal.Signals(-child.returncode).name})")
    try:
        body = json.loads(out.decode().strip().splitlines()[-1])
        return HealthReport(**body)
    except (ValueError, IndexError, TypeError) as exc:
        tail = err.decode(errors="replace").strip()[-300:]
        return HealthReport(False, f"the health check exited {child.returncode} without a report ({exc}): {tail}")


def _child(request_file: str) -> None:
    import resource

    from .faults import crash_point, spin_point

    crash_point("health")
    request = json.loads(Path(request_file).read_text())
    cpu = request.get("cpuSeconds")
    if cpu:  # SIGXCPU at the soft limit, SIGKILL one second later if that is ignored
        seconds = max(1, math.ceil(cpu))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    spin_point("health")
    limit = request.get("maxMemoryBytes")
    if limit:
        baseline = _rss()

        def watch() -> None:  # the runtime allocates outside Python: only a thread that looks can stop it in time
            while True:
                used = _rss() - baseline
                if used > limit:
                    sys.stderr.write(f"the model took {used} bytes, more than {limit}\n")
                    sys.stderr.flush()
                    os._exit(OUT_OF_MEMORY_EXIT)
                time.sleep(0.01)

        threading.Thread(target=watch, daemon=True).start()
    report = health_check(Path(request["slot"]), request["manifest"], int(request["threads"]),
                          request.get("maxLatencyMs"), int(request.get("runs") or 20), limit)  # fmt: skip
    print(json.dumps(asdict(report), allow_nan=True))


def _rss(field: str = "VmRSS") -> int:
    """Resident memory now (VmRSS) or at its highest so far (VmHWM), from /proc; 0 where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(f"{field}:"))
    except (OSError, StopIteration, ValueError):
        return 0


if __name__ == "__main__":
    _child(sys.argv[1])
