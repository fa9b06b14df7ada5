"""Telemetry on the device: fixed-size summaries per model version, an on-disk queue, upload when reachable.

Who calls it: the model server (``TelemetryRecorder`` counts every request), the agent loop (flushes an
interval's summaries into the queue and uploads). No raw input leaves the device: a summary holds counts
only, on bins that every device shares, so the controller can add summaries of many devices and compute
drift (PSI, KL) fleet-wide:

- requests and inference errors;
- a latency histogram on fixed buckets, with p50/p95/p99 read from it;
- predicted classes (argmax of the output), counted;
- per-row input mean and standard deviation, counted on the manifest's reference bins (``histograms``);
- mergeable KLL sketches (:mod:`reconciler.artifact.sketches`) of every input feature, of the output (score and
  margin, or the regression output) and of latency, which the controller merges fleet-wide and compares with the
  reference sketches the build shipped in the manifest;
- errors by kind: ``input`` (a request the model cannot take) and ``inference`` (the runtime failed).

The queue is a folder of JSON files named by a rising sequence number, each written atomically. It has a
byte budget: when full, the oldest summaries are dropped and the drop is counted (and reported with the next
upload), so a device offline for weeks keeps its newest picture instead of filling its disk.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import urllib3

from reconciler.artifact import sketches
from reconciler.artifact.runtime import Inputs, flat_rows, row_count
from reconciler.durable import write_atomic

log = logging.getLogger("edge_reconciler.agent")

LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, math.inf)


MIN_ROWS = 30
"""Rows a model version's sketches gather before they are handed over: fewer stay on the device, gathering."""
FOLD = 4096
"""Values of one figure held back before they reach its sketch, sorted."""


class Gathered:
    """Values gathered for one model version's sketches since they were last handed over.

    A KLL sketch keeps the values it has not compacted in the order they came, so a sketch fed row by row would keep
    the same position for one row in every feature's sketch: rows could be put back together from a summary. Here
    each figure's values are held back and sorted before they reach its sketch (at ``FOLD`` values, and at hand-over),
    so positions line up across figures by rank, not by row; a lone row is never folded (it waits for the next
    hand-over), and a version's sketches travel only once ``MIN_ROWS`` rows were gathered."""

    def __init__(self) -> None:
        self.sketches: dict[str, object] = {}
        self.pending: dict[str, list[np.ndarray]] = {}
        self.rows = 0

    def add(self, values: dict[str, np.ndarray], rows: int = 0) -> None:
        self.rows += rows
        for name, column in values.items():
            finite = np.asarray(column, dtype=np.float32)
            finite = finite[np.isfinite(finite)]
            if finite.size:
                held = self.pending.setdefault(name, [])
                held.append(finite)
                if sum(len(part) for part in held) >= FOLD:
                    self._fold(name)

    @property
    def ready(self) -> bool:
        return self.rows >= MIN_ROWS

    def encoded(self) -> dict[str, str]:
        """Every figure's sketch, encoded, with what was held back folded in (bar a lone value, kept back)."""
        for name in list(self.pending):
            self._fold(name)
        return {name: sketches.encode(sketch) for name, sketch in sorted(self.sketches.items())}

    def _fold(self, name: str) -> None:
        values = np.sort(np.concatenate(self.pending.pop(name)))
        if len(values) == 1 and name in self.sketches:
            self.pending[name] = [values]  # one value alone would sit at the end of the sketch: it waits
            return
        sketch = self.sketches.get(name)
        if sketch is None:
            sketch = self.sketches[name] = sketches.new()
        sketch.update(values)


