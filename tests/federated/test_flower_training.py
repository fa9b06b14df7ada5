"""Federated training with real Flower processes on loopback: a SuperLink with TLS and SuperNode authentication,
one SuperNode per device authenticated with the device's fleet-CA identity key, the head trained in numpy on each
device's own rows, with and without SecAgg+, and two devices killed mid-round."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from reconciler.api.training import FederatedTrainingSpec
from reconciler.federated import runs
from reconciler.federated.head import Features, accuracy, read_head, train_head

from .digits import Scenario
from .flower_lab import Lab, open_lab, wait_for

DEVICES = 6
ROUNDS = 4


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario(devices=DEVICES)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    found = open_lab(tmp_path_factory.mktemp("flower"))
    yield found
    found.leave_all()
    found.superlink.stop()


def _spec(**changes) -> FederatedTrainingSpec:
    body = {"model": "digits-mlp", "baseVersion": "1.0.0", "version": "1.1.0", "groups": ["cameras"],
            "rounds": ROUNDS, "clientsPerRound": DEVICES, "minClients": 3, "localEpochs": 2, "learningRate": 0.1,
            "batchSize": 32, "roundTimeout": "10m", **changes}  # fmt: skip
    return FederatedTrainingSpec.model_validate(body)


def _devices(lab: Lab, scenario: Scenario, folder: Path, env_of=lambda i: None) -> Path:
    model = folder / "model.onnx"
    scenario.write_base(model)
    for i in range(DEVICES):
        lab.join(f"camera-{i}", model, scenario.write_device_data(folder / f"data-{i}", i), env_of(i))
    empty = folder / "data-empty"
    empty.mkdir()
    lab.join("camera-no-data", model, empty)
    return model


def _train(lab: Lab, spec: FederatedTrainingSpec, scenario: Scenario, folder: Path) -> dict:
    config = runs.prepare(spec, scenario.base, folder / "run", wait_seconds=300)
    run_id = lab.superlink.submit(config)
    wait_for(lambda: lab.superlink.state(run_id).finished, 1500, "the run to finish")
    state = lab.superlink.state(run_id)
    (folder / "serverapp.log").write_text(lab.superlink.logs(run_id))
    assert state.sub_status == "completed", state
    found = runs.result(folder / "run")
    assert found is not None, "the ServerApp wrote no result"
    return found


def _scores(scenario: Scenario, model: Path, folder: Path, spec: FederatedTrainingSpec) -> dict[str, float]:
    """Accuracy on held-out camera rows of the base head, the federated head, and the head trained centrally on
    the pooled rows with the same trainer and as many epochs."""
    weight, bias = read_head(scenario.base)
    features = Features(model, "hidden", weight.shape[0])
    held_out = features(scenario.eval_x)
    federated = runs.trained_model(scenario.base, folder / "run")
    fed_weight, fed_bias = read_head(federated)
    epochs = spec.rounds * spec.local_epochs
    central_weight, central_bias, _ = train_head(weight, bias, features(scenario.pooled[0]), scenario.pooled[1],
                                                 epochs=epochs, learning_rate=spec.learning_rate,
                                                 batch_size=spec.batch_size)  # fmt: skip
    return {"base": accuracy(weight, bias, held_out, scenario.eval_y),
            "federated": accuracy(fed_weight, fed_bias, held_out, scenario.eval_y),
            "central": accuracy(central_weight, central_bias, held_out, scenario.eval_y)}  # fmt: skip


@pytest.mark.timeout(1800)
def test_federated_head_matches_the_central_one_and_beats_the_base(lab, scenario, tmp_path) -> None:
    model = _devices(lab, scenario, tmp_path)
    try:
        spec = _spec(secureAggregation={"enabled": False})
        found = _train(lab, spec, scenario, tmp_path)
    finally:
        lab.leave_all()
    assert found["phase"] == "Succeeded", found
    assert len(found["rounds"]) == ROUNDS
    # Every device with rows trained every round; the one without was asked, declined and never sampled.
    assert sorted(found["joined"]) == [f"camera-{i}" for i in range(DEVICES)]
    assert "no labeled data" in found["declined"]["camera-no-data"]
    assert [r["participants"] for r in found["rounds"]] == [DEVICES] * ROUNDS
    assert found["rounds"][0]["samples"] == len(scenario.pooled[1])
    scores = _scores(scenario, model, tmp_path, spec)
    assert scores["federated"] >= scores["central"] - 0.02, scores
    assert scores["federated"] > scores["base"] + 0.02, scores
    # The devices measured each round's head on their own rows before training, and the proposed one at the end.
    assert found["rounds"][-1]["accuracy"] > found["rounds"][0]["accuracy"]
    assert found["final"]["devices"] == DEVICES and found["final"]["accuracy"] > found["rounds"][0]["accuracy"]
    assert all(r["bytesSent"] > 0 and r["bytesReceived"] > 0 for r in found["rounds"])


@pytest.mark.timeout(1800)
def test_secure_aggregation_finishes_every_round_when_two_devices_die_mid_round(lab, scenario, tmp_path) -> None:
    victims = {0, 1}
    hold = {"EDGE_TRAINING_HANG_AT": "fit-round-2"}
    model = _devices(lab, scenario, tmp_path, lambda i: hold if i in victims else None)
    spec = _spec(secureAggregation={"enabled": True, "shares": 5, "reconstructionThreshold": 3}, rounds=3)
    try:
        config = runs.prepare(spec, scenario.base, tmp_path / "run", wait_seconds=300)
        run_id = lab.superlink.submit(config)
        nodes = [lab.nodes[f"camera-{i}"] for i in sorted(victims)]
        # Both victims are inside round 2's training (held there): kill -9 them and everything they started.
        wait_for(lambda: all(n.progress().get("round") == 2 for n in nodes), 600, "the victims to start round 2")
        for node in nodes:
            for pid in node.child.family():
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: lab.superlink.state(run_id).finished, 1500, "the run to finish")
        found = runs.result(tmp_path / "run")
    finally:
        lab.leave_all()
    assert found is not None and found["phase"] == "Succeeded", found
    participants = [r["participants"] for r in found["rounds"]]
    assert participants == [DEVICES, DEVICES - 2, DEVICES - 2], found["rounds"]
    assert found["rounds"][1]["dropped"] == 2
    scores = _scores(scenario, model, tmp_path, spec)
    assert scores["federated"] > scores["base"] + 0.02, scores
