"""The model server in its own process, supervised by the agent: a model that crashes the runtime takes down
the server, never the agent, and the agent starts it again.

Who calls it: ``edgectl agent --serve``. The child (``python -m reconciler.agent.supervisor serve ...``) runs a
:class:`.serving.ModelServer` with its own telemetry recorder; it writes the interval's summaries into the
agent's telemetry queue (``DATA_DIR/telemetry``, which the agent uploads) and its request counts per version into
``DATA_DIR/serving/totals.json`` (what a trial is judged on), and reloads every model on SIGHUP (the agent's
switch). The supervisor restarts a child that ended with a backoff (1 s doubling to 30 s, reset after a minute
up) and counts each end as a crash of the versions that were active then: a crash on trial rolls the version back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from reconciler.durable import write_atomic

from .slots import ModelSlots

log = logging.getLogger("edge_reconciler.agent")
FLUSH_SECONDS = 5.0
SKETCH_SECONDS = 600.0
"""Sketches travel every ten minutes (counts every ``FLUSH_SECONDS``): about 20x fewer bytes at a request a second
(bench/drift.py), and still several comparisons within an hour-long gate window."""
RESTART_BACKOFF = (1.0, 30.0)
STABLE_SECONDS = 60.0


class ServingProcess:
    def __init__(self, data_dir: Path, address: tuple[str, int], threads: int, device: str,
                 telemetry_budget: int, env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.data_dir, self.address, self.threads, self.device = Path(data_dir), address, threads, device
        self.telemetry_budget, self.env = telemetry_budget, env
        self.restarts = 0
        self._crashes: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._child: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._child.pid if self._child is not None else None

    def start(self) -> ServingProcess:
        self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="serving-supervisor", daemon=True)
        self._thread.start()
        return self

    def reload(self, model: str) -> None:
        """The agent switched ``model``: the server loads its active slot again (SIGHUP). Only a child that said
        it is ready gets the signal: before its handler is in place SIGHUP would end it (a crash counted against
        the new version) or, where SIGHUP is ignored (nohup), be lost; a child not yet ready loads every active
        slot once it is, so the switch is not missed either way."""
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None and _ready_pid(self.data_dir) == child.pid:
            child.send_signal(signal.SIGHUP)

    def crashes(self, model: str, version: str) -> int:
        with self._lock:
            return self._crashes.get((model, version), 0)

    def totals(self, model: str, version: str) -> tuple[int, int]:
        requests, errors = _read_totals(self.data_dir).get(f"{model}@{version}", (0, 0))
        return int(requests), int(errors)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "reconciler.agent.supervisor", "serve", str(self.data_dir),
                   f"{self.address[0]}:{self.address[1]}", str(self.threads), self.device,
                   str(self.telemetry_budget)]  # fmt: skip
        child = subprocess.Popen(command, env=self.env, start_new_session=True)
        with self._lock:
            self._child = child

    def _supervise(self) -> None:
        backoff = RESTART_BACKOFF[0]
        started = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                child = self._child
            assert child is not None
            try:
                code = child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            if self._stop.is_set():
                return
            active = _active_versions(self.data_dir)
            with self._lock:
                for key in active:
                    self._crashes[key] = self._crashes.get(key, 0) + 1
            log.error("model server ended; restarting", extra={"code": code, "active": sorted(map("@".join, active)),
                                                              "backoff": backoff})  # fmt: skip
            if time.monotonic() - started > STABLE_SECONDS:
                backoff = RESTART_BACKOFF[0]
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, RESTART_BACKOFF[1])
            self.restarts += 1
            started = time.monotonic()
            self._spawn()


def _active_versions(data_dir: Path) -> list[tuple[str, str]]:
    found = []
    for folder in sorted((data_dir / "models").glob("*")):
        try:
            version = ModelSlots(data_dir, folder.name).state().active_version
        except ValueError:
            continue
        if version:
            found.append((folder.name, version))
    return found


def _ready_pid(data_dir: Path) -> int | None:
    """The pid of the server child that finished starting (it writes the file then)."""
    try:
        return int((data_dir / "serving" / "pid").read_text())
    except (OSError, ValueError):
        return None


def _read_totals(data_dir: Path) -> dict[str, list[int]]:
    try:
        body = json.loads((data_dir / "serving" / "totals.json").read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _serve(data_dir: Path, listen: str, threads: int, device: str, budget: int) -> None:
    """The child: serve, reload on SIGHUP, hand telemetry to the agent's queue, stop on SIGTERM."""
    reload, stop = threading.Event(), threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from .capture import CaptureSampler
    from .serving import ModelServer
    from .telemetry import TelemetryQueue, TelemetryRecorder

    recorder = TelemetryRecorder(device)
    recorder.sampler = sampler = CaptureSampler(data_dir / "capture")
    for key, (requests, errors) in _read_totals(data_dir).items():  # counts survive a restart
        model, _, version = key.partition("@")
        recorder.restore(model, version, requests, errors)
    queue = TelemetryQueue(data_dir / "telemetry", budget)
    host, _, port = listen.rpartition(":")
    server = ModelServer(data_dir, (host or "127.0.0.1", int(port)), threads, recorder).start()
    (data_dir / "serving").mkdir(parents=True, exist_ok=True)
    write_atomic(data_dir / "serving" / "pid", str(os.getpid()).encode())  # ready: SIGHUP is handled from now on
    reload.set()  # a switch made while the models were loading: load every active slot once more
    last = sketched = time.monotonic()
    try:
        while not stop.is_set():
            stop.wait(0.1)
            if reload.is_set():
                reload.clear()
                for folder in sorted((data_dir / "models").glob("*")):
                    server.reload(folder.name)
            if stop.is_set() or time.monotonic() - last >= FLUSH_SECONDS:
                last = time.monotonic()
                with_sketches = stop.is_set() or last - sketched >= SKETCH_SECONDS
                sketched = last if with_sketches else sketched
                _hand_over(recorder, queue, data_dir, with_sketches)
                _hand_over_samples(sampler)
        _hand_over(recorder, queue, data_dir, with_sketches=True)
        _hand_over_samples(sampler)
    finally:
        server.close()


def _hand_over_samples(sampler) -> None:
    try:
        sampler.hand_over()
    except Exception as exc:  # a full disk, a hook gone wrong: the samples are lost, never the model server
        log.warning("samples not kept", extra={"error": str(exc)})


def _hand_over(recorder, queue, data_dir: Path, with_sketches: bool) -> None:
    for summary in recorder.flush(with_sketches):
        queue.put(summary)
    totals = {f"{model}@{version}": list(counts) for (model, version), counts in recorder.all_totals().items()}
    write_atomic(data_dir / "serving" / "totals.json", json.dumps(totals, sort_keys=True).encode())


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "serve":
    _serve(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
