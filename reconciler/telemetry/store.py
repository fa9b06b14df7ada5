"""The controller's telemetry: device summaries in time buckets, kept for a bounded time, read by time window.

Who calls it: the device API (:meth:`TelemetryStore.record`, once per summary a device uploads, from any replica
sharing the state directory) and the controller (:meth:`TelemetryStore.window` per rollout each cycle, and
:meth:`TelemetryStore.compact` once a cycle). One SQLite file in the state directory, not the cluster: telemetry
changes with every upload, and etcd is no place for a write per device per minute.

Summaries fold into one row per device, model, version and bucket (:func:`summaries.merge`: every figure is a
count on fixed bins, so a bucket gates exactly as the summaries in it would). Buckets are an hour wide while
they are recent and are folded into day-wide ones after ``HOURLY_FOR``; rows older than the retention go. So the
store holds at most about ``48 + retention days`` rows per device and version reported, however often devices
upload, and a rollout's gates read only the buckets of their window: the cost of a cycle does not grow with
the days kept.

A summary counts once: each device's telemetry stream (its queue's id) and the sequence number last counted are
kept, and a summary at or below it is a duplicate. A summary is filed under the time its interval ended (the
agent's clock, never later than its arrival: a device offline for a day fills the hours it measured), and one
older than the retention is not stored.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.sqlitefile import SQLiteFile

from .summaries import merge

__all__ = ["DAY", "HOUR", "HOURLY_FOR", "TELEMETRY_FILE", "Compaction", "TelemetryStore"]

TELEMETRY_FILE = "telemetry.sqlite"
"""In the controller's state directory."""
HOUR, DAY = 3600, 86400
HOURLY_FOR = timedelta(days=2)
"""Hour-wide buckets younger than this stay hour-wide; older ones are folded into their day."""
STREAMS_KEPT = 4
"""Telemetry streams remembered per device (a device wiped and enrolled again starts a new one)."""
LOG_LINES_KEPT = 5000
"""Uploaded log lines kept per device (``edgectl debug`` sessions); older ones go."""
FOLD_PER_CALL = 20_000
"""Hour-wide rows folded by one compaction at most (an hour of 20,000 devices)."""
"""Telemetry streams remembered per device (a device wiped and enrolled again starts a new one)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    start INTEGER NOT NULL,   -- Unix seconds, a multiple of width
    width INTEGER NOT NULL,   -- seconds: an hour or a day
    device TEXT NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (model, version, start, width, device)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS buckets_by_age ON buckets (width, start);
CREATE TABLE IF NOT EXISTS device_logs (
    device TEXT NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    level TEXT NOT NULL,
    logger TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_logs_by_device ON device_logs (device, seq);
CREATE TABLE IF NOT EXISTS streams (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    seen INTEGER NOT NULL,
    PRIMARY KEY (device, stream)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Compaction:
    folded: int
    """Hour-wide rows folded into day-wide ones."""
    expired: int
    """Rows (and device streams) past the retention, removed."""
    more: bool = False
    """Rows are left to fold (the call's limit was reached): the next call goes on."""


class TelemetryStore:
    def __init__(self, path: Path, retention: timedelta = timedelta(days=30)) -> None:
        if retention < timedelta(days=1):
            raise ValueError("telemetry retention must be at least a day")
        self.path, self.retention = Path(path), retention
        self._file = SQLiteFile(self.path, _SCHEMA, "telemetry store")

    def close(self) -> None:
        self._file.close()

    def record(self, device: str, summary: Mapping[str, Any], received: datetime) -> bool | str:
        """Fold a validated ``summary`` of ``device`` into its bucket. True when counted; ``"duplicate"`` when its
        stream and sequence were counted before; ``"expired"`` when it ended before the retention."""
        at = _seconds(received)
        ended = _ended(summary.get("ended"))
        if ended is not None:
            at = min(at, ended)
        if at < _seconds(received) - self.retention.total_seconds():
            return "expired"
        start = int(at) // HOUR * HOUR
        body = {k: v for k, v in summary.items() if k not in _NOT_STORED}
        key = (summary["model"], summary["version"], start, HOUR, device)
        stream, sequence = summary.get("stream"), summary.get("sequence")

        def fold(db: sqlite3.Connection) -> bool | str:
            if stream and sequence:
                row = db.execute("SELECT sequence FROM streams WHERE device = ? AND stream = ?",
                                 (device, stream)).fetchone()  # fmt: skip
                if row is not None and int(sequence) <= row[0]:
                    return "duplicate"
                db.execute("INSERT INTO streams VALUES (?, ?, ?, ?) ON CONFLICT(device, stream) DO UPDATE SET "
                           "sequence = excluded.sequence, seen = excluded.seen",
                           (device, stream, int(sequence), int(_seconds(received))))  # fmt: skip
                db.execute("DELETE FROM streams WHERE device = ? AND stream NOT IN (SELECT stream FROM streams "
                           "WHERE device = ? ORDER BY seen DESC LIMIT ?)", (device, device, STREAMS_KEPT))  # fmt: skip
            row = db.execute(_ONE, key).fetchone()
            db.execute(_UPSERT, (*key, _dump(merge(json.loads(row[0]) if row else None, body))))
            return True

        return self._file.transaction(fold)

    def window(self, model: str, versions: Collection[str] | None, since: datetime) -> list[dict[str, Any]]:
        """Every bucket of ``model`` at ``versions`` (None: at any) that overlaps [``since``, now), each a summary
        naming its ``device``, ``model`` and ``version`` (what :func:`reconciler.telemetry.aggregate.aggregate`
        adds up). The window is widened to whole buckets: a bucket is read whole if any of it is inside."""
        if versions is not None and not versions:
            return []
        start = int(_seconds(since))
        chosen = "" if versions is None else f"AND version IN ({','.join('?' * len(versions))}) "
        # A bucket overlaps when it ends after `since` (start > since - width); `start > since - DAY` bounds the
        # range scan of the primary key for both widths.
        rows = self._file.read(
            f"SELECT device, version, summary FROM buckets WHERE model = ? {chosen}"
            "AND start > ? - width AND start > ? ORDER BY version, start, device",
            (model, *(versions or ()), start, start - DAY),
        )
        return [{**json.loads(summary), "device": device, "model": model, "version": version}
                for device, version, summary in rows]  # fmt: skip

    def compact(self, now: datetime, limit: int = FOLD_PER_CALL) -> Compaction:
        """Fold hour-wide buckets older than ``HOURLY_FOR`` into their day's bucket (the oldest first, at most
        ``limit`` rows a call, so that a store catching up after downtime costs each cycle a bounded share), and drop
        what is past the retention. In steady state a call folds what aged since the last: about one hour's rows
        at each hour's turn; a day's bucket fills an hour at a time, and every summary is in exactly one row."""
        seconds = int(_seconds(now))
        fold_before = (seconds - int(HOURLY_FOR.total_seconds())) // HOUR * HOUR
        expire_before = seconds - int(self.retention.total_seconds())

        def work(db: sqlite3.Connection) -> Compaction:
            rows = db.execute("SELECT model, version, start, device, summary FROM buckets WHERE width = ? AND "
                              "start < ? ORDER BY start LIMIT ?", (HOUR, fold_before, limit)).fetchall()  # fmt: skip
            days: dict[tuple[str, str, int, str], dict[str, Any] | None] = {}
            for model, version, start, device, summary in rows:
                key = (model, version, start // DAY * DAY, device)
                if key not in days:
                    stored = db.execute(_ONE, (model, version, key[2], DAY, device)).fetchone()
                    days[key] = json.loads(stored[0]) if stored else None
                days[key] = merge(days[key], json.loads(summary))
            db.executemany(_UPSERT, [(m, v, s, DAY, d, _dump(body)) for (m, v, s, d), body in days.items()])
            db.executemany("DELETE FROM buckets WHERE model = ? AND version = ? AND start = ? AND width = ? AND "
                           "device = ?", [(m, v, s, HOUR, d) for m, v, s, d, _ in rows])  # fmt: skip
            expired = sum(db.execute("DELETE FROM buckets WHERE width = ? AND start <= ?",
                                     (width, expire_before - width)).rowcount for width in (HOUR, DAY))  # fmt: skip
            db.execute("DELETE FROM streams WHERE seen < ?", (expire_before,))
            more = len(rows) == limit
            return Compaction(len(rows), expired, more)

        return self._file.transaction(work)

    def record_logs(self, device: str, lines: list[Mapping[str, Any]]) -> int:
        """Keep an agent's uploaded log lines (the newest ``LOG_LINES_KEPT`` per device); how many were added."""

        def add(db: sqlite3.Connection) -> int:
            db.executemany("INSERT INTO device_logs (device, time, level, logger, message) VALUES (?, ?, ?, ?, ?)",
                           [(device, str(line["time"]), str(line["level"]), str(line["logger"]),
                             str(line["message"])) for line in lines])  # fmt: skip
            db.execute("DELETE FROM device_logs WHERE device = ? AND seq <= (SELECT seq FROM device_logs WHERE "
                       "device = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)", (device, device, LOG_LINES_KEPT))  # fmt: skip
            return len(lines)

        return self._file.transaction(add)

    def device_logs(self, device: str, limit: int = LOG_LINES_KEPT) -> list[dict[str, str]]:
        """The device's newest uploaded log lines, oldest first."""
        rows = self._file.read("SELECT time, level, logger, message FROM device_logs WHERE device = ? "
                               "ORDER BY seq DESC LIMIT ?", (device, limit))  # fmt: skip
        return [{"time": t, "level": lv, "logger": lg, "message": m} for t, lv, lg, m in reversed(rows)]

    def last_received(self) -> float | None:
        """Unix time the newest summary arrived (any device); None before the first."""
        [(seen,)] = self._file.read("SELECT MAX(seen) FROM streams")
        return float(seen) if seen is not None else None

    def size(self) -> tuple[int, int]:
        """Rows and bytes of summaries kept (the file is larger by SQLite's pages and indexes)."""
        [(rows, size)] = self._file.read("SELECT COUNT(*), COALESCE(SUM(LENGTH(summary)), 0) FROM buckets")
        return int(rows), int(size)


_ONE = "SELECT summary FROM buckets WHERE model = ? AND version = ? AND start = ? AND width = ? AND device = ?"
_UPSERT = ("INSERT INTO buckets VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(model, version, start, width, device) "
           "DO UPDATE SET summary = excluded.summary")  # fmt: skip
_NOT_STORED = frozenset({"apiVersion", "kind", "device", "model", "version", "stream", "sequence", "ended"})
"""What the row's key, the streams table or the bucket already say."""


def _dump(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, separators=(",", ":"))


def _seconds(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _ended(value: Any) -> float | None:
    if isinstance(value, datetime):
        return _seconds(value)
    if isinstance(value, str):
        try:
            return _seconds(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None
