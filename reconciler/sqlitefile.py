"""One SQLite file that several processes share: the local backend's ``fleet.sqlite`` and the device registry.

Outside the layered packages on purpose: the backend (``reconciler.cluster``) and the registry
(``reconciler.deviceapi``) both keep state this way and must fail alike. WAL lets readers go on while a writer
commits; a busy timeout makes a writer wait for another process instead of failing at once; every
check-then-write is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken before the first read, so two
processes cannot both read "unused" and both write "used"). The connection is shared by a process's threads
behind one lock. A locked file past the timeout is temporary; any other error (a read-only or full disk, a
foreign or corrupt file) needs a person: the caller names the two error types, so that its callers see its own.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from reconciler.errors import PermanentError, TemporaryError

_T = TypeVar("_T")
BUSY_TIMEOUT_SECONDS = 30


class SQLiteFile:
    def __init__(
        self, path: Path, schema: str, what: str, synchronous: str = "NORMAL",
        temporary: type[TemporaryError] = TemporaryError, permanent: type[PermanentError] = PermanentError,
    ) -> None:  # fmt: skip
        """``what``: how errors name the file ("local backend"). ``synchronous``: FULL where a committed write
        must survive a power cut (a spent token), NORMAL where losing the last instant is harmless."""
        self.path, self.what = Path(path), what
        self.temporary, self.permanent = temporary, permanent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False,
                                       isolation_level=None)  # fmt: skip
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(schema)
        except sqlite3.Error as exc:
            raise self.error(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def read(self, sql: str, args: tuple | dict = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self.error(exc) from exc

    def write(self, sql: str, args: tuple | dict = ()) -> int:
        """One statement in its own transaction; returns the rows it changed."""
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.Error as exc:
                raise self.error(exc) from exc

    def transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(connection)`` inside ``BEGIN IMMEDIATE``: committed when it returns, rolled back when it raises
        (its own exceptions pass through, SQLite's become the caller's error types)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self.error(exc) from exc
            try:
                result = work(self._db)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self.error(exc) from exc
                raise
            return result

    def error(self, exc: sqlite3.Error) -> Exception:
        message = f"{self.what} {self.path}: {exc}"
        if isinstance(exc, sqlite3.OperationalError) and any(w in str(exc) for w in ("locked", "busy")):
            return self.temporary(message, retry_after=1.0)
        return self.permanent(message)
