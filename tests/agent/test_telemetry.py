"""Telemetry summaries: counted from real predictions on the manifest's bins, queued on disk while the
controller is unreachable, uploaded in order when it is back, the oldest dropped (and counted) over budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reconciler.agent.serving import ModelServer
from reconciler.agent.telemetry import Summary, TelemetryQueue, TelemetryRecorder

from ..device_fleet import MODEL, Fleet
from .test_serving import predict


def test_predictions_are_summarized_on_the_reference_bins(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()
    recorder = TelemetryRecorder("factory-1")
    server = ModelServer(agent.data_dir, ("127.0.0.1", 0), recorder=recorder).start()
    try:
        manifest = json.loads((agent.data_dir / "models" / MODEL / "active" / "manifest.json").read_text())
        inputs = manifest["golden"]["inputs"]
        for row in inputs:
            assert predict(server.url, [row])[0] == 200
        assert predict(server.url, [[0.0]])[0] == 400
    finally:
        server.close()
    [summary] = recorder.flush()
    assert (summary["model"], summary["version"], summary["device"]) == (MODEL, "1.0.0", "factory-1")
    assert summary["requests"] == len(inputs) + 1 and summary["errors"] == 1
    classes = manifest["histograms"]["prediction"]["classes"]
    assert len(summary["predictions"]) == classes and sum(summary["predictions"]) == len(inputs)
    expected = np.bincount(np.argmax(manifest["golden"]["outputs"], axis=1), minlength=classes).tolist()
    assert summary["predictions"] == expected
    assert summary["inputs"]["inputMean"]["edges"] == manifest["histograms"]["inputMean"]["edges"]
    assert sum(summary["inputs"]["inputMean"]["counts"]) == len(inputs)
    assert summary["latencyMs"]["p50"] is not None and "raw" not in json.dumps(summary)
    assert recorder.flush() == []  # a new interval starts empty


def test_the_latency_percentiles_come_from_the_histogram():
    summary = Summary("m", "1", "d", {}, 2)
    for ms in [0.2] * 90 + [30.0] * 10:
        summary.add(None, None, ms / 1000, False)
    assert (summary.percentile(50), summary.percentile(95)) == (0.25, 50.0)


def summary(requests: int, device: str = "factory-1") -> dict:
    """A summary as an agent's recorder writes it (``requests`` tells them apart)."""
    return {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "TelemetrySummary", "device": device, "model": MODEL,
            "version": "1.0.0", "requests": requests, "errors": 0,
            "latencyMs": {"buckets": [1.0, "+Inf"], "counts": [requests, 0], "p50": 1.0, "p95": 1.0, "p99": 1.0},
            "predictions": [requests], "inputs": {}}  # fmt: skip


def test_queued_while_offline_then_uploaded_in_order(fleet: Fleet, tmp_path: Path):
    queue = TelemetryQueue(tmp_path / "queue")
    for i in range(5):
        queue.put(summary(i + 1))
    client = fleet.client()
    client.ensure_identity()
    assert queue.upload("https://127.0.0.1:9/v1/telemetry", client.pool) == 0  # the device is offline
    assert len(queue.pending()) == 5
    assert queue.upload(client.telemetry_url, client.pool) == 5
    assert [s["requests"] for _, s in fleet.telemetry] == [1, 2, 3, 4, 5] and queue.pending() == []
    assert {device for device, _ in fleet.telemetry} == {"factory-1"}


def test_over_budget_the_oldest_are_dropped_and_counted(fleet: Fleet, tmp_path: Path):
    queue = TelemetryQueue(tmp_path / "queue", budget_bytes=2000)
    for i in range(40):
        queue.put(summary(i + 1))
    kept = [json.loads(p.read_text())["requests"] - 1 for p in queue.pending()]
    assert kept == list(range(40 - len(kept), 40)) and len(kept) < 40
    assert queue.dropped == 40 - len(kept)
    client = fleet.client()
    client.ensure_identity()
    queue.upload(client.telemetry_url, client.pool)
    assert fleet.telemetry[0][1]["droppedBefore"] == 40 - len(kept) and queue.dropped == 0


def test_a_summary_the_server_refuses_for_good_is_dropped_not_retried_forever(fleet: Fleet, tmp_path: Path):
    queue = TelemetryQueue(tmp_path / "queue")
    queue.put(summary(1))
    queue.put({**summary(2), "requests": -5})  # a summary no server accepts (400)
    queue.put(summary(3))
    client = fleet.client()
    client.ensure_identity()
    assert queue.upload(client.telemetry_url, client.pool) == 2 and queue.pending() == []
    assert [s["requests"] for _, s in fleet.telemetry] == [1, 3]
    assert fleet.telemetry[1][1]["droppedBefore"] == 1 and queue.dropped == 0  # counted, then reported


def test_a_summary_sent_again_is_counted_once(fleet: Fleet, tmp_path: Path):
    fleet.publish(fleet.release("1.0.0", 1))
    fleet.assign("factory-1", "1.0.0")
    queue = TelemetryQueue(tmp_path / "queue")
    queue.put(summary(7))
    kept = queue.pending()[0].read_bytes()
    client = fleet.client()
    client.ensure_identity()
    assert queue.upload(client.telemetry_url, client.pool) == 1
    # The device crashed after the server's answer and before it deleted the file: it sends the summary again.
    (queue.directory / "000000000001.json").write_bytes(kept)
    assert queue.upload(client.telemetry_url, client.pool) == 1  # acknowledged (nothing to retry) ...
    [stored] = fleet.stored_telemetry()
    assert (stored["requests"], stored["summaries"]) == (7, 1)  # ... and counted once
    # Numbers keep rising after the queue ran empty, so the next summary is a new one.
    queue.put(summary(5))
    assert queue.pending()[0].name == "000000000002.json"
    queue.upload(client.telemetry_url, client.pool)
    assert fleet.stored_telemetry()[0]["requests"] == 12
    # Another device's queue (a wiped device starts over at 1) is another stream.
    other = TelemetryQueue(tmp_path / "wiped")
    other.put(summary(1))
    assert other.stream != queue.stream
    other.upload(client.telemetry_url, client.pool)
    assert fleet.stored_telemetry()[0]["requests"] == 13
