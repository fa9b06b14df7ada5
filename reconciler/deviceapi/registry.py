"""The device registry: bootstrap tokens, enrolled devices, their current certificates and revocations.

Who calls it: :mod:`.identity` (every replica of the device API, on every request) and ``edgectl device``
(tokens, revocation, listing). It holds the only state device identity has, so every replica must see the same:
one SQLite file (WAL, a busy timeout, ``synchronous=FULL``: a redeemed token must stay redeemed after a power
cut), which several processes open at once. Every check-then-write is one ``BEGIN IMMEDIATE`` transaction, so
two replicas redeeming the same token cannot both win.

Tokens are stored as SHA-256 digests of their secret part only: the file is no bearer credential, and a token
is shown once, when it is created. Timestamps are RFC 3339 in UTC; a certificate's issue time keeps
microseconds because it orders rotations.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import string
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from reconciler.errors import PermanentError, TemporaryError

from .identity import IdentityError, Reason, as_utc, rfc3339
from .protocol import NAME_PATTERN

__all__ = ["MAX_TOKEN_LIFETIME", "REGISTRY_FILE", "DeviceRecord", "DeviceRegistry", "TokenRecord"]

REGISTRY_FILE = "devices.sqlite"
"""The registry's file name in the state directory (``--state-dir``)."""

MAX_TOKEN_LIFETIME = timedelta(days=7)
"""A bootstrap token is a password that travels (an image, a provisioning script): it must not live long."""

_T = TypeVar("_T")
_ALPHABET = string.ascii_lowercase + string.digits
_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{32})$")
_NAME = re.compile(NAME_PATTERN)

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


@dataclass(frozen=True)
class DeviceRecord:
    """A device the registry knows: enrolled, or reserved by a token that names it (``serial`` None)."""

    name: str
    labels: Mapping[str, str]
    enrolled_at: str | None
    serial: int | None
    """The serial of the device's current certificate; any other one is superseded."""
    not_after: str | None
    revoked_at: str | None
    issued_at: str | None = None
    """When the current certificate was issued (microseconds: it decides which of two rotations is newer)."""
    previous_serial: int | None = None
    """The certificate the current one replaced (the only other one accepted, for a short grace)."""

    def state(self, at: datetime) -> str:
        """Revoked, Pending (reserved by a token, no certificate yet), Expired or Enrolled."""
        if self.revoked_at:
            return "Revoked"
        if self.serial is None or not self.not_after:
            return "Pending"
        return "Expired" if datetime.fromisoformat(self.not_after.replace("Z", "+00:00")) <= at else "Enrolled"


@dataclass(frozen=True)
class TokenRecord:
    id: str
    device: str | None
    """The only device this token may enrol; None: any new device, which gets ``labels``."""
    labels: Mapping[str, str]
    expires_at: str
    used_at: str | None
    used_by: str | None
    created_at: str = field(default="")


class DeviceRegistry:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _migrate(self) -> None:
        """Add the columns a registry written by an older controller lacks (the table itself is never rebuilt)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}
        if "previous_serial" not in columns:
            self._db.execute("ALTER TABLE devices ADD COLUMN previous_serial TEXT")

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> DeviceRegistry:
        return cls(Path(state_dir) / REGISTRY_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
        if not timedelta(0) < lifetime <= MAX_TOKEN_LIFETIME:
            raise ValueError(f"a token must expire within {MAX_TOKEN_LIFETIME.days} days")
        if device is not None and labels:
            raise ValueError("a token for a named device carries no labels (the device keeps its own)")
        if device is not None and not _NAME.fullmatch(device):
            raise ValueError(f"{device!r} is not a device name (a DNS subdomain name)")
        now = as_utc(now)
        secret = _random(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        body = json.dumps(dict(labels or {}), sort_keys=True)

        def create(db: sqlite3.Connection) -> str:
            if device is not None:
                row = db.execute("SELECT revoked_at FROM devices WHERE name = ?", (device,)).fetchone()
                if row is not None and row[0] is not None:
                    raise IdentityError(Reason.DEVICE_REVOKED, f"device {device} was revoked at {row[0]}")
                db.execute("INSERT INTO devices (name, labels) VALUES (?, '{}') ON CONFLICT(name) DO NOTHING",
                           (device,))  # fmt: skip
            while True:
                token_id = _random(6)
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
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise IdentityError(Reason.TOKEN_UNKNOWN, "unknown bootstrap token")
        token_id, secret = match.groups()
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = as_utc(now)
        row = db.execute("SELECT secret_sha256, device, labels, created_at, expires_at, used_at, used_by "
                         "FROM tokens WHERE id = ?", (token_id,)).fetchone()  # fmt: skip
        # The same answer for an unknown id and a wrong secret: the id alone must not be worth probing.
        if row is None or not hmac.compare_digest(row[0], digest):
            raise IdentityError(Reason.TOKEN_UNKNOWN, "unknown bootstrap token")
        _, named, labels, created_at, expires_at, used_at, used_by = row
        if used_at is not None:
            raise IdentityError(Reason.TOKEN_USED, f"token {token_id} was used at {used_at} (by {used_by})")
        if datetime.fromisoformat(expires_at) <= now:
            raise IdentityError(Reason.TOKEN_EXPIRED, f"token {token_id} expired at {expires_at}")
        if named is not None and named != device:
            raise IdentityError(Reason.TOKEN_DEVICE_MISMATCH, f"token {token_id} is for device {named}, "
                                f"not {device}")  # fmt: skip
        existing = db.execute("SELECT revoked_at FROM devices WHERE name = ?", (device,)).fetchone()
        if existing is not None and existing[0] is not None:
            raise IdentityError(Reason.DEVICE_REVOKED, f"device {device} was revoked at {existing[0]}")
        if existing is not None and named is None:
            raise IdentityError(Reason.DEVICE_EXISTS, f"device {device} exists; enrolling it again needs a "
                                f"token made for it (edgectl device token create --device {device})")  # fmt: skip
        stamp = rfc3339(now)
        db.execute("UPDATE tokens SET used_at = ?, used_by = ? WHERE id = ? AND used_at IS NULL",
                   (stamp, device, token_id))  # fmt: skip
        db.execute("INSERT INTO devices (name, labels) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                   (device, labels))  # fmt: skip
        return TokenRecord(token_id, named, json.loads(labels), expires_at, stamp, device, created_at)

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
            "issued": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
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

    def device(self, name: str) -> DeviceRecord | None:
        rows = self._read(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE name = ?", (name,))
        return _device(rows[0]) if rows else None

    def devices(self) -> list[DeviceRecord]:
        return [_device(row) for row in self._read(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY name")]

    # --- internals ---------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            try:
                result = work(self._db)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise
            return result

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> Exception:
        """Another process holding the file past the busy timeout is temporary; anything else (a read-only or
        full disk, a foreign file) needs a person."""
        message = f"device registry {self.path}: {exc}"
        if isinstance(exc, sqlite3.OperationalError) and any(w in str(exc) for w in ("locked", "busy")):
            return TemporaryError(message, retry_after=1.0)
        return PermanentError(message)


_DEVICE_COLUMNS = "name, labels, enrolled_at, serial, not_after, revoked_at, issued_at, previous_serial"


def _device(row: tuple) -> DeviceRecord:
    name, labels, enrolled_at, serial, not_after, revoked_at, issued_at, previous = row
    return DeviceRecord(name, json.loads(labels), enrolled_at, int(serial, 16) if serial else None, not_after,
                        revoked_at, issued_at, int(previous, 16) if previous else None)  # fmt: skip


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
