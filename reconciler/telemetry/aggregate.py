"""Fleet-wide telemetry: add up device summaries, and compare two versions' distributions.

Pure (no I/O). Devices count into the same fixed bins (the manifest's), so summaries of any number of devices
add up bin by bin, and drift is computed on the sums without raw data:

- PSI (population stability index): sum over bins of (p - q) * ln(p / q); below 0.1 is usually read as stable,
  above 0.25 as a shift;
- KL divergence of the new distribution from the reference.

Empty bins get a small floor (``EPSILON``) so a bin seen on one side only does not make the index infinite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

EPSILON = 1e-4


@dataclass
class Aggregate:
    """Summaries of one model version (optionally one profile), added up."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=list)
    buckets: list[float] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    devices: set[str] = field(default_factory=set)

    def add(self, summary: Mapping) -> None:
        self.requests += int(summary.get("requests", 0))
        self.errors += int(summary.get("errors", 0))
        latency = summary.get("latencyMs", {})
        self.buckets = self.buckets or [math.inf if b == "+Inf" else float(b) for b in latency.get("buckets", [])]
        self.latency = _add(self.latency, latency.get("counts", []))
        self.predictions = _add(self.predictions, summary.get("predictions", []))
        self.devices.add(str(summary.get("device", "")))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def latency_percentile(self, q: float) -> float | None:
        total = sum(self.latency)
        if not total:
            return None
        rank, seen = q / 100 * total, 0
        for bound, count in zip(self.buckets, self.latency, strict=False):
            seen += count
            if seen >= rank:
                return bound
        return self.buckets[-1] if self.buckets else None


def aggregate(summaries: Iterable[Mapping], model: str, version: str, devices: set[str] | None = None) -> Aggregate:
    """Add up the summaries of ``model@version`` (from ``devices`` only, when given)."""
    total = Aggregate()
    for summary in summaries:
        if summary.get("model") != model or summary.get("version") != version:
            continue
        if devices is not None and summary.get("device") not in devices:
            continue
        total.add(summary)
    return total


def psi(reference: list[int], current: list[int]) -> float | None:
    """Population stability index of ``current`` against ``reference`` (None when either is empty)."""
    p, q = _distribution(current), _distribution(reference)
    if p is None or q is None or len(p) != len(q):
        return None
    return sum((a - b) * math.log(a / b) for a, b in zip(p, q, strict=True))


def kl_divergence(reference: list[int], current: list[int]) -> float | None:
    p, q = _distribution(current), _distribution(reference)
    if p is None or q is None or len(p) != len(q):
        return None
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _distribution(counts: list[int]) -> list[float] | None:
    total = sum(counts)
    if not total:
        return None
    floored = [max(c / total, EPSILON) for c in counts]
    norm = sum(floored)
    return [v / norm for v in floored]


def _add(left: list[int], right: Iterable[int]) -> list[int]:
    right = list(right)
    if not left:
        return [int(v) for v in right]
    if len(left) != len(right):
        return left  # a summary on other bins (another build): not added
    return [a + int(b) for a, b in zip(left, right, strict=True)]
