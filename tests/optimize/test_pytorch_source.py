"""PyTorch in: a small CNN trained with torch on scikit-learn's digits, saved with ``torch.export.save``, goes
through `edgectl build` for the ONNX INT8 Cortex-A profile. The program's own outputs are the reference, so the
ONNX export is measured like any candidate; a .pt2 that is not an export program is refused by name."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reconciler.artifact.runtime import ModelRunner
from reconciler.artifact.store import ArtifactStore

EDGECTL = Path(sys.executable).parent / "edgectl"
FLEET = Path(__file__).resolve().parents[2] / "fleet-example"
MODEL_YAML = """apiVersion: edgereconciler.io/v1alpha1
kind: Model
metadata:
  name: digits-torch
spec:
  data:
    eval: models/digits-torch/data/eval.npz
    calibration: models/digits-torch/data/calibration.npz
  versions:
    - version: "1.0.0"
      source: {{uri: models/digits-torch/1.0.0/model.pt2, sha256: {digest}}}
  recipes:
    - profile: arm-cortex-a-cpu
      passes:
        - convert: {{to: onnx, opset: 18}}
        - quantize: {{mode: static, calibrationSamples: 100}}
  gates:
    maxAccuracyDrop: 0.03
"""


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), y.astype(np.int64)


def torch_fleet(tmp_path: Path, source_bytes: bytes | None = None) -> Path:
    """A fleet repo with the digits CNN as a torch.export program (or ``source_bytes`` in its place)."""
    import torch
    from torch import nn

    repo = tmp_path / "fleet"
    (repo / "profiles").mkdir(parents=True)
    shutil.copy(FLEET / "profiles" / "arm-cortex-a-cpu.yaml", repo / "profiles")
    x, y = digits()
    source = repo / "models" / "digits-torch" / "1.0.0" / "model.pt2"
    source.parent.mkdir(parents=True)
    if source_bytes is None:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(),
            nn.Linear(64, 10),
        )  # fmt: skip
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        inputs, labels = torch.from_numpy(x[:1300]), torch.from_numpy(y[:1300])
        for _ in range(15):
            for start in range(0, len(inputs), 64):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs[start : start + 64]), labels[start : start + 64])
                loss.backward()
                optimizer.step()
        model.eval()
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(model, (inputs[:2],), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(source))
    else:
        source.write_bytes(source_bytes)
    data = repo / "models" / "digits-torch" / "data"
    data.mkdir(parents=True)
    np.savez(data / "eval.npz", x=x[1300:], y=y[1300:])
    np.savez(data / "calibration.npz", x=x[:100], y=y[:100])
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    (repo / "models" / "digits-torch.yaml").write_text(MODEL_YAML.format(digest=digest))
    return repo


def build(repo: Path, store: Path) -> subprocess.CompletedProcess:
    scope = ["--repo", str(repo), "--model", "digits-torch", "--store", str(store), "-o", "json"]
    return subprocess.run([str(EDGECTL), "build", *scope], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def torch_build(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("torch")
    repo = torch_fleet(tmp_path)
    built = build(repo, tmp_path / "store")
    return tmp_path, repo, built


def test_a_pytorch_program_builds_to_int8_onnx(torch_build):
    _, _, built = torch_build
    assert built.returncode == 0, built.stderr[-3000:]
    [result] = json.loads(built.stdout)
    assert result["error"] is None and result["artifact"], result["error"]
    [chosen] = [v for v in result["variants"] if v["selected"]]
    fp32 = next(v for v in result["variants"] if v["name"] == "fp32")
    assert chosen["precision"] == "int8"
    assert chosen["measurement"]["size_bytes"] < 0.4 * fp32["measurement"]["size_bytes"]
    # The reference is torch's own accuracy: the trained CNN is far above chance, and the exported fp32 graph
    # agrees with the program on every evaluation row.
    assert result["referenceAccuracy"] > 0.85
    assert fp32["measurement"]["agreement"] == 1.0
    assert abs(fp32["measurement"]["accuracy"] - result["referenceAccuracy"]) < 1e-9


def test_the_artifact_reproduces_its_golden_outputs(torch_build, tmp_path):
    root, _, built = torch_build
    assert built.returncode == 0, built.stderr[-3000:]
    [result] = json.loads(built.stdout)
    store = ArtifactStore(root / "store")
    manifest = store.read_manifest(result["artifact"])
    assert manifest["lineage"]["source"]["uri"].endswith("model.pt2")
    assert [t["name"] for t in manifest["tensors"]["inputs"]] == ["input_0"]
    assert manifest["tensors"]["inputs"][0]["shape"][0] is None  # the program's dynamic batch stays dynamic
    model = tmp_path / "model.onnx"
    record = store.get_artifact(result["artifact"])
    model.write_bytes(store.read_blob(record.files["model.onnx"]))
    golden = manifest["golden"]
    outputs = ModelRunner(model, "onnx").run(np.array(golden["inputs"], dtype=np.float32))
    np.testing.assert_allclose(outputs, golden["outputs"], atol=golden["tolerance"]["atol"])


def test_a_pickle_in_place_of_a_program_is_refused_by_name(tmp_path):
    import pickle

    repo = torch_fleet(tmp_path, source_bytes=pickle.dumps({"state_dict": [1, 2, 3]}))
    built = build(repo, tmp_path / "store")
    assert built.returncode == 1
    [result] = json.loads(built.stdout)
    assert result["artifact"] is None
    assert "digits-torch@1.0.0 for arm-cortex-a-cpu" in result["error"]
    assert "not a torch.export program" in result["error"]


@pytest.mark.parametrize("dynamic", [True, False], ids=["batch-2-to-16", "fixed-batch-4"])
def test_a_program_runs_in_the_batches_it_was_exported_for(dynamic):
    """A program exported for batches of 2 to 16 (or exactly 4) still runs any number of rows: at most the upper
    bound at a time, the last batch padded up to what the program accepts."""
    import torch
    from torch import nn

    from reconciler.optimize.pytorch import run_program

    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    shapes = ({0: torch.export.Dim("batch", min=2, max=16)},) if dynamic else None
    program = torch.export.export(model, (torch.zeros(4, 1, 8, 8),), dynamic_shapes=shapes)
    x = np.random.default_rng(3).standard_normal((33, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_program(program, x), expected, rtol=1e-5, atol=1e-5)
