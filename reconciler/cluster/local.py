"""The local backend: inventory and assignments in SQLite under a state directory, no Kubernetes needed.

Who calls it: the controller and the agents of the embedded default (``edgectl demo``, ``edgectl run
--backend local``), and tests. Several processes share one database file: SQLite's WAL mode lets agents
report while the controller reads, and every write is one short transaction. Specs carry a generation
that rises with every change, as Kubernetes' ``metadata.generation`` does, so an agent's report says which
spec it acted on.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

from reconciler.plan import Desired, Device
from reconciler.sqlitefile import SQLiteFile

from .backend import (
    EVENTS_KEPT,
    AssignmentStatus,
    Event,
    PermanentClusterError,
    StoredRollout,
    TemporaryClusterError,
    spec_from_json,
    spec_to_json,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    last_seen TEXT
);
CREATE TABLE IF NOT EXISTS assignments (
    device TEXT NOT NULL,
    model TEXT NOT NULL,
    spec TEXT NOT NULL,
    generation INTEGER NOT NULL,
    status TEXT,
    PRIMARY KEY (device, model)
);
CREATE TABLE IF NOT EXISTS rollouts (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    model TEXT,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_object ON events (kind, name);
CREATE INDEX IF NOT EXISTS events_by_time ON events (last_seen);
-- Telemetry lives in the controller's telemetry store now: a file of an older controller loses its table.
DROP TABLE IF EXISTS telemetry;
"""


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Decoded(Generic[K, V]):
    """Rows decoded once. The controller reads every device, assignment and status several times a cycle, and
    decoding their JSON into objects was most of a cycle at 100,000 devices (2.8 s of 3.5 s); a row whose text is
    what it was at the last read gives the object made then (they are frozen, so sharing them is safe). Holds the
    rows of the last read only: a removed row is forgotten at the next. Thread-safe: each read builds a new memo
    and replaces the old one whole."""

    def __init__(self, decode: Callable[[K, str], V]) -> None:
        self._decode = decode
        self._memo: tuple[dict[K, str], dict[K, V]] = {}, {}
        """The last read's texts and objects (two dicts rather than one of pairs: no pair to allocate per row)."""

    def __call__(self, rows: Iterable[tuple[K, str]]) -> dict[K, V]:
        (texts, values), new_texts, new_values = self._memo, {}, {}
        for key, text in rows:
            new_texts[key] = text
            new_values[key] = values[key] if texts.get(key) == text else self._decode(key, text)
        self._memo = new_texts, new_values
        return dict(new_values)

    def one(self, key: K, text: str) -> V:
        """One row (a device's poll), decoded unless the last read of all rows decoded this text already."""
        texts, values = self._memo
        return values[key] if texts.get(key) == text else self._decode(key, text)


