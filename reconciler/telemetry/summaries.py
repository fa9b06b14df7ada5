"""A device's telemetry, kept merged: one record per device and model version, however long a rollout runs.

Who calls it: the device API, for every summary a device uploads (:func:`record`), with the backend doing the
compare-and-swap so that any replica may take any summary. Every figure of a summary is a count on fixed bins, so
folding summaries into one loses nothing the gates read: :mod:`.aggregate` adds the merged records exactly as it
would add every summary. Bins that differ (an agent with other latency buckets, a build with other input edges)
cannot be added: the newer replaces the older, as Prometheus does when a histogram's buckets change.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.cluster import Backend

_KEYS = ("apiVersion", "kind", "device", "model", "version")
"""What the backend's key already says: not stored in the record."""


STREAMS_KEPT = 4
"""Telemetry streams remembered per record (a device wiped and enrolled again starts a new one)."""


class DuplicateSummary(Exception):
    """A summary whose stream and sequence the record has counted already."""


def merge(stored: Mapping[str, Any] | None, summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` folded into ``stored`` (None: the first one); :class:`DuplicateSummary` for one counted before."""
    stored = stored or {}
    streams = dict(stored.get("streams") or {})
    stream, sequence = summary.get("stream"), summary.get("sequence")
    if stream and sequence:
        if int(sequence) <= int(streams.get(stream, 0)):
            raise DuplicateSummary(f"{stream}#{sequence}")
        streams.pop(stream, None)
        streams[stream] = int(sequence)
        streams = dict(list(streams.items())[-STREAMS_KEPT:])
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
        "summaries": int(stored.get("summaries", 0)) + 1,
        **({"streams": streams} if streams else {}),
        "updated": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }


def record(backend: Backend, device: str, summary: Mapping[str, Any]) -> bool | str:
    """Fold ``summary`` (validated, naming ``device``) into the backend's record; False when ``device`` has no
    assignment of its model (nothing is stored: a summary of a model the fleet no longer assigns gates nothing),
    ``"duplicate"`` when the record counted this stream and sequence already (nothing is stored again)."""
    body = {k: v for k, v in summary.items() if k not in _KEYS}
    try:
        return backend.record_telemetry(device, summary["model"], summary["version"],
                                        lambda stored: merge(stored, body))  # fmt: skip
    except DuplicateSummary:
        return "duplicate"


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


def _add(left: list[int], right: list[int]) -> list[int]:
    if len(left) != len(right):
        return [int(c) for c in right] if right else [int(c) for c in left]
    return [int(a) + int(b) for a, b in zip(left, right, strict=True)]
