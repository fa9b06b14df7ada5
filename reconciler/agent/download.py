"""Resumable downloads of artifact files: HTTP Range into a partial file, checked before anyone reads it.

Who calls it: the agent, for every file of an artifact, with the length and sha256 that TUF metadata vouched
for. What edge links do to downloads (cut connections, reboots, slow links) is handled here:

- the partial file ``PARTIAL/<sha256>.part`` survives restarts; a new attempt asks for ``bytes=<size>-`` with
  ``If-Range: "<sha256>"``, so at most the chunk in flight when the cut came is fetched twice;
- a server that answers 200 instead of 206 (no Range support, or the file changed) restarts the file;
- failures are retried with exponential backoff and full jitter (a fleet reconnecting at once must not
  stampede the controller);
- the disk budget is checked before the first byte: the device keeps ``reserve_bytes`` free;
- the digest is checked over the whole file before it is moved to its destination; a mismatch deletes the
  partial file (it cannot be trusted to resume from) and is an error.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import urllib3

from reconciler.durable import move_into_place, sync_file
from reconciler.errors import TemporaryError

from .faults import crash_point


class DownloadError(TemporaryError):
    """The file could not be fetched (after retries), or its content is not what was signed. Temporary: the
    partial file is kept (or discarded when it cannot be trusted) and the next cycle tries again."""


class DiskBudgetError(DownloadError):
    """Not enough free space for the file plus the device's reserve. Temporary like its base: disk use on a
    device changes by itself (logs, other downloads), and the Failed report names the shortfall for whoever
    has to make room."""


class OversizeError(DownloadError):
    """The server sent more than the signed length: the partial file is discarded, no retry."""


@dataclass(frozen=True)
class DownloadConfig:
    chunk_bytes: int = 256 * 1024
    attempts: int = 8
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 30.0
    reserve_bytes: int = 64 * 1024 * 1024
    fsync_every_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class Downloaded:
    path: Path
    transferred: int
    """Bytes received over the network for this file (0 when it was already complete)."""
    resumed_from: int


class Downloader:
    def __init__(
        self,
        partial_dir: Path,
        config: DownloadConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
        http: urllib3.PoolManager | None = None,
    ) -> None:
        self.partial_dir = Path(partial_dir)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.config = config or DownloadConfig()
        self.sleep = sleep
        self.http = http or urllib3.PoolManager(retries=False)

    def fetch(self, url: str, length: int, sha256: str, destination: Path) -> Downloaded:
        destination = Path(destination)
        part = self.partial_dir / f"{sha256}.part"
        self._check_budget(part, length)
        received, resumed_from, failure = [0], part.stat().st_size if part.exists() else 0, ""
        for attempt in range(self.config.attempts):
            try:
                self._fetch_into(url, length, sha256, part, received)
                break
            except (urllib3.exceptions.HTTPError, OSError, DownloadError) as exc:
                if isinstance(exc, OversizeError):
                    part.unlink(missing_ok=True)
                    raise
                if isinstance(exc, DiskBudgetError):
                    raise
                failure = str(exc)
                delay = min(self.config.max_backoff_seconds, self.config.backoff_seconds * 2**attempt)
                self.sleep(random.uniform(0, delay))
        else:
            raise DownloadError(f"{url}: gave up after {self.config.attempts} attempts: {failure}")
        if _sha256(part) != sha256:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: content does not match the signed sha256 {sha256[:16]}...; discarded")
        destination.parent.mkdir(parents=True, exist_ok=True)
        move_into_place(part, destination)
        return Downloaded(destination, received[0], resumed_from)

    def _fetch_into(self, url: str, length: int, sha256: str, part: Path, counter: list[int]) -> None:
        """One attempt; ``counter[0]`` grows by every byte received, also when the attempt fails."""
        offset = part.stat().st_size if part.exists() else 0
        if offset > length:
            part.unlink()
            offset = 0
        if offset == length:
            return
        headers = {"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'} if offset else {}
        response = self.http.request(
            "GET", url, headers=headers, preload_content=False, timeout=self.config.timeout_seconds
        )
        try:
            if response.status == 200 and offset:
                offset = 0  # the server sent the whole file: start over
            elif response.status == 416:  # nothing from ``offset`` on: its copy is shorter than what was signed
                raise DownloadError(f"{url}: the server's copy ends before the signed {length} bytes "
                                    f"(HTTP 416 for the bytes from {offset})")  # fmt: skip
            elif response.status not in (200, 206):
                raise DownloadError(f"{url}: HTTP {response.status}")
            received = 0
            since_sync = 0
            with part.open("r+b" if offset else "wb") as out:
                out.seek(offset)
                out.truncate()
                for chunk in response.stream(self.config.chunk_bytes):
                    if offset + received + len(chunk) > length:
                        raise OversizeError(f"{url}: longer than the signed {length} bytes")
                    out.write(chunk)
                    if not received:
                        sync_file(out)
                        crash_point("mid-download")
                    received += len(chunk)
                    counter[0] += len(chunk)
                    since_sync += len(chunk)
                    if since_sync >= self.config.fsync_every_bytes:
                        sync_file(out)
                        since_sync = 0
                sync_file(out)
            if offset + received != length:
                raise DownloadError(f"{url}: connection ended at {offset + received} of {length} bytes")
        finally:
            response.release_conn()

    def _check_budget(self, part: Path, length: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(self.partial_dir).free
        needed = (length - have) + self.config.reserve_bytes
        if free < needed:
            raise DiskBudgetError(
                f"need {length - have} bytes plus a reserve of {self.config.reserve_bytes}, only {free} free"
            )


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
