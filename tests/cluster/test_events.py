"""Events on both backends (SQLite, and core/v1 Events on a real API server): the same event again is counted on
one record, a restarted controller's ``again=False`` leaves a record alone, and events are listed per object."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.cluster import Event, LocalBackend, kubernetes_backend
from reconciler.cluster.backend import EVENTS_KEPT

_run = itertools.count()
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["local", "kubernetes"])
def backend(request, tmp_path: Path) -> Iterator[object]:
    if request.param == "local":
        local = LocalBackend(tmp_path / "state")
        yield local
        local.close()
        return
    kube = kubernetes_backend(request.getfixturevalue("kubeconfig"), f"events{next(_run)}-{int(time.time()) % 99999}")
    kube.install()
    yield kube


def test_events_are_counted_once_per_object_and_reason_and_listed_per_object(backend):
    abort = Event("Rollout", "detector-2", "Abort", "failureRate 0.3 > 0.05", "Warning")
    failed = Event("Device", "cam-1", "HealthCheckFailed", "2.0.0: golden outputs differ by 0.5", "Warning", "detector")
    backend.record_event(abort, NOW)
    backend.record_event(failed, NOW + timedelta(minutes=1))
    backend.record_event(failed, NOW + timedelta(minutes=5))  # the same failure again: one record, counted twice
    backend.record_event(failed, NOW + timedelta(minutes=9), again=False)  # a restarted controller: left alone
    other = Event("Device", "cam-1", "HealthCheckFailed", "2.1.0: runtime crashed", "Warning", "detector")
    backend.record_event(other, NOW + timedelta(minutes=7))
    every = backend.events()
    assert [(e.involved, e.reason, e.count) for e in every] == [
        ("rollout/detector-2", "Abort", 1), ("device/cam-1", "HealthCheckFailed", 2),
        ("device/cam-1", "HealthCheckFailed", 1)]  # fmt: skip
    assert every[1].first_seen.startswith("2026-03-01T12:01") and every[1].last_seen.startswith("2026-03-01T12:05")
    assert (every[1].model, every[1].type, every[1].message) == ("detector", "Warning", failed.message)
    assert [e.message for e in backend.events("Device", "cam-1")] == [failed.message, other.message]
    assert [e.reason for e in backend.events("Rollout")] == ["Abort"]
    assert backend.events("Device", "cam-2") == []


def test_the_local_backend_keeps_the_newest_events_only(tmp_path: Path):
    backend = LocalBackend(tmp_path / "state")
    for i in range(EVENTS_KEPT + 3):
        backend.record_event(Event("Device", f"cam-{i}", "Failed", "x", "Warning", "m"), NOW + timedelta(seconds=i))
    kept = backend.events()
    assert len(kept) == EVENTS_KEPT and kept[0].name == "cam-3" and kept[-1].name == f"cam-{EVENTS_KEPT + 2}"