@dataclass
class Summary:
    model: str
    version: str
    device: str
    input_edges: dict[str, list[float]]
    classes: int
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    predictions: list[int] = field(default_factory=list)
    inputs: dict[str, list[int]] = field(default_factory=dict)
    sketches: Gathered = field(default_factory=Gathered)
    """The values for sketches since they were last handed over (shared with the recorder)."""
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.predictions = self.predictions or [0] * self.classes
        self.inputs = self.inputs or {name: [0] * (len(edges) + 1) for name, edges in self.input_edges.items()}

    def add(self, inputs: Inputs | None, outputs: np.ndarray | None, seconds: float, failed: bool | str) -> None:
        """``failed``: False, or the kind of error (True: an inference error)."""
        self.requests += 1
        self.errors += int(bool(failed))
        if failed:
            kind = failed if isinstance(failed, str) else "inference"
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.latency[int(np.searchsorted(LATENCY_BUCKETS_MS, seconds * 1000, side="left"))] += 1
        self.sketches.add({sketches.LATENCY: np.array([seconds * 1000], dtype=np.float32)})
        if not failed:
            try:
                figures = sketches.figures(inputs, outputs)
                self.sketches.add(figures, row_count(inputs) if inputs is not None else 0)
            except (ValueError, TypeError, IndexError):  # a shape no projection fits: counted, not sketched
                pass
        if outputs is not None and outputs.ndim == 2 and outputs.shape[1] == self.classes:
            for predicted in np.argmax(outputs, axis=1):
                self.predictions[int(predicted)] += 1
        if inputs is not None and row_count(inputs) and not failed:
            flat = flat_rows(inputs)
            for name, values in (("inputMean", flat.mean(axis=1)), ("inputStd", flat.std(axis=1))):
                if name in self.input_edges:
                    bins = np.searchsorted(self.input_edges[name], values, side="right")
                    for index in bins:
                        self.inputs[name][int(index)] += 1

    def percentile(self, q: float) -> float | None:
        """Upper edge of the bucket holding the q-th percentile (None without requests)."""
        if not self.requests:
            return None
        rank, seen = q / 100 * self.requests, 0
        for bound, count in zip(LATENCY_BUCKETS_MS, self.latency, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return LATENCY_BUCKETS_MS[-1]

    def to_json(self, with_sketches: bool = True) -> dict:
        """``with_sketches``: hand the gathered sketches over (the recorder decides, under its lock, when)."""
        buckets = [b if b != math.inf else "+Inf" for b in LATENCY_BUCKETS_MS]
        latency = {"buckets": buckets, "counts": self.latency}
        latency.update({f"p{q}": self.percentile(q) for q in (50, 95, 99)})
        inputs = {name: {"edges": self.input_edges[name], "counts": counts} for name, counts in self.inputs.items()}
        return {
            "apiVersion": "edgereconciler.io/v1alpha1",
            "kind": "TelemetrySummary",
            "device": self.device,
            "model": self.model,
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "latencyMs": latency,
            "predictions": self.predictions,
            "inputs": inputs,
            "sketches": self.sketches.encoded() if with_sketches else {},
            "errorsByKind": dict(sorted(self.errors_by_kind.items())),
        }


class TelemetryRecorder:
    """Counts requests into one Summary per (model, version); ``flush`` hands them over and starts anew."""

    def __init__(self, device: str, manifests: dict[str, dict] | None = None) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._summaries: dict[tuple[str, str], Summary] = {}
        self._totals: dict[tuple[str, str], list[int]] = {}
        """(model, version) -> [requests, errors] since this process started: what a trial is judged on."""
        self._manifests = manifests or {}
        self._sketches: dict[tuple[str, str], Gathered] = {}
        self.sampler: Callable[[str, str, object, np.ndarray | None], None] | None = None
        """Sampled input capture (``reconciler.agent.capture``): told of every request served without error."""
        """(model, version) -> the sketches since they were last handed over (they travel less often than counts)."""

    def know(self, manifest: dict) -> None:
        """The manifest of a version being served: its reference bins and class count."""
        with self._lock:
            self._manifests[f"{manifest['model']}@{manifest['version']}"] = manifest

    def __call__(self, model: str, version: str, inputs, outputs, seconds: float, failed: bool | str) -> None:
        with self._lock:
            summary = self._summaries.get((model, version))
            if summary is None:
                histograms = self._manifests.get(f"{model}@{version}", {}).get("histograms", {})
                edges = {k: v["edges"] for k, v in histograms.items() if isinstance(v, dict) and "edges" in v}
                classes = int(histograms.get("prediction", {}).get("classes", 0))
                pending = self._sketches.setdefault((model, version), Gathered())  # kept across flushes
                summary = Summary(model, version, self.device, edges, classes, sketches=pending)
                self._summaries[(model, version)] = summary
            summary.add(inputs, outputs, seconds, failed)
            totals = self._totals.setdefault((model, version), [0, 0])
            totals[0] += 1
            totals[1] += int(bool(failed))
        if self.sampler is not None and not failed:
            try:
                self.sampler(model, version, inputs, outputs)
            except Exception as exc:  # capture is a side line: it never fails a request that was served
                log.warning("input not sampled", extra={"model": model, "error": f"{type(exc).__name__}: {exc}"})

    def totals(self, model: str, version: str) -> tuple[int, int]:
        """Requests and inference errors of ``model@version`` since this process started (not reset by flush)."""
        with self._lock:
            requests, errors = self._totals.get((model, version), (0, 0))
        return requests, errors

    def restore(self, model: str, version: str, requests: int, errors: int) -> None:
        """Start ``model@version``'s totals from what an earlier process counted."""
        with self._lock:
            self._totals[(model, version)] = [int(requests), int(errors)]

    def all_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        with self._lock:
            return {key: (counts[0], counts[1]) for key, counts in self._totals.items()}

    def flush(self, with_sketches: bool = True) -> list[dict]:
        """The interval's summaries, each stamped with the moment it ended (the controller files it there).
        ``with_sketches``: hand over the sketches gathered since they last were (a version that served nothing
        in this interval gets a summary of no requests carrying them); without, they keep gathering, so a
        device sends its sketches as often as its owner can afford, not at every hand-over of counts."""
        ready: dict[tuple[str, str], Gathered] = {}
        with self._lock:
            summaries, self._summaries = self._summaries, {}
            if with_sketches:  # the versions that gathered enough rows; the others go on gathering
                ready = {key: gathered for key, gathered in self._sketches.items() if gathered.ready}
                self._sketches = {key: g for key, g in self._sketches.items() if key not in ready}
                for (model, version), gathered in ready.items():
                    if (model, version) not in summaries:
                        summaries[(model, version)] = Summary(model, version, self.device, {}, 0, sketches=gathered)
        ended = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return [{**s.to_json(key in ready), "ended": ended} for key, s in summaries.items()]


REFUSED_FOR_GOOD = frozenset({400, 404, 409, 413, 422})
"""Answers about the summary itself; 401, 403, 408, 429 and 5xx are about the moment or the device's identity."""


class TelemetryQueue:
    """Store and forward: summaries wait on disk until the controller takes them."""

    def __init__(self, directory: Path, budget_bytes: int = 4 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes

    @property
    def stream(self) -> str:
        """This queue's id, made once: with the file's sequence number it names each summary for good, so the
        controller counts a summary sent twice once."""
        path = self.directory / "stream"
        try:
            return path.read_text().strip()
        except OSError:
            pass
        mine = self.directory / f".stream-{os.getpid()}"
        write_atomic(mine, secrets.token_hex(16).encode())
        try:  # whole or not at all, and the first of the agent and the model server to get here wins
            os.link(mine, path)
        except FileExistsError:
            pass
        finally:
            mine.unlink(missing_ok=True)
        return path.read_text().strip()

    def put(self, summary: dict) -> None:
        # Numbers only rise, also after the queue ran empty: the last one is kept beside the files.
        sequence = max([int(p.stem) for p in self._files()] + [self._last()], default=0) + 1
        # The number first: a crash between the two writes skips one, never hands one out twice.
        write_atomic(self.directory / "last", str(sequence).encode())
        write_atomic(self.directory / f"{sequence:012d}.json", json.dumps(summary, sort_keys=True).encode())
        self._enforce_budget()

    def _last(self) -> int:
        try:
            return int((self.directory / "last").read_text())
        except (OSError, ValueError):
            return 0

    def pending(self) -> list[Path]:
        return self._files()

    @property
    def dropped(self) -> int:
        try:
            return int((self.directory / "dropped").read_text())
        except (OSError, ValueError):
            return 0

    def upload(self, url: str, http: urllib3.PoolManager | None = None, timeout: float = 10.0) -> int:
        """POST summaries oldest first; stop at the first failure that may pass later (unreachable, 5xx, 429,
        401/403: the rest waits). A summary the server refuses for what it is (another 4xx) is dropped and
        counted: sent again it would be refused again, and would hold back every summary behind it."""
        http = http or urllib3.PoolManager(retries=False)
        sent = 0
        stream = self.stream
        for path in self._files():
            body = json.loads(path.read_bytes())
            body["droppedBefore"] = self.dropped
            body["stream"], body["sequence"] = stream, int(path.stem)
            try:
                response = http.request("POST", url, body=json.dumps(body).encode(), timeout=timeout,
                                        headers={"Content-Type": "application/json"})  # fmt: skip
            except urllib3.exceptions.HTTPError:
                break
            if response.status in REFUSED_FOR_GOOD:
                path.unlink()
                self._count_dropped(1)
                continue
            if not 200 <= response.status < 300:
                break
            path.unlink()
            sent += 1
            if body["droppedBefore"]:
                write_atomic(self.directory / "dropped", b"0")
        return sent

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.json") if p.stem.isdigit())

    def _enforce_budget(self) -> None:
        files = self._files()
        total = sum(p.stat().st_size for p in files)
        dropped = 0
        while files and total > self.budget_bytes:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink()
            dropped += 1
        self._count_dropped(dropped)

    def _count_dropped(self, count: int) -> None:
        if count:
            write_atomic(self.directory / "dropped", str(self.dropped + count).encode())
