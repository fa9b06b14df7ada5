"""Drift end to end: devices run the real vibration-anomaly artifact on their traffic, their agents' telemetry
(KLL sketches) goes through the real device API into the telemetry store, and the controller compares the merged
sketches with the reference the build shipped in the manifest.

Two of six devices see one input feature shifted: the status file and ``edgectl get drift`` flag that feature,
on those two devices, and no other input feature anywhere."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from reconciler.agent.telemetry import TelemetryQueue, TelemetryRecorder
from reconciler.artifact.runtime import ModelRunner
from reconciler.cli.main import main
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.telemetry.store import TelemetryStore

from ..controller.test_dashboard import browse
from ..device_fleet import FLEET, MODEL, Fleet
from ..git_server import GitServer, git
from .test_end_to_end import LABELS, ROLLOUT, fleet_repo

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


def drifted(fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store, retrain_after: str = "24h"):
    """A fleet of six devices whose telemetry is in the store, two of them with FEATURE shifted, and a controller
    on a clock the test moves; the controller has assigned the model (the device API takes telemetry of assigned
    models only) and not looked at the telemetry yet."""
    url = fleet_repo(git_server, tmp_path)
    if retrain_after != "24h":  # the example's
        work = tmp_path / "edit"
        git("clone", "-q", url, str(work), cwd=tmp_path)
        model = work / "models" / f"{MODEL}.yaml"
        model.write_text(model.read_text().replace("retrainAfter: 24h", f"retrainAfter: {retrain_after}"))
        git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "retrain sooner", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
    for name in DEVICES:
        fleet.backend.register_device(name, LABELS)
    clock = [datetime.now(UTC)]
    telemetry = TelemetryStore(fleet.root / "telemetry.sqlite")
    config = ControllerConfig(url, fleet.root / "controller-state", store=build_store.root)
    controller = Controller(config, fleet.backend, telemetry=telemetry, clock=lambda: clock[0])
    controller.cycle()
    evaluation = np.load(FLEET / "models" / MODEL / "data" / "eval.npz")["x"].astype(np.float32)
    spread = evaluation[:, COLUMNS].std(axis=0)
    rng = np.random.default_rng(11)
    for name in DEVICES:
        rows = evaluation[rng.integers(0, len(evaluation), 1200)].copy()
        if name in SHIFTED:
            rows[:, COLUMNS] += 1.0 * spread  # one sigma on both columns of the feature
        traffic(fleet, name, rows)
    return url, controller, clock


def test_a_shift_on_one_feature_of_two_devices_is_flagged_there_only(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    url, controller, _ = drifted(fleet, git_server, tmp_path, build_store)
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

    # The same figures for Prometheus: drift per figure, drifted devices, latency per profile from the sketches.
    samples = {(m.name, tuple(sorted(s.labels.items()))): s.value
               for m in controller.metrics.registry.collect() for s in m.samples}  # fmt: skip
    labels = (("figure", FEATURE), ("model", MODEL), ("version", "1.0.0"))
    ks, threshold = samples[("edge_reconciler_drift_ks", labels)], samples[("edge_reconciler_drift_threshold", labels)]
    assert ks == pytest.approx(status["fleet"]["figures"][FEATURE]["ks"], abs=1e-4) and threshold > 0
    assert samples[("edge_reconciler_drifted_devices", (("model", MODEL), ("version", "1.0.0")))] == 2
    p95 = samples[("edge_reconciler_inference_latency_ms", (("model", MODEL), ("profile", "arm-cortex-a-cpu"),
                                                            ("quantile", "p95"), ("version", "1.0.0")))]  # fmt: skip
    assert p95 == pytest.approx(2.0, rel=0.05)  # every request took 2 ms
    assert samples[("edge_reconciler_telemetry_last_received_timestamp_seconds", ())] > 0

    shown = CliRunner().invoke(main, ["get", "drift", MODEL, "--repo", url])
    assert shown.exit_code == 0, shown.output
    assert FEATURE in shown.output and "factory-02" in shown.output and "factory-04" in shown.output


def test_drift_held_past_retrain_after_is_one_branch_with_one_request(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    url, controller, clock = drifted(fleet, git_server, tmp_path, build_store, retrain_after="1h")
    bare = git_server.base / "fleet.git"

    def branches() -> list[str]:
        return sorted(line.split("refs/heads/")[1] for line in git("for-each-ref", "refs/heads", cwd=bare).splitlines()
                      if "refs/heads/retrain/" in line)  # fmt: skip

    controller.cycle()  # drift seen: held for no time yet
    started = clock[0]
    clock[0] = started + timedelta(minutes=30)
    controller.cycle()
    assert branches() == []
    clock[0] = started + timedelta(minutes=61)
    controller.cycle()
    [branch] = branches()
    clock[0] = started + timedelta(minutes=75)
    controller.cycle()  # the same drift, still held: nothing new
    assert branches() == [branch]
    ahead = git("rev-list", "--count", f"main..{branch}", cwd=bare).strip()
    assert ahead == "1"  # one commit on top of the fleet branch: a pull request away

    checkout = tmp_path / "request"
    git("clone", "-q", "-b", branch, url, str(checkout), cwd=tmp_path)
    [request_file] = (checkout / "retraining").glob("*.yaml")
    request = yaml.safe_load(request_file.read_text())
    assert request["kind"] == "RetrainingRequest" and request["spec"]["model"] == MODEL
    assert request["spec"]["version"] == "1.0.0" and set(request["spec"]["devices"]) == SHIFTED
    assert request["spec"]["driftedDevices"] == 2 and request["spec"]["window"] == "6h"
    assert request["spec"]["samples"] == []  # the example model captures no inputs
    validated = CliRunner().invoke(main, ["validate", str(checkout)])
    assert validated.exit_code == 0, validated.output
    assert "RetrainingRequest" in validated.output

    # Merged and the branch deleted, the same drift is not requested again.
    git("fetch", "-q", "origin", "main", cwd=checkout)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "merge", "-q", "--no-edit", "origin/main", cwd=checkout)
    git("push", "-q", "origin", "HEAD:main", cwd=checkout)
    git("branch", "-D", branch, cwd=bare)
    clock[0] = started + timedelta(minutes=90)
    controller.cycle()
    assert branches() == []


def test_the_report_draws_rollout_progress_latency_and_drift_in_a_browser(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    url, controller, clock = drifted(fleet, git_server, tmp_path, build_store)
    for minutes in (10, 20):  # status commits over time: the progress plot has points to draw
        clock[0] += timedelta(minutes=minutes)
        controller.cycle()
    page = tmp_path / "report.html"
    written = CliRunner().invoke(main, ["report", "--repo", url, "--rollout", ROLLOUT, "-o", str(page)])
    assert written.exit_code == 0, written.output
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # no request

    dom = browse(page.as_uri(), tmp_path)
    plots = re.findall(r'<svg class="plot"[^>]*aria-label="([^"]*)"[^>]*data-series="(\d+)" data-points="(\d+)"', dom)
    drawn = {label: (int(series), int(points)) for label, series, points in plots}
    progress = drawn[f"{ROLLOUT}: rollout progress"]
    assert progress[0] == 3 and progress[1] >= 3 * 2  # three series, a point per status commit
    assert drawn[f"{MODEL}: latency per version and profile"] == (3, 3)  # p50, p95, p99 of 1.0.0 on its profile
    figures = drawn[f"{MODEL} 1.0.0: drift per figure (KS; line: threshold)"]
    assert figures[1] == 32  # of 34 figures (32 input features, score, margin): 32 drawn, the worst first
    assert 'data-name="KS"' in dom and "<title>threshold" in dom
    assert FEATURE in dom and "factory-02" in dom
    assert (tmp_path / "page.png").stat().st_size > 10_000  # it painted
