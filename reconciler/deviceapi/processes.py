"""The device API served by several processes on its one port (``edgectl run --device-api-processes N``).

Why: the controller's process serves the device API beside the reconcile cycle, and the two share one interpreter
lock. At 10,000 devices a poll waited seconds for it (device API p50 1.8-4.5 s) while a core stood partly idle.
Helper processes listen on the same address with SO_REUSEPORT, the kernel spreads new connections over all of them,
and they share what replicas of the controller share: the state directory (the local backend's SQLite file, the
device registry, the telemetry store) and the server certificate the controller issued at its start.

What only the controller's process has is reached through it, over a Unix socket that takes the process's own
random key (:mod:`multiprocessing.connection`): a device joining a federated training (the SuperLink's control
client), where the SuperLink's Fleet API listens, and the counters of ``/metrics``, to which each helper adds what it
counted every second.

A helper ends with the controller: it waits on a pipe whose other end only the controller holds, which the kernel
closes however the controller ends (a SIGKILL included). A helper that dies is started again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from .server import DeviceAPIServer

log = logging.getLogger("edge_reconciler.deviceapi")

COUNT_SECONDS = 1.0
"""How often a helper adds its counters to the controller's."""
RESTART_BACKOFF_SECONDS = 5.0
"""A helper that died within this long of its start is started again only after it: a helper that cannot start
(its port taken by a stranger, say) does not spin."""
UPSTREAM_SECONDS = 1.0
"""How long a helper reuses the SuperLink's address before asking again (each Fleet message would ask)."""

Build = Callable[["ControllerLink"], DeviceAPIServer]
"""Makes a helper's started server in the helper's process, given its link to the controller (picklable: a
module-level function, or a ``functools.partial`` of one)."""


class DeviceAPIHelpers:
    """``count`` helper processes beside ``server`` (the controller's own device API, listening with
    ``reuse_port``)."""

    def __init__(self, count: int, server: DeviceAPIServer, build: Build, backend_factory: Callable[[], Any],
                 on_join: Callable[..., bool | str] | None = None,
                 upstream: Callable[[], tuple[str, str] | None] | None = None) -> None:  # fmt: skip
        """``on_join(backend, device, name, public_key)``: the controller's join (see :class:`DeviceAPIServer`).
        ``upstream()``: the SuperLink's Fleet address and the file of the CA that signed its certificate, or None.
        ``backend_factory``: a backend for a helper's join (one per helper, made on its first join)."""
        self.count, self.server, self.build = count, server, build
        self.backend_factory, self.on_join, self.upstream = backend_factory, on_join, upstream
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._authkey = os.urandom(32)
        self._listener = Listener(family="AF_UNIX", authkey=self._authkey)
        self._slots: list[tuple[multiprocessing.process.BaseProcess, Connection, float] | None] = [None] * count
        self._closing = threading.Event()
        self._lock = threading.Condition()
        """Held to start a helper and to begin closing (no helper starts after :meth:`close` looked), and to count
        the helpers that said they listen."""
        self._ready = 0

    def start(self, timeout: float = 120.0) -> DeviceAPIHelpers:
        """Start every helper and return once each one listens, or ``timeout`` passed (those that did not are
        started again, and logged, by the supervisor)."""
        self._spawn_thread(self._accept, "device-api-helpers")
        for slot in range(self.count):
            self._start(slot)
        self._spawn_thread(self._supervise, "device-api-supervisor")
        with self._lock:
            if not self._lock.wait_for(lambda: self._ready >= self.count, timeout):
                log.warning("device API processes not all listening", extra={"listening": self._ready,
                            "processes": self.count})  # fmt: skip
        return self

    @property
    def address(self) -> str:
        """The Unix socket helpers ask the controller through."""
        return str(self._listener.address)

    def link(self) -> ControllerLink:
        """A link to this process, as a helper holds one."""
        return ControllerLink(self.address, self._authkey)

    @property
    def pids(self) -> list[int]:
        return [entry[0].pid for entry in self._slots if entry is not None and entry[0].pid is not None]

    def close(self) -> None:
        """Stop every helper as SIGTERM stops one (requests in flight get the server's shutdown time)."""
        with self._lock:
            self._closing.set()
        for entry in self._slots:
            if entry is not None and entry[0].is_alive():
                entry[0].terminate()
        for entry in self._slots:
            if entry is not None:
                entry[0].join(timeout=self.server.limits.shutdown_seconds + 10)
                if entry[0].is_alive():
                    entry[0].kill()
                    entry[0].join(timeout=10)
                entry[1].close()
        self._listener.close()

    # --- helpers' lives ------------------------------------------------------------------------------------

    def _start(self, slot: int) -> None:
        with self._lock:
            if self._closing.is_set():
                return
            lifeline, keep = self._context.Pipe(duplex=False)
            process = self._context.Process(
                target=_helper,
                name=f"device-api-{slot + 1}",
                daemon=True,
                args=(self.build, self._listener.address, self._authkey, lifeline),
            )
            process.start()
            lifeline.close()  # the helper holds its end: when ``keep`` closes, however this process ends, it reads EOF
            self._slots[slot] = process, keep, time.monotonic()

    def _supervise(self) -> None:
        while not self._closing.wait(1.0):
            for slot, entry in enumerate(self._slots):
                if entry is None or entry[0].is_alive():
                    continue
                process, keep, started = entry
                if time.monotonic() - started < RESTART_BACKOFF_SECONDS:
                    continue
                keep.close()
                log.warning("device API process exited; starting another", extra={"pid": process.pid,
                            "exitcode": process.exitcode})  # fmt: skip
                self._start(slot)

    # --- what helpers ask of the controller ----------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection = self._listener.accept()
            except (OSError, EOFError, multiprocessing.AuthenticationError):
                if self._closing.is_set():
                    return
                continue  # a caller without the key, or one that hung up mid-handshake
            self._spawn_thread(lambda c=connection: self._answer_all(c), "device-api-link")

    def _answer_all(self, connection: Connection) -> None:
        backend = None
        try:
            while True:
                try:
                    kind, *args = connection.recv()
                except (EOFError, OSError):
                    return
                try:
                    if kind == "join" and backend is None:
                        backend = self.backend_factory()
                    answer = ("ok", self._answer(kind, args, backend))
                except Exception as exc:  # the helper says so to its device (503, tried again); this goes on
                    answer = ("error", f"{type(exc).__name__}: {exc}")
                connection.send(answer)
        finally:
            connection.close()
            if backend is not None and hasattr(backend, "close"):
                backend.close()

    def _answer(self, kind: str, args: list, backend: Any) -> Any:
        if kind == "join":
            device, name, der = args
            if self.on_join is None:
                return "federated trainings are off in this controller"
            return self.on_join(backend, device, name, load_der_public_key(der))
        if kind == "upstream":
            return self.upstream() if self.upstream is not None else None
        if kind == "count":
            self.server.add_counted_elsewhere(*args)
            return None
        if kind == "ready":
            with self._lock:
                self._ready += 1
                self._lock.notify_all()
            return None
        raise ValueError(f"unknown request {kind!r}")

    def _spawn_thread(self, target: Callable[[], None], name: str) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()


