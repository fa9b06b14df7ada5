"""Admission, pure: how many devices may start now (maxConcurrent, rate), and in which order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.api.rollout import Rate
from reconciler.cluster import AssignmentStatus
from reconciler.plan import Desired, Plan, bucket
from reconciler.rollout.admission import admit, rate_allowance

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def desired(device: str, version: str = "2.0.0") -> Desired:
    return Desired(device, "m", version, "p", "r", None, version == "2.0.0")


def test_the_rate_grows_with_successes_stops_growing_on_failures_and_is_capped():
    rate = Rate(per_minute=5, growth_factor=2, grow_every=10, max_per_minute=30, max_failure_rate=0.1)
    assert rate_allowance(rate, None, NOW, 0, 0) == 5  # the first minute's worth at once
    since = (NOW - timedelta(seconds=30)).isoformat()
    assert rate_allowance(rate, since, NOW, 0, 0) == 2  # half a minute at 5 a minute
    assert rate_allowance(rate, since, NOW, 20, 1) == 10  # 20 Healthy: 5 * 2 * 2 a minute, half a minute
    assert rate_allowance(rate, since, NOW, 20, 5) == 2  # 5 of 25 failed: no growth
    assert rate_allowance(rate, since, NOW, 100, 0) == 15  # capped at 30 a minute
    assert rate_allowance(rate, NOW.isoformat(), NOW, 100, 0) == 0


def test_admission_starts_devices_in_the_rollouts_order_and_keeps_the_others_where_they_are():
    devices = [f"d{i}" for i in range(6)]
    plan = Plan({(d, "m"): desired(d) for d in devices})
    order = sorted(devices, key=lambda d: bucket("r", d))
    current = {(d, "m"): desired(d, "1.0.0") for d in devices}
    current[(order[0], "m")] = desired(order[0])  # started, still downloading
    statuses = {(order[0], "m"): AssignmentStatus("Downloading", installed_version="1.0.0", target_version="2.0.0")}
    result = admit(plan, "r", 3, current, statuses)
    assert (result.in_flight, result.admitted) == (3, 2)
    assert {d for (d, _), x in result.plan.desired.items() if x.version == "2.0.0"} == set(order[:3])
    assert result.waiting == frozenset(order[3:])
    assert all(result.plan.desired[(d, "m")].version == "1.0.0" for d in order[3:])  # keep what they run
    # A verdict frees the place; the rate's allowance bounds the start as well.
    statuses[(order[0], "m")] = AssignmentStatus("Failed", installed_version="1.0.0", target_version="2.0.0")
    assert admit(plan, "r", 3, current, statuses).admitted == 3
    assert admit(plan, "r", None, current, statuses, allowance=1).admitted == 1
