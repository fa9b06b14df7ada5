"""Every limit of the device API server in one place, and the per-device rate limit on telemetry.

Who uses it: :mod:`.server` (it reads :class:`Limits` when it starts and asks a :class:`TokenBucket` before it
reads a telemetry body); tests build smaller limits to exercise them quickly. Pure: no I/O; time comes in as
an argument.

Body sizes and the longest long-poll are part of the protocol (:mod:`.protocol`'s ``MAX_*``), since the device
must stay under them too; what is here only the server enforces.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    idle_seconds: float = 45.0
    """A connection is closed when no complete request has arrived this long after it opened or after the last
    answer: an idle keep-alive connection, and also a client that sends its headers slowly (slowloris), since
    trickling bytes does not restart the clock (aiohttp's ``keepalive_timeout``). Longer than an agent's poll
    interval (30 s by default), so polls reuse their connection: a mutual-TLS handshake costs the server about
    4 ms of CPU, an idle connection about 80 KiB (with ``tls_read_buffer``)."""
    tls_read_buffer: int = 32 * 1024
    """Bytes asyncio reads from a TLS socket at once. Its default, 256 KiB, is allocated per connection and kept
    while the connection is open: 10,000 devices keeping their connection between polls held 2.5 GiB of buffers
    in the controller. Requests are small (a body is at most 1 MiB, read in pieces anyway), and a TLS record is
    at most 16 KiB, so 32 KiB costs nothing measurable. Process-wide (asyncio has no per-server setting)."""
    switch_seconds: float = 0.0001
    """How long a thread holding the GIL runs before a waiting one gets it (``sys.setswitchinterval``; Python's
    default is 5 ms). The event loop that serves every device gives up the GIL at each socket call and thread
    hand-off, and waited up to the whole interval each time to get it back from the controller's cycle (pure
    Python, seconds long at 10,000 devices, in the same process): polls took 2 s at p50 while a cycle ran. At
    0.1 ms they take 6 ms, and the cycle pays a few per cent. Process-wide (the ``edgectl run`` process)."""
    handshake_seconds: float = 10.0
    """The TLS handshake must finish in this time (asyncio's default is 60 s)."""
    body_seconds: float = 30.0
    """A request body (at most 1 MiB) must arrive in this time once the handler starts reading it: 408."""
    write_seconds: float = 60.0
    """Each chunk of a download must be taken by the client in this time, or the connection is dropped."""
    lingering_seconds: float = 5.0
    """After a refusal that left a body unread, it is read and discarded at most this long (then the connection
    closes), so that the client sees the answer instead of a reset."""
    shutdown_seconds: float = 2.0
    """On close, requests in flight (long-polls) get this long before they are cancelled."""
    max_line: int = 8190
    """Longest request line or header line, bytes (longer: 400 from the HTTP parser)."""
    max_headers: int = 64
    """Most header fields in one request."""
    telemetry_per_second: float = 1.0
    telemetry_burst: int = 10
    """Per device: ``telemetry_burst`` uploads at once, then ``telemetry_per_second`` (429 with Retry-After)."""
    poll_seconds: float = 1.0
    """A long-poll re-reads the device's assignments this often."""
    workers: int = 16
    """Threads for blocking calls (backend, registry, CA, ``on_telemetry``, delta making)."""
    file_workers: int = 8
    """Threads that read artifact and TUF files (kept apart, so a slow backend does not stall downloads)."""
    chunk_bytes: int = 256 * 1024
    """Download chunk (the agent reads 256 KiB chunks too)."""


class TokenBucket:
    """Per-key token buckets: ``burst`` tokens, refilled at ``rate`` per second. Thread-safe."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate, self.burst = rate, float(burst)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}
        """key -> (tokens, when they were counted)."""

    def take(self, key: str, now: float) -> float:
        """Spend one token of ``key`` at monotonic time ``now``: 0.0 when there was one, else the seconds until
        there will be one (nothing is spent)."""
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1 (clients read it as an integer)."""
    return str(max(1, math.ceil(seconds)))
