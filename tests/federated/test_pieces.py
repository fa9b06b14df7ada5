"""The parts of a federated training that need no Flower process: where calls go, what a device's rows must look
like, how the new version is written into the Model's file, and what a status file holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reconciler.api import SourceFile, load_fleet
from reconciler.api.status import TrainingPhase, TrainingRound, TrainingStatus
from reconciler.controller.training import Trainings, lineage, new_source_path
from reconciler.federated.data import labeled_rows
from reconciler.gitops.edit import add_model_version
from reconciler.gitops.source import PermanentGitError
from reconciler.plan import Desired
from reconciler.plan.desired import TrainingCall, training_calls

CORPUS = Path(__file__).parents[1] / "api" / "corpus" / "base"
TRAINING = b"""\
apiVersion: edgereconciler.io/v1alpha1
kind: FederatedTraining
metadata: {name: digits-fl}
spec:
  model: digits
  baseVersion: "1.0.0"
  version: "1.1.0"
  groups: [stores]
  data: {path: labeled, minSamples: 30}
"""


def _tree():
    files = [SourceFile(f"base/{p.name}", p.read_bytes()) for p in CORPUS.glob("*.yaml")]
    return load_fleet([*files, SourceFile("trainings/digits-fl.yaml", TRAINING)])


def test_calls_go_to_fleet_devices_of_the_groups_on_the_base_version_only() -> None:
    tree = _tree()
    stores = dict(tree.groups["stores"].spec.selector.match_labels)
    desired = {
        ("s1", "digits"): Desired("s1", "digits", "1.0.0", "p", "r", None, False),
        ("s2", "digits"): Desired("s2", "digits", "2.0.0", "p", "r", None, True),  # already on another version
        ("s3", "digits"): Desired("s3", "digits", "1.0.0", "p", "r", None, False, benchmark=True),  # a lab device
        ("o1", "digits"): Desired("o1", "digits", "1.0.0", "p", "r", None, False),  # not in the groups
    }
    labels = {"s1": stores, "s2": stores, "s3": stores, "o1": {}}
    calls = training_calls(tree, desired, labels, {"digits-fl": "link.example:9092"})
    assert calls == {("s1", "digits"): TrainingCall("digits-fl", "link.example:9092", "local", "labeled", 30)}
    assert training_calls(tree, desired, labels, {}) == {}
    assert TrainingCall.from_json(calls[("s1", "digits")].to_json()) == calls[("s1", "digits")]


def test_only_a_called_device_is_admitted_and_only_to_a_running_superlink(tmp_path) -> None:
    call = TrainingCall("digits-fl", "link.example:9092", "local", "labeled", 30)
    assignments = {"digits": (Desired("s1", "digits", "1.0.0", "p", "r", None, False, training=call), 1)}
    trainings = Trainings(source=None, state_dir=tmp_path)  # type: ignore[arg-type]
    assert trainings.admit(assignments, "s1", "other-training", None) is False
    assert trainings.admit(assignments, "s2", "digits-fl", None) is False  # someone else's assignment
    assert trainings.admit(assignments, "s1", "digits-fl", None) == "the SuperLink is not running"


@pytest.mark.parametrize(("files", "reason"), [
    ({}, "no .npz file"),
    ({"a.npz": {"x": np.zeros((3, 2))}}, "holds 'x' (inputs) and 'y'"),
    ({"a.npz": {"x": np.zeros((3, 2)), "y": np.zeros(2)}}, "3 inputs but 2 labels"),
    ({"a.npz": {"x": np.zeros((3, 2)), "y": np.array([0.5, 1, 2])}}, "class indices"),
    ({"a.npz": {"x": np.zeros((2, 2)), "y": np.zeros(2)}, "b.npz": {"x": np.zeros((2, 3)), "y": np.zeros(2)}},
     "rows of shape (3,)"),
    ({"a.npz": {"x": np.array([{"a": 1}], dtype=object), "y": np.zeros(1)}}, "not a readable .npz"),
])  # fmt: skip
def test_unusable_rows_are_refused_with_the_reason(tmp_path: Path, files: dict, reason: str) -> None:
    for name, arrays in files.items():
        np.savez(tmp_path / name, **arrays)
    rows, why = labeled_rows(tmp_path)
    assert rows is None and reason in why, why
    assert "is not a folder" in labeled_rows(tmp_path / "missing")[1]


def test_rows_of_every_file_are_read_in_name_order(tmp_path: Path) -> None:
    np.savez(tmp_path / "b.npz", x=np.ones((2, 3)), y=np.array([1, 1]))
    np.savez(tmp_path / "a.npz", x=np.zeros((1, 3)), y=np.array([0]))
    (x, y), why = labeled_rows(tmp_path)
    assert why == "" and x.shape == (3, 3) and y.tolist() == [0, 1, 1]
    assert labeled_rows(tmp_path, max_bytes=10)[0] is None


MODEL_FILE = """\
# A model.
apiVersion: edgereconciler.io/v1alpha1
kind: Model
metadata: {name: digits}
spec:
  versions:
    # The first.
    - version: "1.0.0"
      source: {uri: models/digits/1.0.0/model.onnx, sha256: AAA}
      lineage:
        metrics: {accuracy: 0.9}

  # Recipes follow.
  recipes: []
