"""Gates: which numbers of a variant break the model's gates or the profile's limits, and by how much.

Pure (no I/O). A failure says which number failed, the limit, and the distance, because "refused" alone
sends a person hunting through logs.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.api.device import DeviceProfile
from reconciler.api.model import Model

from .benchmark import Measurement


@dataclass(frozen=True)
class GateFailure:
    gate: str
    measured: float
    limit: float
    unit: str

    def __str__(self) -> str:
        measured, limit, over = (
            _number(v) + self.unit for v in (self.measured, self.limit, self.measured - self.limit)
        )
        return f"{self.gate}: {measured} exceeds {limit} by {over}"


def _number(value: float) -> str:
    """Whole numbers in full (byte counts), others to four significant digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def check_gates(measurement: Measurement, reference: dict[str, float], model: Model, profile: DeviceProfile):
    """Every gate the variant breaks (an empty list means it passes). ``reference``: the source model's metrics
    for the model's task (see :mod:`.metrics`)."""
    failures: list[GateFailure] = []
    gates, limits = model.spec.gates, profile.spec.limits
    failures += _quality(measurement.metrics, reference, gates)
    for gate, limit in (
        ("model size (model gate)", gates.max_size),
        ("model size (profile limit)", limits.max_model_size),
    ):
        if limit is not None and measurement.size_bytes > limit:
            failures.append(GateFailure(gate, measurement.size_bytes, limit, " bytes"))
    for gate, limit in (("latency p95 (model gate)", gates.max_latency_p95),
                        ("latency p95 (profile limit)", limits.max_latency_p95)):  # fmt: skip
        latency = measurement.latency_p95_ms  # None when not measurable here: the gate is not evaluated
        if limit is not None and latency is not None and latency > limit.total_seconds() * 1000:
            failures.append(GateFailure(gate, latency, limit.total_seconds() * 1000, " ms"))
    if limits.max_memory is not None and measurement.peak_memory_bytes > limits.max_memory:
        failures.append(
            GateFailure("peak memory (profile limit)", measurement.peak_memory_bytes, limits.max_memory, " bytes")
        )
    return failures


def _quality(measured: dict[str, float], reference: dict[str, float], gates) -> list[GateFailure]:
    """The task's gate: the rise of the MAE for regression, else the drop of accuracy (or of AUROC for anomaly
    scores), both against the source model on the same rows."""
    if "mae" in reference:
        base, value = reference["mae"], measured.get("mae", float("inf"))
        rise = (value - base) / base if base > 0 else (float("inf") if value > base else 0.0)
        if rise > gates.max_mae_increase:
            return [GateFailure("MAE increase", round(rise * 100, 2), round(gates.max_mae_increase * 100, 2), " %")]
        return []
    metric = "auroc" if "auroc" in reference else "accuracy"
    if metric not in reference:
        return []
    drop = round((reference[metric] - measured.get(metric, 0.0)) * 100, 2)
    if drop > gates.max_accuracy_drop * 100:
        label = "AUROC drop" if metric == "auroc" else "accuracy drop"
        return [GateFailure(label, drop, round(gates.max_accuracy_drop * 100, 2), " points")]
    return []
