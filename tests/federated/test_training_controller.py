"""A FederatedTraining end to end: merged into a fleet repo, the controller starts its SuperLink and calls the
devices of its groups through their assignments; each device's agent joins through the device API (its
certificate's key is what the SuperLink lets in) and starts a SuperNode, which reaches the SuperLink's Fleet API
through the device API (its Control API stays on loopback); after the last round the controller
pushes a branch with the new version and its lineage, which validates and which ``edgectl plan`` shows. A device
without labeled data declines and is never sampled."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from reconciler.agent.slots import ModelSlots
from reconciler.agent.training import Participation
from reconciler.api import load_fleet
from reconciler.cli.main import main
from reconciler.cluster import AssignmentStatus, LocalBackend
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.client import DeviceClient
from reconciler.deviceapi.identity import Identity
from reconciler.deviceapi.server import DeviceAPIServer
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry
from reconciler.federated.head import Features, accuracy, read_head
from reconciler.federated.processes import free_port
from reconciler.gitops.files import read_fleet_dir

from ..git_server import GitServer, git
from .digits import Scenario
from .flower_lab import wait_for

DEVICES = 6
LABELS = {"acme.example/camera": "shelf"}

FLEET = {
    "profiles/camera-cpu.yaml": """\
apiVersion: edgereconciler.io/v1alpha1
kind: DeviceProfile
metadata: {name: camera-cpu}
spec:
  selector: {matchLabels: {acme.example/camera: shelf}}
  runtime: onnxruntime
  format: onnx
  precisions: [fp32]
""",
    "groups/cameras.yaml": """\
apiVersion: edgereconciler.io/v1alpha1
kind: DeviceGroup
metadata: {name: cameras}
spec:
  selector: {matchLabels: {acme.example/camera: shelf}}
""",
    "rollouts/digits-mlp-1.yaml": """\
apiVersion: edgereconciler.io/v1alpha1
kind: Rollout
metadata: {name: digits-mlp-1}
spec:
  model: digits-mlp
  version: "1.0.0"
  groups: [cameras]
  steps:
    - percent: 100
""",
    "trainings/digits-cameras.yaml": """\
apiVersion: edgereconciler.io/v1alpha1
kind: FederatedTraining
metadata: {name: digits-cameras}
spec:
  model: digits-mlp
  baseVersion: "1.0.0"
  version: "1.1.0"
  groups: [cameras]
  rounds: 3
  clientsPerRound: 6
  minClients: 3
  localEpochs: 2
  learningRate: 0.1
  data: {source: local, path: labeled, minSamples: 20}
  secureAggregation: {enabled: false}
  roundTimeout: 10m
""",
}

MODEL = """\
# The shelf cameras' digit reader.
apiVersion: edgereconciler.io/v1alpha1
kind: Model
metadata: {name: digits-mlp}
spec:
  task: classification
  versions:
    # The first version, trained on scans.
    - version: "1.0.0"
      source:
        uri: models/digits-mlp/1.0.0/model.onnx
        sha256: SHA
      lineage: {dataset: sklearn-digits-scans}
  recipes:
    - profile: camera-cpu
      passes: []
