"""Measure a variant on this machine as the reference device ("hardware-in-the-loop emulation").

Who calls it: the pipeline, once per candidate variant. The measurement runs in a child process
(``probe``) with the profile's threads and memory limit (resident memory of single-sample inference); accuracy
and agreement are computed here from the outputs it returns, against the evaluation labels and the fp32
reference's predictions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reconciler.api.device import DeviceProfile
from reconciler.artifact.runtime import as_arrays

from .datasets import Dataset
from .errors import BuildError
from .metrics import evaluate

DEFAULT_RUNS = 200


@dataclass(frozen=True)
class Measurement:
    """What one variant measured. Latency in milliseconds, sizes in bytes, accuracy as a fraction."""

    size_bytes: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    """None when this machine cannot run the profile's accelerator: never a CPU number in its place."""
    peak_memory_bytes: int
    accuracy: float | None
    """Classification and binary tasks (None for regression and anomaly scores: see ``metrics``)."""
    agreement: float | None
    """Share of evaluation rows where the variant predicts the same class as the fp32 reference."""
    threads: int
    providers: list[str]
    latency_note: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    """Every metric of the model's task, by name (``mae``, ``rmse``, ``auroc``, ...): see :mod:`.metrics`."""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Measured:
    measurement: Measurement
    outputs: np.ndarray


def measure(
    artifact: Path,
    fmt: str,
    profile: DeviceProfile,
    evaluation: Dataset,
    workdir: Path,
    reference_outputs: np.ndarray | None = None,
    runs: int = DEFAULT_RUNS,
    task: str = "classification",
    threshold: float = 0.5,
) -> Measured:
    """``reference_outputs``: the fp32 source's outputs on the evaluation rows (agreement is measured against
    them); ``task`` and ``threshold``: the model's, which choose the metrics."""
    data = workdir / "eval.npz"
    if not data.exists():
        np.savez(data, **as_arrays(evaluation.x))  # type: ignore[arg-type]
    out = workdir / f"probe-{artifact.stem}"
    command = [
        sys.executable, "-m", "reconciler.optimize.probe", str(artifact), fmt, str(data), str(out),
        "--threads", str(profile.spec.threads), "--runs", str(runs),
        "--providers", ",".join(profile.spec.execution_providers),
    ]  # fmt: skip
    if profile.spec.limits.max_memory:
        command += ["--memory-limit", str(profile.spec.limits.max_memory)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode == 3:
        used = _field_of(result.stdout, "peak_memory_bytes")
        measured = f" (it uses {used / 2**20:.1f} MiB resident over the bare runtime)" if used else ""
        raise BuildError(f"the model does not run within the profile's memory limit of "
                         f"{profile.spec.limits.max_memory / 2**20:.1f} MiB{measured}")  # fmt: skip
    if result.returncode != 0:
        detail = _error_of(result.stdout) or result.stderr.strip().splitlines()[-1:]
        raise BuildError(f"the {fmt} runtime could not run the model: {detail}")
    report = json.loads((out / "result.json").read_text())
    outputs = np.load(out / "outputs.npy")
    unmeasured = latency_not_measurable(profile, report["providers"])
    metrics = evaluate(task, outputs, evaluation.y, reference_outputs, threshold)
    return Measured(
        Measurement(
            size_bytes=artifact.stat().st_size,
            latency_p50_ms=None if unmeasured else round(report["latency_p50_ms"], 4),
            latency_p95_ms=None if unmeasured else round(report["latency_p95_ms"], 4),
            peak_memory_bytes=report["peak_memory_bytes"],
            accuracy=metrics.get("accuracy"),
            agreement=metrics.get("agreement"),
            threads=report["threads"],
            providers=report["providers"],
            latency_note=unmeasured,
            metrics=metrics,
        ),
        outputs,
    )


def latency_not_measurable(profile: DeviceProfile, providers: list[str]) -> str | None:
    """Why latency measured here would not be the device's, or None when this machine can stand in for it.

    A CPU profile is emulated with its thread count. A GPU profile needs its first execution provider
    (TensorRT, CUDA) present; an NPU/TPU profile needs its delegate, which no build machine has.
    """
    spec = profile.spec
    if spec.accelerator == "none":
        return None
    if spec.runtime == "onnxruntime" and spec.execution_providers and spec.execution_providers[0] in providers:
        return None
    wanted = spec.execution_providers[0] if spec.runtime == "onnxruntime" else f"the {spec.accelerator} delegate"
    return f"not measured: {wanted} is not available on the build machine (ran on {', '.join(providers)})"


def _error_of(stdout: str) -> str | None:
    return _field_of(stdout, "error")


def _field_of(stdout: str, name: str):
    try:
        return json.loads(stdout.strip().splitlines()[-1])[name]
    except (ValueError, IndexError, KeyError, TypeError):
        return None
