"""Metrics per task through `edgectl build`: a regression model is scored by mae and rmse against the source, never
by an accuracy of equal floats; its INT8 variant, calibrated on small inputs only and so worse on the larger
evaluation inputs (on purpose), is refused by the MAE gate with the measured rise, and the fp32 variant ships.
The metric functions themselves are checked on numbers worked by hand."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reconciler.optimize.metrics import auroc, evaluate

EDGECTL = Path(sys.executable).parent / "edgectl"
FLEET = Path(__file__).resolve().parents[2] / "fleet-example"
MODEL_YAML = """apiVersion: edgereconciler.io/v1alpha1
kind: Model
metadata:
  name: power-forecast
spec:
  task: regression
  data:
    train: models/power-forecast/data/train.npz
    eval: models/power-forecast/data/eval.npz
    calibration: models/power-forecast/data/calibration.npz
  versions:
    - version: "1.0.0"
      source:
        uri: models/power-forecast/1.0.0/model.keras
        sha256: {digest}
  recipes:
    - profile: arm-cortex-a-cpu
      passes:
        - convert: {{to: onnx}}
        - quantize: {{mode: static, calibrationSamples: 64}}
  gates:
    maxMAEIncrease: 0.02
"""


def regression_fleet(tmp_path: Path, outlier: bool = False, gates: str = "maxMAEIncrease: 0.02",
                     quantize: str = "{mode: static, calibrationSamples: 64}") -> Path:  # fmt: skip
    """A fleet repo with one regression MLP (8 features -> 1 value), trained here in seconds. ``outlier``: a ninth
    input that is always 0, whose first-layer weights are 60 times the layer's largest: nothing changes in float,
    but per-tensor INT8 scales of that layer flatten every other weight."""
    import keras

    repo = tmp_path / "fleet"
    (repo / "profiles").mkdir(parents=True)
    shutil.copy(FLEET / "profiles" / "arm-cortex-a-cpu.yaml", repo / "profiles")
    rng = np.random.default_rng(7)
    weights = rng.standard_normal(8).astype(np.float32)

    def rows(count: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        x = (rng.standard_normal((count, 8)) * scale).astype(np.float32)
        y = (x @ weights + 0.1 * np.sin(x[:, 0])).astype(np.float32)
        return (np.hstack([x, np.zeros((count, 1), np.float32)]) if outlier else x), y

    data = repo / "models" / "power-forecast" / "data"
    data.mkdir(parents=True)
    train = rows(2000, 4.0)
    np.savez(data / "train.npz", x=train[0], y=train[1])
    np.savez(data / "eval.npz", **dict(zip(("x", "y"), rows(400, 4.0), strict=True)))
    # Calibration from inputs 40x smaller than the evaluation's: static INT8 clips the activations it never saw.
    np.savez(data / "calibration.npz", **dict(zip(("x", "y"), rows(200, 4.0 if outlier else 0.1), strict=True)))
    keras.utils.set_random_seed(7)
    layers = [keras.Input((9 if outlier else 8,)), keras.layers.Dense(32, activation="relu")]
    layers += [keras.layers.Dense(32, activation="relu")] if outlier else []
    model = keras.Sequential([*layers, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mae")
    model.fit(train[0], train[1], epochs=30, batch_size=64, verbose=0)
    if outlier:
        kernel, bias = model.layers[0].get_weights()
        kernel[8, :] = 60 * np.abs(kernel).max()
        model.layers[0].set_weights([kernel, bias])
    source = repo / "models" / "power-forecast" / "1.0.0" / "model.keras"
    source.parent.mkdir(parents=True)
    model.save(source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    text = MODEL_YAML.format(digest=digest).replace("maxMAEIncrease: 0.02", gates)
    text = text.replace("{mode: static, calibrationSamples: 64}", quantize)
    (repo / "models" / "power-forecast.yaml").write_text(text)
    return repo


def test_a_regression_model_is_gated_by_its_mae(tmp_path: Path):
    repo = regression_fleet(tmp_path)
    scope = ["--repo", str(repo), "--model", "power-forecast", "--store", str(tmp_path / "store")]
    built = subprocess.run([str(EDGECTL), "build", *scope, "-o", "json"], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    [result] = json.loads(built.stdout)
    reference = result["referenceMetrics"]
    assert set(reference) == {"mae", "rmse", "relativeError", "maxDeviation"} and result["referenceAccuracy"] is None
    variants = {v["name"]: v for v in result["variants"]}
    fp32, int8 = variants["fp32"], variants["static"]
    for variant in (fp32, int8):
        assert variant["measurement"]["accuracy"] is None and variant["measurement"]["agreement"] is None
        assert {"mae", "rmse"} <= set(variant["measurement"]["metrics"])
    assert fp32["selected"] and fp32["failures"] == []
    assert fp32["measurement"]["metrics"]["mae"] == pytest.approx(reference["mae"], rel=1e-3)
    [failure] = int8["failures"]
    rise = (int8["measurement"]["metrics"]["mae"] - reference["mae"]) / reference["mae"] * 100
    assert failure["gate"] == "MAE increase" and failure["limit"] == 2.0
    assert failure["measured"] == pytest.approx(rise, abs=0.01) and rise > 2.0
    table = subprocess.run([str(EDGECTL), "build", *scope], capture_output=True, text=True, timeout=900).stdout
    assert "mae " in table and "MAE increase" in table


def test_accuracy_recovery_keeps_the_sensitive_node_in_float(tmp_path: Path):
    """Per-tensor INT8 flattens a layer with an outlier weight: every calibration method misses the MAE gate;
    measured node by node, that layer gives most back, and the mixed variant with it in float ships."""
    repo = regression_fleet(tmp_path, outlier=True, gates="maxMAEIncrease: 0.2",
                            quantize="{mode: static, perChannel: false, calibrationSamples: 200}")  # fmt: skip
    scope = ["--repo", str(repo), "--model", "power-forecast", "--store", str(tmp_path / "store")]
    built = subprocess.run([str(EDGECTL), "build", *scope, "-o", "json", "--report", str(tmp_path / "report")],
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    [result] = json.loads(built.stdout)
    variants = {v["name"]: v for v in result["variants"]}
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<svg" in page and "static-mixed" in page and "MAE increase" in page and "◆" in page
    assert "build machine: " in page and f"edgectl get benchmarks {result['artifact'][:12]}" in page
    for name in ("static", "static-entropy", "static-percentile"):
        assert [f["gate"] for f in variants[name]["failures"]] == ["MAE increase"], variants[name]
    mixed = variants["static-mixed"]
    assert mixed["failures"] == [] and mixed["precision"] == "int8", mixed
    assert mixed["notes"][0].startswith("kept in float (most sensitive first, measured node by node): ")
    kept = mixed["notes"][0].split(": ", 1)[1].split(", ")
    assert 1 <= len(kept) < 3  # not every weighted node: a mixed model, not fp32 again
    assert mixed["measurement"]["metrics"]["mae"] < variants["static"]["measurement"]["metrics"]["mae"]
    assert any(v["pareto"] for v in result["variants"])


def test_the_metrics_are_the_ones_worked_by_hand():
    outputs = np.array([[2.0], [1.0], [4.0], [0.0]])
    truth = np.array([1.0, 1.0, 2.0, 0.0])
    assert evaluate("regression", outputs, truth, outputs + 0.5) == {
        "mae": 0.75, "rmse": pytest.approx(1.118034, abs=1e-6), "relativeError": 0.75, "maxDeviation": 0.5}  # fmt: skip
    classes = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert evaluate("classification", classes, np.array([0, 1, 1, 1]), classes[::-1]) == {
        "accuracy": 0.75, "agreement": 0.0}  # fmt: skip
    scores = np.array([[0.1], [0.4], [0.35], [0.8]])
    assert evaluate("binary", scores, np.array([0, 0, 1, 1]), threshold=0.3) == {"accuracy": 0.75, "agreement": 1.0}
    # AUROC: of the 4 (positive, negative) pairs, 3 rank the positive higher.
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    found = evaluate("anomaly-detection", scores, np.array([0, 0, 1, 1]), scores * 2)
    assert found == {"auroc": 0.75, "scoreCorrelation": 1.0}