class LocalBackend:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "fleet.sqlite"
        self.writes = 0
        self._devices: _Decoded[str, Device] = _Decoded(lambda name, labels: Device(name, json.loads(labels)))
        self._specs: _Decoded[tuple[str, str], Desired] = _Decoded(lambda _, spec: spec_from_json(json.loads(spec)))
        self._statuses: _Decoded[tuple[str, str], AssignmentStatus] = _Decoded(
            lambda _, status: AssignmentStatus.from_json(json.loads(status))
        )
        self._file = SQLiteFile(self.path, _SCHEMA, "local backend", "NORMAL", TemporaryClusterError,
                                PermanentClusterError)  # fmt: skip

    def close(self) -> None:
        self._file.close()

    # --- inventory ---------------------------------------------------------------------------------

    def register_device(self, name: str, labels: Mapping[str, str]) -> None:
        """Add or relabel a device (what joining a K3s cluster with node labels is on Kubernetes)."""
        self._write(
            "INSERT INTO devices (name, labels) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET labels = excluded.labels",
            (name, json.dumps(dict(labels), sort_keys=True)),
        )

    def remove_device(self, name: str) -> None:
        self._write("DELETE FROM devices WHERE name = ?", (name,))

    def sync(self, inventory: bool = True) -> None:
        """Reads go to the database every time: nothing to refresh."""

    def devices(self) -> list[Device]:
        return list(self._devices(self._read("SELECT name, labels FROM devices ORDER BY name")).values())

    # --- assignments -------------------------------------------------------------------------------

    def assignments(self) -> dict[tuple[str, str], Desired]:
        rows = self._read("SELECT device, model, spec FROM assignments")
        return self._specs(((device, model), spec) for device, model, spec in rows)

    def assignment(self, device: str, model: str) -> tuple[Desired, int] | None:
        """One spec and its generation (for agents)."""
        rows = self._read("SELECT spec, generation FROM assignments WHERE device = ? AND model = ?", (device, model))
        return (spec_from_json(json.loads(rows[0][0])), rows[0][1]) if rows else None

    def assignments_for(self, device: str) -> dict[str, tuple[Desired, int]]:
        rows = self._read("SELECT model, spec, generation FROM assignments WHERE device = ?", (device,))
        return {model: (self._specs.one((device, model), spec), generation) for model, spec, generation in rows}

    def statuses(self) -> dict[tuple[str, str], AssignmentStatus]:
        rows = self._read("SELECT device, model, status FROM assignments WHERE status IS NOT NULL")
        return self._statuses(((device, model), status) for device, model, status in rows)

    def apply(self, desired: Iterable[Desired]) -> int:
        def write(db: sqlite3.Connection) -> int:
            written = 0
            for spec in desired:
                body = json.dumps(spec_to_json(spec), sort_keys=True)
                written += db.execute(
                    "INSERT INTO assignments (device, model, spec, generation) VALUES (?, ?, ?, 1) "
                    "ON CONFLICT(device, model) DO UPDATE SET spec = excluded.spec, "
                    "generation = generation + 1 WHERE spec != excluded.spec",
                    (spec.device, spec.model, body),
                ).rowcount
            return written

        written = self._file.transaction(write)
        self.writes += written
        return written

    def delete(self, keys: Iterable[tuple[str, str]]) -> int:
        removed = 0
        for device, model in keys:
            removed += self._write("DELETE FROM assignments WHERE device = ? AND model = ?", (device, model))
        return removed

    def rollouts(self) -> dict[str, StoredRollout]:
        rows = self._read("SELECT name, record FROM rollouts")
        return {name: StoredRollout.from_json(json.loads(record), name) for name, record in rows}

    def forget_rollouts(self) -> int:
        """Drop every rollout record (``edgectl run --reset-state``: the state directory starts over for another
        repository, whose rollouts must not be read as its own)."""
        return self._write("DELETE FROM rollouts", ())

    def save_rollouts(self, records: Mapping[str, StoredRollout]) -> int:
        def write(db: sqlite3.Connection) -> int:
            written = 0
            for name, record in sorted(records.items()):
                body = json.dumps(record.to_json(), sort_keys=True)
                written += db.execute(
                    "INSERT INTO rollouts (name, record) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "record = excluded.record WHERE record != excluded.record",
                    (name, body),
                ).rowcount
            return written

        written = self._file.transaction(write)
        self.writes += written
        return written

    def report_status(self, device: str, model: str, status: AssignmentStatus) -> None:
        body = status.to_json()
        body.setdefault("lastSeen", datetime.now(UTC).isoformat(timespec="seconds"))
        self._write(
            "UPDATE assignments SET status = ? WHERE device = ? AND model = ?",
            (json.dumps(body, sort_keys=True), device, model),
        )
        self._write("UPDATE devices SET last_seen = ? WHERE name = ?", (body["lastSeen"], device))

    # --- events ------------------------------------------------------------------------------------

    def record_event(self, event: Event, now: datetime, again: bool = True) -> None:
        """Not counted in ``writes``: those are the fleet's state, which an unchanged cycle leaves alone."""
        stamp = now.astimezone(UTC).isoformat(timespec="seconds")
        update = "count = count + 1, last_seen = excluded.last_seen" if again else "key = key"

        def write(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                       f"{update}", (event.key, event.kind, event.name, event.model, event.type, event.reason,
                                     event.message, stamp, stamp))  # fmt: skip
            db.execute("DELETE FROM events WHERE key IN (SELECT key FROM events ORDER BY last_seen DESC "
                       "LIMIT -1 OFFSET ?)", (EVENTS_KEPT,))  # fmt: skip

        self._file.transaction(write)

    def events(self, kind: str | None = None, name: str | None = None) -> list[Event]:
        where, args = [], []
        for column, value in (("kind", kind), ("name", name)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._read("SELECT kind, name, reason, message, type, model, count, first_seen, last_seen FROM events"
                          + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY last_seen, first_seen",
                          tuple(args))  # fmt: skip
        return [Event(*row) for row in rows]

    # --- internals ---------------------------------------------------------------------------------

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._file.read(sql, args)

    def _write(self, sql: str, args: tuple) -> int:
        count = self._file.write(sql, args)
        self.writes += count
        return count
