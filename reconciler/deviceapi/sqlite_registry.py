"""The device registry in one SQLite file: the local backend's (``STATE_DIR/devices.sqlite``).

Several processes open the file at once (WAL, a busy timeout, ``synchronous=FULL``: a redeemed token must stay
redeemed after a power cut); every check-then-write is one ``BEGIN IMMEDIATE`` transaction, so two replicas
redeeming the same token cannot both win, and a token is spent in the same transaction that records the
certificate it bought.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from reconciler.sqlitefile import SQLiteFile

from .identity import IdentityError, Reason, as_utc, rfc3339
from .registry import (
    DeviceRecord,
    TokenRecord,
    check_spend,
    check_token_request,
    issued_stamp,
    new_secret,
    new_token_id,
    token_parts,
)

__all__ = ["SQLiteRegistry"]

_T = TypeVar("_T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    enrolled_at TEXT,
    serial TEXT,          -- hex: serials have up to 159 bits, more than an SQLite integer holds
    not_after TEXT,
    issued_at TEXT,
    revoked_at TEXT,
    previous_serial TEXT  -- the certificate the current one replaced: accepted for a short grace only
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    device TEXT,
    labels TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    used_by TEXT
);
"""


class SQLiteRegistry:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = SQLiteFile(self.path, _SCHEMA, "device registry", "FULL")
        self._file.transaction(self._migrate)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Add the columns a registry written by an older controller lacks (the table itself is never rebuilt)."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(devices)")}
        if "previous_serial" not in columns:
            db.execute("ALTER TABLE devices ADD COLUMN previous_serial TEXT")

    def close(self) -> None:
        self._file.close()

    # --- tokens ------------------------------------------------------------------------------------

    def create_token(
        self,
        lifetime: timedelta,
        now: datetime,
        device: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """A new one-time token ``ID.SECRET``, shown only here. A token naming ``device`` reserves the name (a
        token that names no device cannot take it) and is the only way to enrol an existing device again."""
        check_token_request(lifetime, device, labels)
        now = as_utc(now)
        secret, digest = new_secret()
        body = json.dumps(dict(labels or {}), sort_keys=True)

        def create(db: sqlite3.Connection) -> str:
            if device is not None:
                row = db.execute("SELECT revoked_at FROM devices WHERE name = ?", (device,)).fetchone()
                if row is not None and row[0] is not None:
                    raise IdentityError(Reason.DEVICE_REVOKED, f"device {device} was revoked at {row[0]}")
                db.execute("INSERT INTO devices (name, labels) VALUES (?, '{}') ON CONFLICT(name) DO NOTHING",
                           (device,))  # fmt: skip
            while True:
                token_id = new_token_id()
                inserted = db.execute(
                    "INSERT INTO tokens (id, secret_sha256, device, labels, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                    (token_id, digest, device, body, rfc3339(now), rfc3339(now + lifetime)),
                ).rowcount
                if inserted:
                    return f"{token_id}.{secret}"

        return self._transaction(create)

    def redeem(self, token: str, device: str, now: datetime) -> TokenRecord:
        """Spend ``token`` for ``device``: once, atomically across every process that shares the file. Also
        reserves the device's name, so two new devices cannot enrol under one name with two tokens."""
        return self._transaction(lambda db: self._spend(db, token, device, now))

    @staticmethod
    def _spend(db: sqlite3.Connection, token: str, device: str, now: datetime) -> TokenRecord:
        token_id, digest = token_parts(token)
        now = as_utc(now)
        row = db.execute("SELECT secret_sha256, device, labels, created_at, expires_at, used_at, used_by "
                         "FROM tokens WHERE id = ?", (token_id,)).fetchone()  # fmt: skip
        record = None
        if row is not None:
            _, named, labels, created_at, expires_at, used_at, used_by = row
            record = TokenRecord(token_id, named, json.loads(labels), expires_at, used_at, used_by, created_at)
        existing = db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE name = ?", (device,)).fetchone()
        check_spend(token_id, record, row[0] if row else None, digest, device, _device(existing) if existing else None,
                    now)  # fmt: skip
        assert record is not None
        stamp = rfc3339(now)
        db.execute("UPDATE tokens SET used_at = ?, used_by = ? WHERE id = ? AND used_at IS NULL",
                   (stamp, device, token_id))  # fmt: skip
        db.execute("INSERT INTO devices (name, labels) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                   (device, json.dumps(dict(record.labels), sort_keys=True)))  # fmt: skip
        return TokenRecord(token_id, record.device, record.labels, record.expires_at, stamp, device, record.created_at)

    def tokens(self) -> list[TokenRecord]:
        rows = self._read("SELECT id, device, labels, expires_at, used_at, used_by, created_at FROM tokens "
                          "ORDER BY created_at, id")  # fmt: skip
        return [TokenRecord(i, d, json.loads(labels), e, u, b, c) for i, d, labels, e, u, b, c in rows]

    # --- devices -----------------------------------------------------------------------------------

    def record_certificate(
        self, device: str, serial: int, not_after: datetime, labels: Mapping[str, str] | None, now: datetime
    ) -> None:
        """Make a newly issued certificate the device's current one. ``labels`` None keeps the device's labels
        (a renewal). Of two certificates issued at once (two replicas renewing), the later one stays current."""
        self._transaction(lambda db: self._record(db, device, serial, not_after, labels, now))

    def redeem_and_record(
        self, token: str, device: str, serial: int, not_after: datetime, now: datetime
    ) -> TokenRecord:
        """Spend ``token`` and make the certificate issued with it the device's current one, in one transaction:
        a failure or a crash in between leaves the token unspent, so the device can try again."""

        def both(db: sqlite3.Connection) -> TokenRecord:
            spent = self._spend(db, token, device, now)
            self._record(db, device, serial, not_after, dict(spent.labels) if spent.device is None else None, now)
            return spent

        return self._transaction(both)

    @staticmethod
    def _record(
        db: sqlite3.Connection, device: str, serial: int, not_after: datetime, labels: Mapping[str, str] | None,
        now: datetime,
    ) -> None:  # fmt: skip
        now = as_utc(now)
        values = {
            "name": device,
            "labels": json.dumps(dict(labels), sort_keys=True) if labels is not None else None,
            "now": rfc3339(now),
            "serial": f"{serial:x}",
            "not_after": rfc3339(not_after),
            "issued": issued_stamp(now),
        }
        db.execute(
            "INSERT INTO devices (name, labels, enrolled_at, serial, not_after, issued_at) "
            "VALUES (:name, COALESCE(:labels, '{}'), :now, :serial, :not_after, :issued) "
            "ON CONFLICT(name) DO UPDATE SET labels = COALESCE(:labels, devices.labels), "
            "enrolled_at = COALESCE(devices.enrolled_at, excluded.enrolled_at), previous_serial = devices.serial, "
            "serial = excluded.serial, not_after = excluded.not_after, issued_at = excluded.issued_at "
            "WHERE devices.issued_at IS NULL OR devices.issued_at <= excluded.issued_at",
            values,
        )

    def revoke(self, device: str, now: datetime) -> bool:
        """Refuse every certificate of ``device`` from now on, and any token for it; False when unknown. The
        first revocation's time is kept."""
        sql = "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?) WHERE name = ?"
        stamp = rfc3339(as_utc(now))
        return bool(self._transaction(lambda db: db.execute(sql, (stamp, device)).rowcount))

    def device(self, name: str, fresh: bool = False) -> DeviceRecord | None:
        """Every read is fresh: the file is shared, there is no cache."""
        rows = self._read(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE name = ?", (name,))
        return _device(rows[0]) if rows else None

    def devices(self) -> list[DeviceRecord]:
        return [_device(row) for row in self._read(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY name")]

    # --- internals ---------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return self._file.transaction(work)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._file.read(sql, args)


_DEVICE_COLUMNS = "name, labels, enrolled_at, serial, not_after, revoked_at, issued_at, previous_serial"


def _device(row: tuple) -> DeviceRecord:
    name, labels, enrolled_at, serial, not_after, revoked_at, issued_at, previous = row
    return DeviceRecord(name, json.loads(labels), enrolled_at, int(serial, 16) if serial else None, not_after,
                        revoked_at, issued_at, int(previous, 16) if previous else None)  # fmt: skip