"""


@pytest.fixture
def scenario() -> Scenario:
    return Scenario(devices=DEVICES)


@pytest.mark.timeout(1800)
def test_a_merged_training_runs_on_the_devices_and_comes_back_as_a_branch(scenario, git_server: GitServer,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    seed = tmp_path / "seed"
    for path, text in FLEET.items():
        (seed / path).parent.mkdir(parents=True, exist_ok=True)
        (seed / path).write_text(text)
    digest = scenario.write_base(seed / "models/digits-mlp/1.0.0/model.onnx")
    (seed / "models/digits-mlp.yaml").write_text(MODEL.replace("SHA", digest))
    url, work = git_server.create("fleet", seed)

    state = tmp_path / "controller"
    backend = LocalBackend(state)
    names = [f"camera-{i}" for i in range(DEVICES + 1)]
    for name in names:
        backend.register_device(name, LABELS)
    ca = FleetCA.load_or_create(tmp_path / "ca")
    identity = Identity(ca, SQLiteRegistry(state / "devices.sqlite"))
    config = ControllerConfig(url, state, superlink=f"127.0.0.1:{free_port()}", ca_dir=tmp_path / "ca")
    controller = Controller(config, backend)
    api = _device_api(tmp_path, ca, identity, backend, controller)
    participants: dict[str, Participation] = {}
    try:
        for i, name in enumerate(names):
            participants[name] = _device(tmp_path, name, api, identity, scenario, i if i < DEVICES else None)
        controller.cycle()  # submits the run and starts the SuperLink
        status = controller.trainings.state["digits-cameras"]
        assert status["phase"] == "Running", status

        def finished() -> bool:
            controller.cycle()
            for participant in participants.values():  # an agent's cycle: take part, report with the model
                figures = participant.converge(participant.client.assignments())
                for model, extra in figures.items():
                    participant.client.report(model, AssignmentStatus("Healthy", installed_version="1.0.0",
                                                                      extra=extra))  # fmt: skip
            return controller.trainings.state["digits-cameras"]["phase"] in ("Succeeded", "Failed")

        wait_for(finished, 1500, "the training to finish")
        reports = backend.statuses()
    finally:
        for participant in participants.values():
            participant.stop()
        controller.trainings.close()
        api.close()
    state_of = controller.trainings.state["digits-cameras"]
    assert state_of["phase"] == "Succeeded", state_of
    assert sorted(state_of["joined"]) == names[:DEVICES]
    # The device without rows declined on its own and never joined: its report says why.
    assert reports[("camera-6", "digits-mlp")].extra["trainingState"] == "Declined"
    assert "0 labeled rows, fewer than the 20" in reports[("camera-6", "digits-mlp")].extra["trainingMessage"]
    assert all(r["participants"] == DEVICES for r in state_of["rounds"])

    # The branch: the Model's new version with its lineage, the source it names, and comments kept.
    git("fetch", "-q", "origin", cwd=work)
    git("checkout", "-q", "-B", "training", "origin/training/digits-cameras", cwd=work)
    tree = load_fleet(read_fleet_dir(work))
    version = tree.models["digits-mlp"].version("1.1.0")
    assert version is not None and version.lineage.federated is not None
    assert version.lineage.federated.participants == DEVICES
    assert version.lineage.federated.samples == len(scenario.pooled[1])
    assert version.lineage.dataset == "federated:digits-cameras"
    source = (work / version.source.uri).read_bytes()
    assert version.source.uri == "models/digits-mlp/1.1.0/model.onnx"
    assert hashlib.sha256(source).hexdigest() == version.source.sha256
    assert "# The first version, trained on scans." in (work / "models/digits-mlp.yaml").read_text()
    weight, bias = read_head(onnx.load_from_string(source))
    features = Features(work / "models/digits-mlp/1.0.0/model.onnx", "hidden", weight.shape[0])(scenario.eval_x)
    base_weight, base_bias = read_head(scenario.base)
    assert accuracy(weight, bias, features, scenario.eval_y) > accuracy(base_weight, base_bias, features,
                                                                        scenario.eval_y) + 0.02  # fmt: skip

    # A person reads the pull request: the plan shows the new version; nothing rolls it out yet.
    planned = CliRunner().invoke(main, ["plan", "--repo", str(work), "--base", "origin/main", "--head", "HEAD",
                                        "--state-dir", str(state), "-o", "json"])  # fmt: skip
    assert planned.exit_code == 0, planned.output
    assert "1.1.0" in planned.output

    # The status: rounds, who joined and who declined, in Git and through edgectl.
    written = controller.trainings.status(load_fleet(read_fleet_dir(work)).trainings["digits-cameras"], reports)
    assert written.declined["camera-6"].startswith("0 labeled rows")
    assert written.joined == tuple(names[:DEVICES]) and len(written.rounds) == 3
    status_branch = git("ls-remote", url, cwd=work)
    assert "training/digits-cameras" in status_branch
    git("checkout", "-q", "main", cwd=work)
    git("pull", "-q", "origin", "main", cwd=work)
    shown = CliRunner().invoke(main, ["get", "trainings", "--repo", url])
    assert shown.exit_code == 0, shown.output
    [row] = shown.output.splitlines()[1:]
    assert row.split()[:8] == ["digits-cameras", "digits-mlp", "1.0.0", "1.1.0", "Succeeded", "3/3", "6", "1"], row
    described = CliRunner().invoke(main, ["describe", "training", "digits-cameras", "--repo", url])
    assert described.exit_code == 0, described.output
    assert "Branch:       training/digits-cameras" in described.output
    assert "camera-6" in described.output and "0 labeled rows" in described.output


def _device_api(root: Path, ca: FleetCA, identity: Identity, backend, controller: Controller) -> DeviceAPIServer:
    cert, key = ca.issue_server(["127.0.0.1", "localhost"], timedelta(days=1), datetime.now(UTC))
    (root / "api.crt").write_bytes(cert)
    (root / "api.key").write_bytes(key)
    return DeviceAPIServer(("127.0.0.1", 0), identity, lambda: backend,
                           ca.server_context(root / "api.crt", root / "api.key"),
                           on_join=lambda b, device, name, public: controller.trainings.admit(
                               b.assignments_for(device), device, name, public),
                           fleet_upstream=controller.trainings.upstream).start()  # fmt: skip


def _device(root: Path, name: str, api: DeviceAPIServer, identity: Identity, scenario: Scenario,
            rows: int | None) -> Participation:  # fmt: skip
    """A device serving the base version (installed in its active slot) with its labeled rows, if any."""
    data_dir = root / "devices" / name
    token = identity.registry.create_token(timedelta(hours=1), datetime.now(UTC), device=name)
    client = DeviceClient(api.url, name, data_dir / "identity", root / "ca" / "ca.crt", token)
    client.ensure_identity()
    artifact = root / "artifact" / name
    scenario.write_base(artifact / "model.onnx")
    (artifact / "manifest.json").write_text(json.dumps({"model": "digits-mlp", "version": "1.0.0"}))
    slots = ModelSlots(data_dir, "digits-mlp")
    slots.activate(slots.stage(artifact))
    assert slots.state().active_version == "1.0.0"
    labeled = data_dir / "labeled"
    if rows is not None:
        scenario.write_device_data(labeled, rows)
    else:
        labeled.mkdir(parents=True)
        np.savez(labeled / "rows.npz", x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    return Participation(data_dir, name, client)
