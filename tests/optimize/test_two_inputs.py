"""An ONNX model with two inputs and two outputs goes through `edgectl build` for the ONNX INT8 Cortex-A profile:
its data files name one array per input, calibration feeds both, the golden vectors carry both, and a device runs
the artifact (health check, and the v2 endpoint with two named tensors). Data that does not name the model's
inputs is refused with the names on both sides."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from reconciler.agent.health import health_check
from reconciler.agent.serving import ModelServer
from reconciler.agent.slots import ModelSlots
from reconciler.artifact.runtime import ModelRunner, from_lists
from reconciler.artifact.store import ArtifactStore

EDGECTL = Path(sys.executable).parent / "edgectl"
FLEET = Path(__file__).resolve().parents[2] / "fleet-example"
MODEL = "camera-and-meta"
MODEL_YAML = """apiVersion: edgereconciler.io/v1alpha1
kind: Model
metadata:
  name: camera-and-meta
spec:
  data:
    eval: models/camera-and-meta/data/eval.npz
    calibration: models/camera-and-meta/data/calibration.npz
  versions:
    - version: "1.0.0"
      source: {{uri: models/camera-and-meta/1.0.0/model.onnx, sha256: {digest}}}
  recipes:
    - profile: arm-cortex-a-cpu
      passes:
        - convert: {{to: onnx}}
        - quantize: {{mode: static, calibrationSamples: 128}}
  gates:
    maxAccuracyDrop: 0.05
