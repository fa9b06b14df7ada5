"""Drift end to end: devices run the real vibration-anomaly artifact on their traffic, their agents' telemetry
(KLL sketches) goes through the real device API into the telemetry store, and the controller compares the merged
sketches with the reference the build shipped in the manifest.

Two of six devices see one input feature shifted: the status file and ``edgectl get drift`` flag that feature,
on those two devices, and no other input feature anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner

from reconciler.agent.telemetry import TelemetryQueue, TelemetryRecorder
from reconciler.artifact.runtime import ModelRunner
from reconciler.cli.main import main
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.telemetry.store import TelemetryStore

from ..device_fleet import FLEET, MODEL, Fleet
from ..git_server import GitServer, git
from .test_end_to_end import LABELS, fleet_repo

DEVICES = [f"factory-{i:02d}" for i in range(6)]
SHIFTED = {"factory-02", "factory-04"}
FEATURE, COLUMNS = "input_0[10:12]", slice(10, 12)
"""64 columns are sketched as 32 pairs (``reconciler.artifact.sketches``): columns 10 and 11 are one feature."""


def traffic(fleet: Fleet, device: str, rows: np.ndarray) -> None:
    """What the device's agent does: serve ``rows`` with the real artifact, sketch them, upload the summary."""
    folder = fleet.artifacts["1.0.0"]
    manifest = json.loads((folder / "manifest.json").read_text())
    runner = ModelRunner(folder / f"model.{manifest['format']}", manifest["format"])
    recorder = TelemetryRecorder(device)
    recorder.know(manifest)
    for start in range(0, len(rows), 20):  # requests of 20 rows
        batch = rows[start : start + 20]
        recorder(MODEL, "1.0.0", batch, runner.run(batch), 0.002, False)
    client = fleet.client(device)
    client.ensure_identity()
    queue = TelemetryQueue(fleet.root / "queues" / device)
    for summary in recorder.flush():
        queue.put(summary)
    assert queue.upload(client.telemetry_url, client.pool) == 1


def test_a_shift_on_one_feature_of_two_devices_is_flagged_there_only(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    url = fleet_repo(git_server, tmp_path)
    for name in DEVICES:
        fleet.backend.register_device(name, LABELS)
    telemetry = TelemetryStore(fleet.root / "telemetry.sqlite")
    config = ControllerConfig(url, fleet.root / "controller-state", store=build_store.root)
    controller = Controller(config, fleet.backend, telemetry=telemetry)
    controller.cycle()  # the devices are given the model: the device API takes telemetry of assigned models only
    evaluation = np.load(FLEET / "models" / MODEL / "data" / "eval.npz")["x"].astype(np.float32)
    spread = evaluation[:, COLUMNS].std(axis=0)
    rng = np.random.default_rng(11)
    for name in DEVICES:
        rows = evaluation[rng.integers(0, len(evaluation), 1200)].copy()
        if name in SHIFTED:
            rows[:, COLUMNS] += 1.0 * spread  # one sigma on both columns of the feature
        traffic(fleet, name, rows)

    controller.cycle()
    written = git("show", f"main:status/drift/{MODEL}.yaml", cwd=git_server.base / "fleet.git")
    status = yaml.safe_load(written)["versions"]["1.0.0"]

    inputs = {name for name in status["fleet"]["figures"] if name.startswith("input_0[")}
    assert len(inputs) == 32 and {"score", "margin"} <= set(status["fleet"]["figures"])
    assert status["drifted"] and status["since"]
    assert set(status["devices"]) == SHIFTED and status["driftedDevices"] == 2
    for device in SHIFTED:
        assert [f for f in status["devices"][device]["drifted"] if f.startswith("input_0[")] == [FEATURE]
    assert [f for f in status["fleet"]["drifted"] if f.startswith("input_0[")] in ([], [FEATURE])
    for scope in [*status.get("profiles", {}).values(), *status.get("groups", {}).values()]:
        assert [f for f in scope["drifted"] if f.startswith("input_0[")] in ([], [FEATURE])

    shown = CliRunner().invoke(main, ["get", "drift", MODEL, "--repo", url])
    assert shown.exit_code == 0, shown.output
    assert FEATURE in shown.output and "factory-02" in shown.output and "factory-04" in shown.output
