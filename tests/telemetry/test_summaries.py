"""A device's telemetry stored merged, per device and model version, in both backends: the merged record gates
exactly as every summary kept would (the sums are the same), a backend keeps three versions per assignment, and
concurrent writers (two device API replicas) lose no summary: SQLite transactions locally, compare-and-swap on the
ModelAssignment's resourceVersion on a real API server."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from reconciler.cluster import LocalBackend, kubernetes_backend
from reconciler.plan import Desired
from reconciler.telemetry.aggregate import aggregate
from reconciler.telemetry.summaries import merge, record

_runs = itertools.count()


def summary(device: str, version: str = "1.0.0", requests: int = 10, errors: int = 1, **extra) -> dict:
    return {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "TelemetrySummary", "device": device,
            "model": "detector", "version": version, "requests": requests, "errors": errors,
            "latencyMs": {"buckets": [5.0, 10.0, "+Inf"], "counts": [requests - 2, 2, 0], "p50": 5.0, "p95": 10.0,
                          "p99": 10.0},
            "predictions": [requests - errors, errors], "inputs": {"mean": {"edges": [0.0, 1.0],
                                                                             "counts": [1, requests - 2, 1]}},
            **extra}  # fmt: skip


def assignment(device: str) -> Desired:
    return Desired(
        device=device,
        model="detector",
        version="1.0.0",
        profile="cortex-a",
        rollout="detector-1",
        artifact=None,
        in_rollout=True,
    )


def test_merged_records_gate_as_every_summary_would():
    sent = [summary("cam-1", requests=n, errors=n // 5) for n in (10, 20, 40)] + [summary("cam-2", requests=7)]
    stored: dict[str, dict] = {}
    for item in sent:
        stored[item["device"]] = {**merge(stored.get(item["device"]), item), "device": item["device"],
                                  "model": "detector", "version": "1.0.0"}  # fmt: skip
    every, merged = aggregate(sent, "detector", "1.0.0"), aggregate(stored.values(), "detector", "1.0.0")
    assert (merged.requests, merged.errors, merged.latency, merged.predictions, merged.devices) == (
        every.requests, every.errors, every.latency, every.predictions, every.devices)  # fmt: skip
    assert merged.latency_percentile(95) == every.latency_percentile(95)
    assert stored["cam-1"]["summaries"] == 3 and stored["cam-1"]["inputs"]["mean"]["counts"] == [3, 64, 3]


def test_bins_that_changed_are_replaced_not_added():
    first = merge(None, summary("cam-1"))
    rebucketed = summary("cam-1", latencyMs={"buckets": [1.0, "+Inf"], "counts": [4, 6]})
    assert merge(first, rebucketed)["latencyMs"] == {"buckets": [1.0, "+Inf"], "counts": [4, 6]}
    kept = merge(first, {**summary("cam-1"), "inputs": {}})  # an input one summary lacks stays as it was
    assert kept["inputs"]["mean"]["counts"] == first["inputs"]["mean"]["counts"]


def test_the_local_backend_keeps_merged_summaries_of_assigned_models_only(tmp_path: Path):
    backend = LocalBackend(tmp_path)
    backend.apply([assignment("cam-1")])
    assert record(backend, "cam-1", summary("cam-1"))
    assert record(backend, "cam-1", summary("cam-1"))
    assert not record(backend, "cam-2", summary("cam-2"))  # no assignment: nothing stored
    assert not record(backend, "cam-1", {**summary("cam-1"), "model": "other"})
    [stored] = backend.telemetry()
    assert (stored["device"], stored["version"], stored["requests"], stored["summaries"]) == ("cam-1", "1.0.0", 20, 2)
    for version in ("2.0.0", "3.0.0", "4.0.0"):
        record(backend, "cam-1", summary("cam-1", version=version))
    assert [s["version"] for s in backend.telemetry()] == ["2.0.0", "3.0.0", "4.0.0"]  # the oldest went
    backend.delete([("cam-1", "detector")])
    assert backend.telemetry() == []


def concurrently(writers: list, rounds: int, device: str) -> None:
    def write(backend) -> None:
        for _ in range(rounds):
            assert record(backend, device, summary(device, requests=3, errors=0))

    threads = [threading.Thread(target=write, args=(backend,)) for backend in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_two_local_writers_lose_no_summary(tmp_path: Path):
    writers = [LocalBackend(tmp_path), LocalBackend(tmp_path)]
    writers[0].apply([assignment("cam-1")])
    concurrently(writers, 25, "cam-1")
    [stored] = writers[0].telemetry()
    assert (stored["summaries"], stored["requests"]) == (50, 150)


@pytest.mark.kube
def test_two_replicas_on_one_api_server_lose_no_summary(kubeconfig: Path):
    namespace = f"telemetry{next(_runs)}-{int(time.time()) % 100000}"
    replicas = [kubernetes_backend(kubeconfig, namespace) for _ in range(2)]
    replicas[0].install()
    replicas[0].apply([assignment("cam-1")])
    for replica in replicas:
        replica.start_watches()
    try:
        concurrently(replicas, 15, "cam-1")
        leader = kubernetes_backend(kubeconfig, namespace)
        leader.sync()  # what a controller replica reads, from the API server
        [stored] = leader.telemetry()
        assert (stored["device"], stored["summaries"], stored["requests"]) == ("cam-1", 30, 90)
        assert leader.statuses()[("cam-1", "detector")].extra == {}  # telemetry is no part of a report
        assert not record(replicas[0], "cam-2", summary("cam-2"))
        for version in ("2.0.0", "3.0.0", "4.0.0"):
            assert record(replicas[1], "cam-1", summary("cam-1", version=version))
        leader.sync()
        assert sorted(s["version"] for s in leader.telemetry()) == ["2.0.0", "3.0.0", "4.0.0"]
    finally:
        for replica in replicas:
            replica.stop_watches()


def test_a_summary_counted_before_is_refused_by_its_stream_and_sequence():
    from reconciler.telemetry.summaries import STREAMS_KEPT, DuplicateSummary

    stored = merge(None, summary("cam-1", stream="a" * 32, sequence=1))
    stored = merge(stored, summary("cam-1", stream="a" * 32, sequence=2))
    for again in (1, 2):
        with pytest.raises(DuplicateSummary):
            merge(stored, summary("cam-1", stream="a" * 32, sequence=again))
    restarted = merge(stored, summary("cam-1", stream="b" * 32, sequence=1))  # a wiped device: a new stream
    assert restarted["requests"] == 30 and restarted["streams"] == {"a" * 32: 2, "b" * 32: 1}
    for i in range(STREAMS_KEPT + 2):
        restarted = merge(restarted, summary("cam-1", stream=f"{i:032x}", sequence=1))
    assert len(restarted["streams"]) == STREAMS_KEPT  # bounded
    assert merge(stored, summary("cam-1"))["requests"] == 30  # without a sequence (older agents): always counted