class ControllerLink:
    """A helper's calls to the controller's process; used by its server's worker threads and event loop at once."""

    def __init__(self, address: str, authkey: bytes) -> None:
        self.address, self._authkey = address, authkey
        self._local = threading.local()
        """A connection per calling thread: the event loop asking where the SuperLink is never waits behind a
        worker thread's join (a SuperLink call)."""
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._upstream: tuple[float, tuple[str, ssl.SSLContext] | None] = (float("-inf"), None)
        self._contexts: dict[str, ssl.SSLContext] = {}

    def call(self, *request: Any) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = Client(self.address, family="AF_UNIX", authkey=self._authkey)
            with self._lock:
                self._connections.append(connection)
        connection.send(request)
        status, value = connection.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def join(self, _backend: Any, device: str, name: str, public_key: Any) -> bool | str:
        """The controller's join, as :class:`DeviceAPIServer`'s ``on_join`` (a string: tried again by the device)."""
        der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        try:
            return self.call("join", device, name, der)
        except (OSError, EOFError, RuntimeError) as exc:
            return f"the controller did not take the join: {exc}"

    def upstream(self) -> tuple[str, ssl.SSLContext] | None:
        """The SuperLink's Fleet address and a context trusting it, as the controller's ``fleet_upstream``."""
        asked, found = self._upstream
        if time.monotonic() - asked < UPSTREAM_SECONDS:
            return found
        try:
            address = self.call("upstream")
        except (OSError, EOFError, RuntimeError):
            address = None
        if address is not None:
            url, ca_file = address
            if ca_file not in self._contexts:
                self._contexts[ca_file] = ssl.create_default_context(cafile=ca_file)
            found = url, self._contexts[ca_file]
        else:
            found = None
        self._upstream = time.monotonic(), found
        return found

    def count(self, refusals: dict[str, float], sent: dict[str, float], served: int) -> None:
        self.call("count", refusals, sent, served)

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()


def _helper(build: Build, address: str, authkey: bytes, lifeline: Connection) -> None:
    """A helper process: serve until SIGTERM, or until the controller's process is gone."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C reaches the whole process group: the controller, finishing its cycle, stops its helpers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv()
        stop.set()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
    link = ControllerLink(address, authkey)
    server = build(link)
    counted = _Counted(server)
    link.call("ready")
    try:
        while not stop.wait(COUNT_SECONDS):
            counted.push(link)
    except (OSError, EOFError, RuntimeError):  # the controller is gone: nothing left to count for
        pass
    finally:
        server.close()
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            counted.push(link)
        link.close()


class _Counted:
    """What a helper's server counted since the last push."""

    def __init__(self, server: DeviceAPIServer) -> None:
        self.server = server
        self.refusals: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.served = 0

    def push(self, link: ControllerLink) -> None:
        refusals, sent, served = self.server.counted()
        new_refusals = {k: v - self.refusals.get(k, 0) for k, v in refusals.items() if v != self.refusals.get(k, 0)}
        new_sent = {k: v - self.sent.get(k, 0) for k, v in sent.items() if v != self.sent.get(k, 0)}
        if new_refusals or new_sent or served != self.served:
            link.count(new_refusals, new_sent, served - self.served)
        self.refusals, self.sent, self.served = refusals, sent, served


def helper_pids(controller: int) -> list[int]:
    """The device API helpers of the controller process ``controller``, as ``/proc`` shows them to any process of
    the same user (its children that multiprocessing's spawn started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == controller and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found