"""


def two_input_model() -> onnx.ModelProto:
    """image [N, 64] and meta [N, 8] -> concat -> dense 72x96 -> relu -> dense 96x4: logits [N, 4] and the hidden
    features [N, 96] as a second output. Seeded weights."""
    rng = np.random.default_rng(11)
    w1 = numpy_helper.from_array((rng.standard_normal((72, 96)) * 0.2).astype(np.float32), "w1")
    b1 = numpy_helper.from_array((rng.standard_normal(96) * 0.1).astype(np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((96, 4)) * 0.2).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(4, np.float32), "b2")
    nodes = [
        helper.make_node("Concat", ["image", "meta"], ["joined"], axis=1),
        helper.make_node("MatMul", ["joined", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["features"]),
        helper.make_node("MatMul", ["features", "w2"], ["l"]),
        helper.make_node("Add", ["l", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "two-inputs",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 64]),
         helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 96])],
        [w1, b1, w2, b2],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_input_fleet(tmp_path: Path, arrays=("image", "meta")) -> Path:
    """The fleet repo; the data files hold the arrays named in ``arrays`` (and y: the model's own classes)."""
    repo = tmp_path / "fleet"
    (repo / "profiles").mkdir(parents=True)
    shutil.copy(FLEET / "profiles" / "arm-cortex-a-cpu.yaml", repo / "profiles")
    model = two_input_model()
    source = repo / "models" / MODEL / "1.0.0" / "model.onnx"
    source.parent.mkdir(parents=True)
    source.write_bytes(model.SerializeToString())
    rng = np.random.default_rng(5)
    runner = ModelRunner(source, "onnx")
    data = repo / "models" / MODEL / "data"
    data.mkdir(parents=True)
    for name, rows in (("eval", 300), ("calibration", 128)):
        inputs = {
            "image": rng.random((rows, 64), np.float32),
            "meta": rng.standard_normal((rows, 8)).astype(np.float32),
        }
        labels = np.argmax(runner.run(inputs), axis=1)
        given = {key: inputs.get(key, inputs["image"]) for key in arrays}
        np.savez(data / f"{name}.npz", y=labels, **given)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    (repo / "models" / f"{MODEL}.yaml").write_text(MODEL_YAML.format(digest=digest))
    return repo


def build(repo: Path, store: Path) -> subprocess.CompletedProcess:
    scope = ["--repo", str(repo), "--model", MODEL, "--store", str(store), "-o", "json"]
    return subprocess.run([str(EDGECTL), "build", *scope], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-inputs")
    result = build(two_input_fleet(root), root / "store")
    assert result.returncode == 0, result.stderr[-3000:]
    [profile_build] = json.loads(result.stdout)
    return ArtifactStore(root / "store"), profile_build


def test_a_two_input_model_builds_to_int8_with_both_inputs_calibrated(built):
    _, result = built
    assert result["error"] is None and result["artifact"], result["error"]
    [chosen] = [v for v in result["variants"] if v["selected"]]
    fp32 = next(v for v in result["variants"] if v["name"] == "fp32")
    assert chosen["precision"] == "int8"
    assert chosen["measurement"]["size_bytes"] < 0.5 * fp32["measurement"]["size_bytes"]
    assert result["referenceAccuracy"] == 1.0  # the labels are the source's own classes
    assert fp32["measurement"]["accuracy"] == 1.0


def test_the_manifest_names_both_inputs_and_the_golden_vectors_carry_both(built, tmp_path):
    store, result = built
    manifest = store.read_manifest(result["artifact"])
    assert [t["name"] for t in manifest["tensors"]["inputs"]] == ["input_0", "input_1"]
    assert [t["shape"] for t in manifest["tensors"]["inputs"]] == [[None, 64], [None, 8]]
    assert [t["name"] for t in manifest["tensors"]["outputs"]] == ["output_0", "output_1"]
    golden = manifest["golden"]
    assert sorted(golden["inputs"]) == ["input_0", "input_1"]
    slot = store.export(result["artifact"], tmp_path / "artifact")
    outputs = ModelRunner(slot / "model.onnx", "onnx").run(from_lists(golden["inputs"]))
    np.testing.assert_allclose(outputs, golden["outputs"], atol=golden["tolerance"]["atol"])
    report = health_check(slot, manifest)
    assert report.passed, report.reason


def test_a_device_serves_both_inputs_through_v2(built, tmp_path):
    store, result = built
    slots = ModelSlots(tmp_path, MODEL)
    slots.activate(slots.stage(store.export(result["artifact"], tmp_path / "artifact")))
    server = ModelServer(tmp_path, ("127.0.0.1", 0)).start()
    try:
        manifest = json.loads((slots.active_link / "manifest.json").read_text())
        golden = from_lists(manifest["golden"]["inputs"])
        tensors = [{"name": name, "datatype": "FP32", "shape": list(rows.shape), "data": rows.reshape(-1).tolist()}
                   for name, rows in golden.items()]  # fmt: skip
        status, answer = post(f"{server.url}/v2/models/{MODEL}/infer", {"inputs": tensors})
        assert status == 200, answer
        [out] = answer["outputs"]
        got = np.reshape(out["data"], out["shape"])
        np.testing.assert_allclose(got, manifest["golden"]["outputs"], atol=manifest["golden"]["tolerance"]["atol"])
        status, answer = post(f"{server.url}/v2/models/{MODEL}/infer", {"inputs": tensors[:1]})
        assert status == 400 and "exactly 2 tensor(s), 'input_0', 'input_1'" in answer["error"]
        status, answer = post(f"{server.url}/v1/models/{MODEL}:predict", {"instances": [[0.0] * 64]})
        assert status == 400 and "use the v2 infer endpoint" in answer["error"]
    finally:
        server.close()


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (("image",), "data.eval: arrays image, but the model's inputs are image, meta"),
        (("x",), "data.eval: the model takes 2 inputs (image, meta): name one array after each instead of 'x'"),
    ],
)
def test_data_that_does_not_name_the_inputs_is_refused_with_both_sides(tmp_path, arrays, message):
    built = build(two_input_fleet(tmp_path, arrays), tmp_path / "store")
    assert built.returncode == 1
    [result] = json.loads(built.stdout)
    assert result["artifact"] is None and message in result["error"], result["error"]
