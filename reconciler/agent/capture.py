"""Sampled input capture, opt-in per model: a share of the requests a device serves, kept with the model's
predictions as labels, within a byte budget, for the device API to take into the artifact store.

Who calls it: the agent writes the settings its assignments carry (``monitoring.capture`` of each model: rate,
byte budget, whether redaction is required) and its own redaction hook into ``capture/settings.json`` every cycle
(:func:`write_settings`); the model server's process samples requests (:class:`CaptureSampler`, through the
telemetry recorder) and hands batches over with the telemetry, one ``.npz`` (``x``: the rows, ``y``: the predicted
class, or the output of a one-column model) per model version and hand-over; the agent uploads them after its
cycle (:func:`upload_captures`), oldest first, and deletes what the controller took.

A device never keeps more than the model's ``maxBytes`` of samples: past it, the oldest batches go, offline or not.
A redaction hook is an executable on the device, not in Git (a fleet repo must not run code on devices): it reads
a batch's ``.npz`` on stdin and writes the redacted ``.npz`` on stdout; a hook that fails or writes something
else loses the batch, never sends it unredacted. A model whose capture says ``redaction: required`` keeps nothing
on a device without a hook.
"""

from __future__ import annotations

import io
import json
import logging
import random
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from reconciler.durable import write_atomic
from reconciler.plan import Desired

log = logging.getLogger("edge_reconciler.agent")

SETTINGS = "settings.json"
HOOK_SECONDS = 30
MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Rows a model version keeps in memory between two hand-overs, in bytes; past it, requests are not sampled."""


def write_settings(folder: Path, assignments: list[Desired], hook: Path | None) -> None:
    """The capture settings of this cycle's assignments, for the model server's process (rewritten on change)."""
    models = {d.model: d.capture.to_json() for d in assignments if d.capture is not None and not d.benchmark}
    body = json.dumps({"models": models, "hook": str(hook) if hook else None}, sort_keys=True).encode()
    path = folder / SETTINGS
    try:
        if path.read_bytes() == body:
            return
    except OSError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, body)


class CaptureSampler:
    def __init__(self, folder: Path, chance: random.Random | None = None) -> None:
        self.folder = Path(folder)
        self.pending = self.folder / "pending"
        self.chance = chance or random.Random()
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        self._settings: dict = {}
        self._seen: float | None = None

    def settings(self) -> dict:
        """The agent's settings file, read again when it changed."""
        try:
            changed = (self.folder / SETTINGS).stat().st_mtime
        except OSError:
            self._settings, self._seen = {}, None
            return {}
        if changed != self._seen:
            try:
                self._settings = json.loads((self.folder / SETTINGS).read_text())
            except (OSError, ValueError):
                self._settings = {}
            self._seen = changed
        return self._settings

    def __call__(self, model: str, version: str, inputs, outputs: np.ndarray | None) -> None:
        """A served request: its rows are kept with the share the model's capture asks for."""
        settings = self.settings()
        wanted = (settings.get("models") or {}).get(model)
        if not wanted or outputs is None or (wanted.get("redaction") == "required" and not settings.get("hook")):
            return
        if self.chance.random() >= float(wanted.get("rate") or 0):
            return
        try:  # the first input (a model with several keeps the first: docs say so); one label per row
            rows = np.asarray(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs, dtype=np.float32)
            values = np.asarray(outputs).reshape(len(rows), -1)
        except (TypeError, ValueError, StopIteration):
            return
        labels = values.argmax(axis=1) if values.shape[1] > 1 else values[:, 0]
        with self._lock:
            kept = self._rows.setdefault((model, version), [])
            same = not kept or kept[-1][0].shape[1:] == rows.shape[1:]
            if not same:  # another shape of rows (a new input size): a batch holds one shape, the newest
                kept.clear()
            if sum(x.nbytes for x, _ in kept) + rows.nbytes <= MAX_BATCH_BYTES:
                kept.append((rows, labels))

    def hand_over(self) -> list[Path]:
        """Write each model version's kept rows as one batch (through the hook when there is one), then hold every
        model to its byte budget; the batches written."""
        with self._lock:
            taken, self._rows = self._rows, {}
        settings = self.settings()
        written = []
        for (model, version), kept in sorted(taken.items()):
            wanted = (settings.get("models") or {}).get(model)
            if not wanted:
                continue
            buffer = io.BytesIO()
            np.savez_compressed(buffer, x=np.concatenate([x for x, _ in kept]), y=np.concatenate([y for _, y in kept]))
            data = buffer.getvalue()
            hook = settings.get("hook")
            if hook:
                data = _redacted(Path(hook), model, version, data)
            elif wanted.get("redaction") == "required":
                data = None
            if data is None:
                continue
            folder = self.pending / model / version
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{time.time_ns():020d}.npz"
            write_atomic(path, data)
            written.append(path)
        for model, wanted in (settings.get("models") or {}).items():
            self._budget(model, int(wanted.get("maxBytes") or 0))
        return written

    def _budget(self, model: str, limit: int) -> None:
        files = sorted(self.pending.glob(f"{model}/*/*.npz"), key=lambda p: p.name)
        total = sum(p.stat().st_size for p in files)
        for path in files:  # the oldest first
            if total <= limit:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)


def _redacted(hook: Path, model: str, version: str, data: bytes) -> bytes | None:
    """The hook's output for a batch, when it ran and wrote an ``.npz`` with ``x`` and ``y``; None otherwise."""
    try:
        done = subprocess.run([str(hook), model, version], input=data, capture_output=True, timeout=HOOK_SECONDS,
                              check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("redaction hook failed: batch dropped", extra={"hook": str(hook), "error": str(exc)})
        return None
    if done.returncode != 0:
        log.warning("redaction hook failed: batch dropped", extra={"hook": str(hook), "status": done.returncode})
        return None
    try:
        with np.load(io.BytesIO(done.stdout), allow_pickle=False) as batch:
            if not {"x", "y"} <= set(batch.files):
                raise ValueError("no x and y")
    except (OSError, ValueError) as exc:
        log.warning("redaction hook wrote no batch: dropped", extra={"hook": str(hook), "error": str(exc)})
        return None
    return done.stdout


def upload_captures(folder: Path, client) -> int:
    """Hand pending batches to the device API, oldest first (``client.upload_capture``); a batch it took, or
    refused for what it is, is deleted; the rest wait for the next cycle. How many went."""
    from reconciler.deviceapi.client import DeviceRefusedError

    sent = 0
    for path in sorted((Path(folder) / "pending").glob("*/*/*.npz"), key=lambda p: p.name):
        model, version = path.parent.parent.name, path.parent.name
        try:
            client.upload_capture(model, version, path.read_bytes())
        except DeviceRefusedError as exc:
            if exc.status in (400, 403, 404, 413):  # the batch itself, or capture is off now: never worth a retry
                log.warning("capture batch refused: dropped", extra={"model": model, "reason": exc.reason})
                path.unlink(missing_ok=True)
                continue
            break
        except Exception as exc:  # unreachable: they wait (within the budget)
            log.info("capture batches wait", extra={"error": str(exc)})
            break
        path.unlink(missing_ok=True)
        sent += 1
    return sent
