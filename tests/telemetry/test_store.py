"""The controller's telemetry store: summaries folded per device, model, version and hour (then day), kept for a
bounded time and read by time window. A folded bucket gates exactly as the summaries in it would (the sums are
the same), compaction loses no count, a summary counts once (stream and sequence), and writers in two processes
sharing the file (two device API replicas) lose no summary. The device API stores only summaries of models the
backend assigns the device: checked on both backends."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.cluster import LocalBackend, kubernetes_backend
from reconciler.plan import Desired
from reconciler.telemetry.aggregate import aggregate
from reconciler.telemetry.store import DAY, HOUR, STREAMS_KEPT, TelemetryStore
from reconciler.telemetry.summaries import merge, recorder

_runs = itertools.count()
NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def summary(device: str, version: str = "1.0.0", requests: int = 10, errors: int = 1, **extra) -> dict:
    return {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "TelemetrySummary", "device": device,
            "model": "detector", "version": version, "requests": requests, "errors": errors,
            "latencyMs": {"buckets": [5.0, 10.0, "+Inf"], "counts": [requests - 2, 2, 0], "p50": 5.0, "p95": 10.0,
                          "p99": 10.0},
            "predictions": [requests - errors, errors], "inputs": {"mean": {"edges": [0.0, 1.0],
                                                                             "counts": [1, requests - 2, 1]}},
            **extra}  # fmt: skip


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


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


def test_a_window_reads_the_hours_it_overlaps_of_the_versions_asked(tmp_path: Path):
    store = TelemetryStore(tmp_path / "telemetry.sqlite")
    for hours_ago, requests in ((0, 10), (1, 20), (5, 40)):
        ended = NOW - timedelta(hours=hours_ago)
        assert store.record("cam-1", summary("cam-1", requests=requests, ended=stamp(ended)), NOW) is True
    store.record("cam-1", summary("cam-1", version="2.0.0", requests=7), NOW)
    store.record("cam-1", summary("cam-1", requests=3), NOW)  # no end stamp (an older agent): filed on arrival

    def requests(since: timedelta, versions=("1.0.0",)) -> int:
        return aggregate(store.window("detector", versions, NOW - since), "detector", "1.0.0").requests

    assert requests(timedelta(minutes=20)) == 13  # only the current hour (12:00-13:00) overlaps 12:10
    assert requests(timedelta(hours=1)) == 33  # 11:30 lies in the 11:00 hour: read whole
    assert requests(timedelta(hours=6)) == 73
    assert [row["version"] for row in store.window("detector", ["2.0.0"], NOW - timedelta(hours=1))] == ["2.0.0"]
    assert store.window("detector", [], NOW) == [] and store.window("other", ["1.0.0"], NOW - timedelta(days=9)) == []


def test_a_summary_is_filed_where_it_was_measured_never_in_the_future_and_never_past_the_retention(tmp_path: Path):
    store = TelemetryStore(tmp_path / "telemetry.sqlite", retention=timedelta(days=3))
    store.record("cam-1", summary("cam-1", ended=stamp(NOW + timedelta(days=2))), NOW)  # a clock running ahead
    [row] = store.window("detector", ["1.0.0"], NOW - timedelta(minutes=1))
    assert row["requests"] == 10  # filed under its arrival
    late = NOW - timedelta(days=1, hours=2)  # uploaded after a day offline
    store.record("cam-2", summary("cam-2", ended=stamp(late)), NOW)
    assert sorted(r["device"] for r in store.window("detector", ["1.0.0"], late)) == ["cam-1", "cam-2"]
    assert [r["device"] for r in store.window("detector", ["1.0.0"], NOW - timedelta(hours=2))] == ["cam-1"]
    assert store.record("cam-3", summary("cam-3", ended=stamp(NOW - timedelta(days=4))), NOW) == "expired"
    assert store.size()[0] == 2


def test_compaction_folds_hours_into_days_losing_no_count_and_the_store_stays_bounded(tmp_path: Path):
    """A month of hourly uploads from two devices: what the gates would add up is the same after every compaction,
    and the rows per device and version stay under 48 hours plus the retention's days."""
    store = TelemetryStore(tmp_path / "telemetry.sqlite", retention=timedelta(days=10))
    start = NOW - timedelta(days=30)
    for hour in range(30 * 24):
        moment = start + timedelta(hours=hour)
        for device in ("cam-1", "cam-2"):
            assert store.record(device, summary(device, requests=10 + hour % 7, errors=hour % 3), moment) is True
        if hour % 5 == 0:
            # A day-aligned window reads the same summaries before and after folding (whole days either way),
            # and the expired rows all lie before it.
            since = datetime.fromtimestamp((moment - timedelta(days=9)).timestamp() // DAY * DAY, UTC)
            before = aggregate(store.window("detector", ["1.0.0"], since), "detector", "1.0.0")
            store.compact(moment)
            after = aggregate(store.window("detector", ["1.0.0"], since), "detector", "1.0.0")
            assert (after.requests, after.errors, after.latency) == (before.requests, before.errors, before.latency)
    done = store.compact(NOW)
    rows = store._file.read("SELECT width, COUNT(*) FROM buckets GROUP BY width ORDER BY width")
    per_device = {width: count // 2 for width, count in rows}
    assert per_device[HOUR] <= 48 + 1 and per_device[DAY] <= 10 + 1
    assert done.expired == 0  # compacted all along: nothing left to expire now
    # The recent hours are still there hour by hour, whatever was folded (a window reaching into a folded day
    # would read that day whole).
    since = NOW - timedelta(hours=20)
    recent = aggregate(store.window("detector", ["1.0.0"], since), "detector", "1.0.0")
    moments = [(start + timedelta(hours=h), 10 + h % 7) for h in range(30 * 24)]
    assert recent.requests == 2 * sum(requests for moment, requests in moments if moment >= since)


def test_totals_survive_folding_exactly(tmp_path: Path):
    """Summed over all time, the store holds the same counts before and after its hours become days."""
    store = TelemetryStore(tmp_path / "telemetry.sqlite")
    sent = [summary("cam-1", requests=5 + i, errors=i % 2) for i in range(100)]
    for i, item in enumerate(sent):
        store.record("cam-1", item, NOW - timedelta(days=10) + timedelta(hours=i))
    since = NOW - timedelta(days=20)
    every = aggregate(sent, "detector", "1.0.0")
    folded_before = aggregate(store.window("detector", ["1.0.0"], since), "detector", "1.0.0")
    calls = []  # a store catching up folds a bounded share per call
    while not calls or calls[-1].more:
        calls.append(store.compact(NOW, limit=30))
    assert [(c.folded, c.more) for c in calls] == [(30, True), (30, True), (30, True), (10, False)]
    folded_after = aggregate(store.window("detector", ["1.0.0"], since), "detector", "1.0.0")
    for total in (folded_before, folded_after):
        assert (total.requests, total.errors, total.latency, total.predictions) == (
            every.requests, every.errors, every.latency, every.predictions)  # fmt: skip
    assert sum(r["summaries"] for r in store.window("detector", ["1.0.0"], since)) == 100
    store.close()
    later = TelemetryStore(tmp_path / "telemetry.sqlite", retention=timedelta(days=8))
    assert later.compact(NOW).expired > 0  # the days that ended more than 8 days ago
    kept = aggregate(later.window("detector", ["1.0.0"], since), "detector", "1.0.0").requests
    assert 0 < kept < every.requests


def test_a_summary_counted_before_is_refused_by_its_stream_and_sequence(tmp_path: Path):
    store = TelemetryStore(tmp_path / "telemetry.sqlite")
    assert store.record("cam-1", summary("cam-1", stream="a" * 32, sequence=1), NOW) is True
    assert store.record("cam-1", summary("cam-1", stream="a" * 32, sequence=2), NOW + timedelta(hours=3)) is True
    for again in (1, 2):  # sent again, even hours later (another bucket): counted once
        assert store.record("cam-1", summary("cam-1", stream="a" * 32, sequence=again), NOW + timedelta(hours=5)) == (
            "duplicate")  # fmt: skip
    assert store.record("cam-2", summary("cam-2", stream="a" * 32, sequence=1), NOW) is True  # another device
    assert store.record("cam-1", summary("cam-1", stream="b" * 32, sequence=1), NOW) is True  # a wiped device
    for i in range(STREAMS_KEPT + 2):
        store.record("cam-1", summary("cam-1", stream=f"{i:032x}", sequence=1), NOW + timedelta(minutes=i))
    assert store._file.read("SELECT COUNT(*) FROM streams WHERE device = 'cam-1'") == [(STREAMS_KEPT,)]
    assert store.record("cam-1", summary("cam-1"), NOW) is True  # without a sequence (older agents): counted
    total = aggregate(store.window("detector", ["1.0.0"], NOW - timedelta(days=1)), "detector", "1.0.0")
    assert total.requests == 10 * (2 + 1 + 1 + STREAMS_KEPT + 2 + 1)


def _write(path: str, device: str, rounds: int) -> None:
    store = TelemetryStore(Path(path))
    for _ in range(rounds):
        assert store.record(device, summary(device, requests=3, errors=0), datetime.now(UTC)) is True
    store.close()


def test_writers_in_two_processes_lose_no_summary(tmp_path: Path):
    """Two device API replicas sharing the state volume: every summary of both is counted."""
    path = str(tmp_path / "telemetry.sqlite")
    TelemetryStore(Path(path)).close()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(path, "cam-1", 40)) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert [w.exitcode for w in writers] == [0, 0]
    rows = TelemetryStore(Path(path)).window("detector", ["1.0.0"], datetime.now(UTC) - timedelta(hours=2))
    assert (sum(r["summaries"] for r in rows), sum(r["requests"] for r in rows)) == (80, 240)


def test_the_local_backend_decides_which_summaries_are_stored(tmp_path: Path):
    backend, store = LocalBackend(tmp_path), TelemetryStore(tmp_path / "telemetry.sqlite")
    backend.apply([assignment("cam-1")])
    record = recorder(store, lambda: NOW)
    assert record(backend, "cam-1", summary("cam-1")) is True
    assert record(backend, "cam-2", summary("cam-2")) is False  # no assignment: nothing stored
    assert record(backend, "cam-1", {**summary("cam-1"), "model": "other"}) is False
    assert [r["device"] for r in store.window("detector", ["1.0.0"], NOW - timedelta(hours=1))] == ["cam-1"]


@pytest.mark.kube
def test_the_kubernetes_backend_decides_which_summaries_are_stored(kubeconfig: Path, tmp_path: Path):
    namespace = f"telemetry{next(_runs)}-{int(time.time()) % 100000}"
    backend = kubernetes_backend(kubeconfig, namespace)
    backend.install()
    backend.apply([assignment("cam-1")])
    backend.start_watches()
    try:
        store = TelemetryStore(tmp_path / "telemetry.sqlite")
        record = recorder(store, lambda: NOW)
        assert record(backend, "cam-1", summary("cam-1")) is True
        assert record(backend, "cam-2", summary("cam-2")) is False
        backend.sync()
        assert backend.statuses()[("cam-1", "detector")].extra == {}  # telemetry is no part of the cluster's state
        assert len(store.window("detector", ["1.0.0"], NOW - timedelta(hours=1))) == 1
    finally:
        backend.stop_watches()
