"""Summaries folded into one: what a bucket of the telemetry store keeps per device, model and version.

Every figure of a summary is a count on fixed bins or a mergeable sketch, so folding summaries into one loses
nothing the gates read: :mod:`.aggregate` adds folded records exactly as it would add every summary (sketches
within their rank error). Bins that differ (an agent with
other latency buckets, a build with other input edges) cannot be added: the newer replaces the older, as
Prometheus does when a histogram's buckets change.

Who calls it: :mod:`.store` (a summary into its hour, an hour into its day) and the device API, through
:func:`recorder`, which refuses a summary of a model the device is not assigned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from reconciler.api.types import parse_moment
from reconciler.artifact.sketches import merge_maps
from reconciler.cluster import Backend

if TYPE_CHECKING:
    from .store import TelemetryStore


def merge(stored: Mapping[str, Any] | None, summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` (a device's, or a folded record) folded into ``stored`` (None: the first one)."""
    stored = stored or {}
    latency_new, latency_old = summary.get("latencyMs") or {}, stored.get("latencyMs") or {}
    return {
        "requests": int(stored.get("requests", 0)) + int(summary.get("requests", 0)),
        "errors": int(stored.get("errors", 0)) + int(summary.get("errors", 0)),
        "droppedBefore": int(stored.get("droppedBefore", 0)) + int(summary.get("droppedBefore", 0)),
        "latencyMs": {
            "buckets": list(latency_new.get("buckets", [])),
            "counts": _fold(latency_old, latency_new, "buckets"),
        },
        "predictions": _add(stored.get("predictions") or [], summary.get("predictions") or []),
        "inputs": _inputs(stored.get("inputs") or {}, summary.get("inputs") or {}),
        "sketches": merge_maps(stored.get("sketches") or {}, summary.get("sketches") or {}),
        "errorsByKind": _counts(stored.get("errorsByKind") or {}, summary.get("errorsByKind") or {}),
        "summaries": int(stored.get("summaries", 0)) + int(summary.get("summaries", 1)),
    }


def recorder(
    store: TelemetryStore, clock: Callable[[], datetime]
) -> Callable[[Backend, str, Mapping[str, Any]], bool | str]:
    """The device API's ``on_telemetry``: a validated summary naming its device goes into ``store`` when the
    backend assigns the device its model. False (nothing stored) otherwise: a summary of a model the fleet no
    longer gives the device gates nothing; a string says why a summary was not counted (duplicate, expired)."""

    def record(backend: Backend, device: str, summary: Mapping[str, Any]) -> bool | str:
        if summary["model"] not in backend.assignments_for(device):
            return False
        return store.record(device, summary, clock())

    return record


def _inputs(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Per input: the histograms added, a histogram only one side has kept as it is."""
    merged = {name: dict(histogram) for name, histogram in old.items()}
    for name, histogram in new.items():
        merged[name] = {"edges": list(histogram.get("edges", [])),
                        "counts": _fold(old.get(name) or {}, histogram, "edges")}  # fmt: skip
    return merged


def _fold(old: Mapping[str, Any], new: Mapping[str, Any], bins: str) -> list[int]:
    """Counts of ``new`` added to ``old``'s when both are on the same bins; else ``new``'s alone."""
    if list(old.get(bins, [])) != list(new.get(bins, [])):
        return [int(c) for c in new.get("counts", [])]
    return _add(old.get("counts") or [], new.get("counts") or [])


def _counts(left: Mapping[str, int], right: Mapping[str, int]) -> dict[str, int]:
    return {k: int(left.get(k, 0)) + int(right.get(k, 0)) for k in sorted({*left, *right})}


def _add(left: list[int], right: list[int]) -> list[int]:
    if len(left) != len(right):
        return [int(c) for c in right] if right else [int(c) for c in left]
    return [int(a) + int(b) for a, b in zip(left, right, strict=True)]


def log_recorder(store: TelemetryStore, clock: Callable[[], datetime]) -> Callable[[Backend, str, list], bool]:
    """The device API's ``on_logs``: an agent's log lines go into ``store`` while one of its assignments carries a
    debug session whose ``until`` lies ahead (``edgectl debug``); False (refused) otherwise."""

    def record(backend: Backend, device: str, lines: list) -> bool:
        now = clock()
        for spec, _ in backend.assignments_for(device).values():
            debug = spec.debug
            until = parse_moment(debug.until) if debug is not None else None
            if until is not None and until > now:
                store.record_logs(device, lines)
                return True
        return False

    return record