---
apiVersion: edgereconciler.io/v1alpha1
kind: Model
metadata: {name: other}
spec:
  versions: [{version: "1.0.0", source: {uri: o.onnx, sha256: BBB}}]
""".replace("AAA", "a" * 64).replace("BBB", "b" * 64)


def test_a_version_is_appended_in_place_keeping_comments_and_quoting() -> None:
    entry = {"version": "1.10", "source": {"uri": "models/digits/1.10/model.onnx", "sha256": "c" * 64},
             "lineage": {"dataset": "federated:digits-fl"}}  # fmt: skip
    edited = add_model_version(MODEL_FILE, "models.yaml", "digits", entry)
    assert "# The first." in edited and "  # Recipes follow." in edited
    assert edited.index("1.10") < edited.index("# Recipes follow.")
    tree = load_fleet([SourceFile("models.yaml", edited.encode())])
    assert [v.version for v in tree.models["digits"].spec.versions] == ["1.0.0", "1.10"]
    assert tree.models["other"].spec.versions[0].version == "1.0.0"
    with pytest.raises(PermanentGitError, match="no block list of versions"):
        add_model_version(MODEL_FILE, "models.yaml", "other", entry)
    with pytest.raises(PermanentGitError, match="no block list"):
        add_model_version(MODEL_FILE, "models.yaml", "missing", entry)


def test_the_new_source_sits_beside_the_base() -> None:
    assert new_source_path("models/x/1.0.0/model.onnx", "1.0.0", "1.1.0") == "models/x/1.1.0/model.onnx"
    assert new_source_path("models/x.onnx", "1.0.0", "1.1.0") == "models/x-1.1.0.onnx"


def test_a_training_status_reads_back_what_it_wrote() -> None:
    status = TrainingStatus("digits-fl", TrainingPhase.SUCCEEDED, "1.1.0 proposed", "digits", "1.0.0", "1.1.0", True,
                            "2026-12-05T08:00:00+00:00", "2026-12-05T08:10:00+00:00", ("s1", "s2"),
                            {"s3": "0 labeled rows"}, (TrainingRound(1, 2, 300, 12.5, 0.7, 0.81, 1, 900, 1200),),
                            "training/digits-fl", "d" * 64)  # fmt: skip
    assert TrainingStatus.from_yaml(status.to_yaml(), "digits-fl") == status
    assert TrainingStatus.from_yaml(b"phase: Sideways", "x").phase is TrainingPhase.PENDING


def test_lineage_names_the_training_and_its_figures() -> None:
    training = _tree().trainings["digits-fl"]
    state = {"rounds": [{"accuracy": 0.61}, {"accuracy": 0.7512345, "loss": 0.5}], "joined": {"s1": 100, "s2": 50}}
    found = lineage(training, state, "f" * 40)
    assert found["federated"] == {"training": "digits-fl", "baseVersion": "1.0.0", "rounds": 2, "participants": 2,
                                  "samples": 150, "secureAggregation": True}  # fmt: skip
    assert found["metrics"] == {"federatedAccuracy": 0.75123, "federatedLoss": 0.5}
