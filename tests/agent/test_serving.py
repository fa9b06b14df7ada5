"""The device's inference endpoint: predictions from the active slot, a hot switch to a new version with no
failed request, and serving that goes on while the controller is unreachable."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from reconciler.agent.serving import MAX_BODY, ModelServer
from reconciler.agent.slots import ModelSlots
from reconciler.agent.telemetry import TelemetryRecorder
from reconciler.api import load_fleet
from reconciler.artifact.store import ArtifactStore
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize.pipeline import build_scope

from ..device_fleet import FLEET, MODEL, Fleet


def predict(url: str, instances: list) -> tuple[int, dict]:
    body = json.dumps({"instances": instances}).encode()
    request = urllib.request.Request(f"{url}/v1/models/{MODEL}:predict", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_serving_hot_switch_and_offline(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()
    server = ModelServer(agent.data_dir, ("127.0.0.1", 0)).start()
    agent.on_switch = server.reload
    try:
        golden = json.loads((agent.data_dir / "models" / MODEL / "active" / "manifest.json").read_text())["golden"]
        status, body = predict(server.url, golden["inputs"][:4])
        assert status == 200 and body["modelVersion"] == "1.0.0"
        assert np.allclose(body["predictions"], golden["outputs"][:4], atol=golden["tolerance"]["atol"])
        assert predict(server.url, [[1.0, 2.0]])[0] == 400  # wrong input shape: a clear error, not a crash

        # Clients keep calling while the agent switches to 2.0.0: no request fails, both versions answer.
        results: list[tuple[int, str]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                code, reply = predict(server.url, golden["inputs"][:1])
                results.append((code, reply.get("modelVersion", "")))
                stop.wait(0.005)  # steady traffic, not a busy loop that starves the agent on one core

        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        fleet.assign("factory-1", "2.0.0")
        switched = agent.cycle()[MODEL]
        assert switched.installed_version == "2.0.0", switched.message
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
        assert results and all(code == 200 for code, _ in results)
        assert {version for _, version in results} == {"1.0.0", "2.0.0"}

        # The controller goes away: the device keeps serving.
        fleet.server.close()
        status, body = predict(server.url, golden["inputs"][:1])
        assert status == 200 and body["modelVersion"] == "2.0.0"
    finally:
        server.close()


# The Open Inference Protocol (KServe v2) on the same server.

OIP = {"float32": "FP32", "float16": "FP16", "int8": "INT8", "uint8": "UINT8", "int64": "INT64", "int32": "INT32"}


def call(url: str, path: str, body: dict | bytes | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def tensor(name: str, datatype: str, shape: list[int], data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def oip_metadata(spec: dict) -> dict:
    """What the manifest says a tensor is, spelled as the protocol spells it."""
    return {
        "name": spec["name"],
        "datatype": OIP[spec["dtype"]],
        "shape": [-1 if d is None else d for d in spec["shape"]],
    }


def test_v2_readiness_metadata_and_infer_agree_with_predict(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1))
    agent = fleet.agent()
    recorder = TelemetryRecorder("factory-1")
    server = ModelServer(agent.data_dir, ("127.0.0.1", 0), recorder=recorder).start()
    agent.on_switch = server.reload
    try:
        # Nothing installed yet: alive, not ready, and the model is unknown.
        assert call(server.url, "/v2/health/live")[0] == 200
        assert call(server.url, "/v2/health/ready")[0] == 503
        assert call(server.url, f"/v2/models/{MODEL}/ready")[0] == 404
        assert call(server.url, f"/v2/models/{MODEL}")[0] == 404

        fleet.assign("factory-1", "1.0.0")
        agent.cycle()
        assert call(server.url, "/v2/health/ready")[0] == 200
        assert call(server.url, f"/v2/models/{MODEL}/ready")[0] == 200
        assert call(server.url, f"/v2/models/{MODEL}/versions/1.0.0/ready")[0] == 200
        assert call(server.url, f"/v2/models/{MODEL}/versions/9.9.9/ready")[0] == 404
        assert call(server.url, "/v2/models/no-such-model/ready")[0] == 404

        manifest = json.loads((agent.data_dir / "models" / MODEL / "active" / "manifest.json").read_text())
        status, meta = call(server.url, f"/v2/models/{MODEL}")
        assert status == 200
        assert meta == {"name": MODEL, "versions": ["1.0.0"], "platform": "onnxruntime",
                        "inputs": [oip_metadata(manifest["tensors"]["inputs"][0])],
                        "outputs": [oip_metadata(manifest["tensors"]["outputs"][0])]}  # fmt: skip
        [spec] = meta["inputs"]

        golden = manifest["golden"]
        rows = np.asarray(golden["inputs"], dtype=np.float32)
        request = {"id": "req-7", "inputs": [tensor(spec["name"], spec["datatype"], list(rows.shape),
                                                    rows.reshape(-1).tolist())]}  # fmt: skip
        recorder.flush()
        for _ in range(4):  # 32 rows: enough for the sketches to be handed over (MIN_ROWS)
            status, predicted = predict(server.url, golden["inputs"])
            assert status == 200
        by_predict = recorder.flush()
        for _ in range(4):
            status, inferred = call(server.url, f"/v2/models/{MODEL}/infer", request)
            assert status == 200, inferred
        by_infer = recorder.flush()

        assert (inferred["model_name"], inferred["model_version"], inferred["id"]) == (MODEL, "1.0.0", "req-7")
        [out] = inferred["outputs"]
        assert (out["name"], out["datatype"]) == (meta["outputs"][0]["name"], meta["outputs"][0]["datatype"])
        assert out["shape"] == [len(rows), meta["outputs"][0]["shape"][1]] and len(out["data"]) == np.prod(out["shape"])
        # Flattened row-major: reshaped, it is exactly what :predict gave for the same rows on the same server.
        assert np.reshape(out["data"], out["shape"]).tolist() == predicted["predictions"]
        assert np.allclose(np.reshape(out["data"], out["shape"]), golden["outputs"], atol=golden["tolerance"]["atol"])

        # Telemetry counts a v2 request exactly as a :predict one: same classes, same input bins.
        [a], [b] = by_predict, by_infer
        assert b["requests"] == 4 and b["errors"] == 0

        def timeless(summary: dict) -> dict:  # what the clock decides (latency, the interval's end) left out
            untimed = {k: v for k, v in summary["sketches"].items() if k != "latencyMs"}
            return {**{k: v for k, v in summary.items() if k not in ("latencyMs", "ended")}, "sketches": untimed}

        assert timeless(a) == timeless(b) and len(a["sketches"]) > 2

        # Nested data (row-major as well) and the output asked for by name give the same answer; "id" is optional.
        nested = {"inputs": [tensor(spec["name"], "FP32", list(rows.shape), rows.tolist())],
                  "outputs": [{"name": out["name"]}]}  # fmt: skip
        status, again = call(server.url, f"/v2/models/{MODEL}/versions/1.0.0/infer", nested)
        assert status == 200 and "id" not in again and again["outputs"] == inferred["outputs"]
        assert call(server.url, f"/v2/models/{MODEL}/versions/9.9.9/infer", nested)[0] == 404
    finally:
        server.close()


def test_v2_refuses_bad_requests_with_a_reason(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()
    recorder = TelemetryRecorder("factory-1")
    server = ModelServer(agent.data_dir, ("127.0.0.1", 0), recorder=recorder).start()
    try:
        [spec] = call(server.url, f"/v2/models/{MODEL}")[1]["inputs"]
        name, width = spec["name"], spec["shape"][1]
        row = [0.5] * width
        cases = {
            "wrong input name": ({"inputs": [tensor("x", "FP32", [1, width], row)]}, name),
            "wrong datatype": ({"inputs": [tensor(name, "INT8", [1, width], [1] * width)]}, "datatype FP32"),
            "data shorter than shape": ({"inputs": [tensor(name, "FP32", [1, width], row[:-1])]}, "values"),
            "data longer than shape": ({"inputs": [tensor(name, "FP32", [1, width], row + row)]}, "values"),
            "shape the model does not take": ({"inputs": [tensor(name, "FP32", [2, width // 2], row)]}, "shape"),
            "rank the model does not take": ({"inputs": [tensor(name, "FP32", [width], row)]}, "shape"),
            "empty batch": ({"inputs": [tensor(name, "FP32", [0, width], [])]}, "batch"),
            "no inputs": ({"inputs": []}, name),
            "strings as data": ({"inputs": [tensor(name, "FP32", [1, width], ["a"] * width)]}, "FP32"),
            "output it does not give": (
                {"inputs": [tensor(name, "FP32", [1, width], row)], "outputs": [{"name": "nope"}]},
                "nope",
            ),
            "not JSON": (b"{", "JSON"),
        }
        for case, (body, reason) in cases.items():
            status, answer = call(server.url, f"/v2/models/{MODEL}/infer", body)
            assert status == 400, case
            assert set(answer) == {"error"} and reason in answer["error"], (case, answer)

        # Failed v2 requests are counted as failed requests of the model, as :predict's are.
        [summary] = recorder.flush()
        assert summary["requests"] == summary["errors"] == len(cases)

        status, answer = call(
            server.url, "/v2/models/no-such-model/infer", {"inputs": [tensor(name, "FP32", [1, width], row)]}
        )
        assert status == 404 and "error" in answer
        assert recorder.flush() == []

        # The same body limit as :predict: refused from the declared length, before anything is read.
        for path in (f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"):
            connection = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=10)
            connection.putrequest("POST", path)
            connection.putheader("Content-Length", str(MAX_BODY + 1))
            connection.endheaders()
            response = connection.getresponse()
            assert response.status == 413 and str(MAX_BODY) in json.loads(response.read())["error"]
            connection.close()
    finally:
        server.close()


def test_v2_speaks_the_integers_of_an_integer_only_model(build_store: ArtifactStore, tmp_path: Path):
    """An int8 TFLite model takes and gives its quantized integers; dequantized, they are :predict's floats."""
    tree = load_fleet(read_fleet_dir(FLEET))
    [result] = build_scope(tree, FLEET, build_store, models=[MODEL], versions=["1.0.0"], profiles=["coral-npu"])
    assert result.artifact is not None, result.error
    slots = ModelSlots(tmp_path, MODEL)
    slots.activate(slots.stage(build_store.export(result.artifact.id, tmp_path / "artifact")))
    server = ModelServer(tmp_path, ("127.0.0.1", 0)).start()
    try:
        manifest = json.loads((slots.active_link / "manifest.json").read_text())
        [spec_in], [spec_out] = manifest["tensors"]["inputs"], manifest["tensors"]["outputs"]
        status, meta = call(server.url, f"/v2/models/{MODEL}")
        assert status == 200 and meta["platform"] == "tflite"
        assert meta["inputs"] == [oip_metadata(spec_in)] and meta["inputs"][0]["datatype"] == "INT8"
        assert meta["outputs"] == [oip_metadata(spec_out)] and meta["outputs"][0]["datatype"] == "INT8"

        golden = manifest["golden"]
        q_in, q_out = spec_in["quantization"], spec_out["quantization"]
        rows = np.asarray(golden["inputs"], dtype=np.float32)
        quantized = np.clip(np.round(rows / q_in["scale"] + q_in["zeroPoint"]), -128, 127).astype(np.int8)
        request = {"inputs": [tensor(spec_in["name"], "INT8", list(rows.shape), quantized.reshape(-1).tolist())]}
        status, inferred = call(server.url, f"/v2/models/{MODEL}/infer", request)
        assert status == 200, inferred
        [out] = inferred["outputs"]
        assert out["datatype"] == "INT8" and all(isinstance(v, int) and -128 <= v <= 127 for v in out["data"])

        # :predict on the floats those integers stand for sees the same integers, so it must agree exactly.
        floats = ((quantized.astype(np.float32) - q_in["zeroPoint"]) * q_in["scale"]).tolist()
        status, predicted = predict(server.url, floats)
        assert status == 200
        dequantized = (np.reshape(out["data"], out["shape"]).astype(np.float32) - q_out["zeroPoint"]) * q_out["scale"]
        assert dequantized.tolist() == predicted["predictions"]
        assert np.allclose(dequantized, golden["outputs"], atol=golden["tolerance"]["atol"])

        assert (
            call(
                server.url,
                f"/v2/models/{MODEL}/infer",
                {"inputs": [tensor(spec_in["name"], "INT8", [1, 64], [200] * 64)]},
            )[0]
            == 400
        )
    finally:
        server.close()
