"""Maintenance windows: may a device switch models at this moment, in its own time zone?

Pure (no I/O; the caller passes the time). A window has weekdays and a start and end time of day in the
device's local time; an end earlier than the start means the window crosses midnight, and a window that
started on an allowed day may run into the next morning. The time zone is the device's own (its timezone
label) when it has one, else the window's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Window:
    days: tuple[str, ...]
    start: str
    end: str
    timezone: str

    def to_json(self) -> dict:
        return {"days": list(self.days), "start": self.start, "end": self.end, "timezone": self.timezone}

    @classmethod
    def from_json(cls, body: Mapping | None) -> Window | None:
        if not body:
            return None
        return cls(
            tuple(body.get("days", DAYS)), str(body["start"]), str(body["end"]), str(body.get("timezone", "UTC"))
        )

    def is_open(self, now: datetime) -> bool:
        """Whether ``now`` (timezone-aware) falls inside the window in the window's time zone."""
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        local = now.astimezone(zone)
        start, end = _clock(self.start), _clock(self.end)
        today = DAYS[local.weekday()]
        yesterday = DAYS[(local - timedelta(days=1)).weekday()]
        clock = local.time()
        if start <= end:
            return today in self.days and start <= clock < end
        # Crosses midnight: the evening part belongs to today, the morning part to the day before.
        return (today in self.days and clock >= start) or (yesterday in self.days and clock < end)


def window_for(spec_window, labels: Mapping[str, str]) -> Window | None:
    """The window of a rollout's spec, in this device's time zone (its label, else the spec's default)."""
    if spec_window is None:
        return None
    zone = labels.get(spec_window.timezone_label) or spec_window.timezone
    return Window(tuple(spec_window.days), spec_window.start, spec_window.end, zone)


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))
