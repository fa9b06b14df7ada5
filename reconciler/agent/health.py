"""On-device health check of an installed (not yet active) slot: does this model, in this runtime, on this
hardware, reproduce the outputs the build recorded?

Who calls it: the agent, between installing into the inactive slot and switching to it. The manifest's
golden vectors are evaluation inputs with the artifact's own outputs from the build machine; the device
must match them within the manifest's tolerance (and agree on the top class when asked). Latency is
measured warm and compared with the profile's limit when one is given. Any exception while loading or
running the model is a failed check, never a crash of the agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reconciler.artifact.runtime import ModelRunner


@dataclass(frozen=True)
class HealthReport:
    passed: bool
    reason: str
    max_abs_error: float = float("nan")
    top1_agreement: float = float("nan")
    latency_p95_ms: float = float("nan")
    memory_bytes: int = 0
    """Resident memory the model added to the process while loading and running."""


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
        inputs = np.asarray(golden["inputs"], dtype=np.float32)
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
        runner.run(inputs[:1])
        latencies.append((time.perf_counter() - start) * 1000)
    p95 = float(np.percentile(latencies, 95))
    memory = max(0, _rss() - before)
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
    return HealthReport(True, "golden outputs reproduced", error, agreement, p95, memory)


def _rss() -> int:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0
