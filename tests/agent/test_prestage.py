"""Pre-staging: a new version is downloaded, verified and tested as soon as it is assigned, and switched to
only inside the maintenance window (in the device's time zone), without downloading it again."""

from __future__ import annotations

from datetime import UTC, datetime

from reconciler.plan.window import Window

from ..device_fleet import MODEL, Fleet
from .test_agent import serving

NIGHT = Window(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"), "02:00", "03:00", "Asia/Tokyo")  # 17:00-18:00 UTC


def test_staged_outside_the_window_switched_inside_it(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    agent = fleet.agent()
    now = {"t": datetime(2026, 12, 3, 12, 0, tzinfo=UTC)}
    agent.clock = lambda: now["t"]
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()
    fleet.assign("factory-1", "2.0.0", window=NIGHT)
    status = agent.cycle()[MODEL]
    assert status.phase == "Staged" and "Asia/Tokyo" in status.message
    assert serving(fleet, agent.data_dir) == "1.0.0"
    served = fleet.server.bytes_served
    assert agent.cycle()[MODEL].phase == "Staged"  # still outside: nothing new fetched

    now["t"] = datetime(2026, 12, 3, 17, 30, tzinfo=UTC)  # 02:30 in Tokyo
    status = agent.cycle()[MODEL]
    assert (status.phase, status.installed_version, status.previous_version) == ("Healthy", "2.0.0", "1.0.0")
    assert status.message == "2.0.0 passed its trial"  # switched in the window, then marked good (trial 0 s)
    assert fleet.server.bytes_served == served
    assert serving(fleet, agent.data_dir) == "2.0.0"
