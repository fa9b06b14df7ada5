"""Telemetry summaries: counted from real predictions on the manifest's bins, queued on disk while the
controller is unreachable, uploaded in order when it is back, the oldest dropped (and counted) over budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reconciler.agent.serving import ModelServer
from reconciler.agent.telemetry import Summary, TelemetryQueue, TelemetryRecorder
from reconciler.controller.server import ControllerServer

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


def test_queued_while_offline_then_uploaded_in_order(tmp_path: Path):
    queue = TelemetryQueue(tmp_path / "queue")
    for i in range(5):
        queue.put({"kind": "TelemetrySummary", "device": "d", "interval": i})
    received: list[dict] = []
    controller = ControllerServer(("127.0.0.1", 0), on_telemetry=received.append)
    url = f"{controller.url}/telemetry"
    controller.close()  # not running: the device is offline
    assert queue.upload(url) == 0 and len(queue.pending()) == 5

    online = ControllerServer(controller.httpd.server_address, on_telemetry=received.append).start()
    try:
        assert queue.upload(f"{online.url}/telemetry") == 5
    finally:
        online.close()
    assert [r["interval"] for r in received] == [0, 1, 2, 3, 4] and queue.pending() == []


def test_over_budget_the_oldest_are_dropped_and_counted(tmp_path: Path):
    queue = TelemetryQueue(tmp_path / "queue", budget_bytes=2000)
    for i in range(40):
        queue.put({"kind": "TelemetrySummary", "interval": i, "padding": "x" * 80})
    kept = [json.loads(p.read_text())["interval"] for p in queue.pending()]
    assert kept == list(range(40 - len(kept), 40)) and len(kept) < 40
    assert queue.dropped == 40 - len(kept)
    received: list[dict] = []
    controller = ControllerServer(("127.0.0.1", 0), on_telemetry=received.append).start()
    try:
        queue.upload(f"{controller.url}/telemetry")
    finally:
        controller.close()
    assert received[0]["droppedBefore"] == 40 - len(kept) and queue.dropped == 0
