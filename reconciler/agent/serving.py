"""Local inference endpoint of the device: serves the active slot of each model, with no controller needed.

Who calls it: ``edgectl agent --serve HOST:PORT`` (the agent switches models through :meth:`reload`), and
applications on the device. It binds where it is told; the CLI defaults to loopback, since nothing here
authenticates a caller. Two JSON dialects on one port, so that clients of either serving stack work as is.
In the style of TensorFlow Serving and KServe v1::

    POST /v1/models/<model>:predict   {"instances": [[...]]} -> {"predictions": [[...]], "modelVersion": "2.0.0"}
    GET  /v1/models/<model>           -> {"name": ..., "version": ..., "state": "AVAILABLE"}
    GET  /healthz

and the Open Inference Protocol (KServe v2), where ``[/versions/<v>]`` must name the version being served::

    GET  /v2/health/live              200 while the process runs
    GET  /v2/health/ready             200 once a model is loaded, 503 before
    GET  /v2                          server metadata
    GET  /v2/models/<model>[/versions/<v>][/ready]   model metadata (tensors from the manifest), readiness
    POST /v2/models/<model>[/versions/<v>]/infer
         {"id"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}]}
         -> {"model_name", "model_version", "id"?, "outputs": [{"name", "shape", "datatype", "data"}]}

The v2 signature is the runner's: every input of the manifest (a request names each once) and the first
output. ``:predict`` speaks for single-input models only and sends the others to v2. Tensors
keep the model's own datatype: an integer-only model takes and gives its quantized integers, which this
module maps to and from the floats the runner speaks with the manifest's scale and zero point. Both
dialects therefore run the same floats through the same runner, and record the same telemetry.

Hot switch without dropped requests: a reload builds the new runtime session first, then replaces one
reference; requests already running finish on the session they started with. Every request is counted into
the model's telemetry (latency, errors, predicted class, input statistics) when a recorder is attached.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from importlib import metadata
from pathlib import Path

import numpy as np

from reconciler.artifact.runtime import Inputs, ModelRunner
from reconciler.httpserver import BackgroundServer, JSONHandler

from .faults import crash_point
from .slots import ModelSlots

_PREDICT = re.compile(r"^/v1/models/([a-z0-9][-a-z0-9.]{0,62}):predict$")
_MODEL = re.compile(r"^/v1/models/([a-z0-9][-a-z0-9.]{0,62})$")
_V2 = re.compile(r"^/v2/models/(?P<model>[a-z0-9][-a-z0-9.]{0,62})(?:/versions/(?P<version>[^/]{1,128}))?"
                 r"(?P<verb>/ready|/infer)?$")  # fmt: skip
MAX_BODY = 16 * 1024 * 1024

Recorder = Callable[[str, str, np.ndarray | None, np.ndarray | None, float, bool | str], None]
"""(model, version, inputs, outputs, latency seconds, failed: False or the error's kind, input or inference) -> None"""

DATATYPES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
             "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
             "float32": "FP32", "float64": "FP64"}  # fmt: skip
"""numpy dtype name (as manifests write it) -> Open Inference Protocol datatype"""
PLATFORMS = {"onnx": "onnxruntime", "tflite": "tflite"}


class InvalidRequest(ValueError):
    """A request this endpoint refuses: answered 400 with the message, and counted as a failed request."""


@dataclass(frozen=True)
class Tensor:
    """A tensor of the v2 signature: its OIP name, datatype and shape (-1 where free), and the quantization
    that relates its integers to the runner's floats (scale 0: none)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    scale: float = 0.0
    zero_point: int = 0

    @classmethod
    def from_spec(cls, spec: dict) -> Tensor:
        quantization = spec.get("quantization") or {}
        shape = tuple(-1 if d is None else int(d) for d in spec["shape"])
        dtype = np.dtype(spec["dtype"])
        if dtype.name not in DATATYPES:
            raise ValueError(f"no OIP datatype for {dtype.name}")
        return cls(spec["name"], dtype, shape, float(quantization.get("scale", 0.0)),
                   int(quantization.get("zeroPoint", 0)))  # fmt: skip

    @property
    def datatype(self) -> str:
        return DATATYPES[self.dtype.name]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check_shape(self, shape: list[int]) -> None:
        """The batch dimension is free (the runner feeds what it is given); every other known one is not."""
        if (
            len(shape) != len(self.shape)
            or not shape
            or shape[0] < 1
            or any(want not in (-1, got) for want, got in zip(self.shape[1:], shape[1:], strict=True))
        ):
            raise InvalidRequest(f"shape {shape} does not fit input {self.name!r} of shape {list(self.shape)} "
                                 "(the first dimension is the batch, at least 1)")  # fmt: skip

    def to_float(self, data: object, shape: list[int]) -> np.ndarray:
        """The request's ``data`` (flat, or nested to ``shape``: both are row-major) as the runner's floats."""
        try:
            values = np.asarray(data)
        except (ValueError, OverflowError) as exc:
            raise InvalidRequest(f"data of {self.name!r} is not a list of numbers: {str(exc)[:100]}") from exc
        if values.ndim == 0:
            raise InvalidRequest(f"data of {self.name!r} must be a list")
        if values.size != math.prod(shape):
            raise InvalidRequest(f"data of {self.name!r} holds {values.size} values; shape {shape} needs "
                                 f"{math.prod(shape)}")  # fmt: skip
        accepted = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}.get(self.dtype.kind, "")
        if values.size and values.dtype.kind not in accepted:
            raise InvalidRequest(f"data of {self.name!r} must be {self.datatype} values")
        if self.dtype.kind in "iu" and values.size:
            info = np.iinfo(self.dtype)
            if values.min() < info.min or values.max() > info.max:
                raise InvalidRequest(f"data of {self.name!r} is out of the {self.datatype} range")
        values = values.reshape(shape)
        if self.scale:
            return ((values.astype(np.float64) - self.zero_point) * self.scale).astype(np.float32)
        return values.astype(np.float32)

    def from_float(self, values: np.ndarray) -> np.ndarray:
        """The runner's floats in this tensor's datatype: requantized when the model gives integers."""
        if self.dtype.kind in "iu":
            if self.scale:
                values = values.astype(np.float64) / self.scale + self.zero_point
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(self.dtype)
        return values.astype(self.dtype)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    output: Tensor

    @classmethod
    def from_manifest(cls, manifest: dict) -> Signature | None:
        """None when the manifest has no usable tensor specs: :predict still serves, v2 answers 500."""
        try:
            tensors = manifest["tensors"]
            inputs = tuple(Tensor.from_spec(spec) for spec in tensors["inputs"])
            return cls(inputs, Tensor.from_spec(tensors["outputs"][0])) if inputs else None
        except (KeyError, IndexError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Loaded:
    model: str
    version: str
    runner: ModelRunner
    manifest: dict
    signature: Signature | None = None


@dataclass(frozen=True)
class Request:
    """A decoded inference request, whichever dialect it came in."""

    inputs: Inputs
    id: str | None = None
    outputs: bool = True


class ModelServer(BackgroundServer):
    def __init__(self, data_dir: Path, address: tuple[str, int], threads: int = 1, recorder: Recorder | None = None):
        self.data_dir = Path(data_dir)
        self.threads = threads
        self.recorder = recorder
        self._models: dict[str, Loaded] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    thread_name = "model-server"

    def start(self) -> ModelServer:
        for folder in sorted((self.data_dir / "models").glob("*")):
            self.reload(folder.name)
        self.serve()
        return self

    def reload(self, model: str) -> Loaded | None:
        """Load the model's active slot and swap it in; the old session serves until its requests end."""
        active = ModelSlots(self.data_dir, model).active_dir()
        if active is None:  # rolled back to nothing: stop serving the model that failed
            with self._lock:
                self._models.pop(model, None)
            return None
        manifest = json.loads((active / "manifest.json").read_bytes())
        model_file = next(name for name in manifest["files"] if name.startswith("model."))
        loaded = Loaded(model, manifest["version"], ModelRunner(active / model_file, manifest["format"], self.threads),
                        manifest, Signature.from_manifest(manifest))  # fmt: skip
        with self._lock:
            self._models[model] = loaded
        know = getattr(self.recorder, "know", None)
        if know is not None:
            know(manifest)
        return loaded

    def get(self, model: str) -> Loaded | None:
        with self._lock:
            return self._models.get(model)

    def ready(self) -> bool:
        with self._lock:
            return bool(self._models)


def _check_shape(inputs: np.ndarray, expected: tuple[int | None, ...]) -> None:
    """A batch whose sample shape the model does not take is the caller's error (400), not the runtime's."""
    sample = tuple(expected[1:])
    if inputs.ndim != len(expected) or any(
        e is not None and e != a for e, a in zip(sample, inputs.shape[1:], strict=True)
    ):
        raise ValueError(f"instances have shape {inputs.shape[1:]} per sample; the model takes {sample}")


def _decode_predict(raw: bytes, runner: ModelRunner) -> Request:
    if len(runner.input_shapes) > 1:
        raise ValueError(f":predict serves models with one input; this one takes {len(runner.input_shapes)} "
                         f"({', '.join(runner.input_shapes)}): use the v2 infer endpoint")  # fmt: skip
    inputs = np.asarray(json.loads(raw)["instances"], dtype=np.float32)
    _check_shape(inputs, runner.input_shape)
    return Request(inputs)


def _decode_infer(raw: bytes, signature: Signature) -> Request:
    """Checks in the order a client would fix them: the body, the input's name, datatype, shape, data."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the body is not JSON: {str(exc)[:100]}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("id must be a string")
    wanted = {tensor.name: tensor for tensor in signature.inputs}
    names = ", ".join(repr(name) for name in wanted)
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or len(tensors) != len(wanted) or not all(isinstance(t, dict) for t in tensors):
        raise InvalidRequest(f"inputs must hold exactly {len(wanted)} tensor(s), {names}")
    decoded: dict[str, np.ndarray] = {}
    for tensor in tensors:
        want = wanted.get(tensor.get("name"))  # type: ignore[arg-type]
        if want is None:
            raise InvalidRequest(f"input {tensor.get('name')!r} is not an input of this model; it takes {names}")
        if want.name in decoded:
            raise InvalidRequest(f"input {want.name!r} is given twice")
        if tensor.get("datatype") != want.datatype:
            raise InvalidRequest(f"input {want.name!r} has datatype {want.datatype}, not {tensor.get('datatype')!r}")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise InvalidRequest(f"shape of {want.name!r} must be a list of non-negative integers")
        want.check_shape(shape)
        decoded[want.name] = want.to_float(tensor.get("data"), shape)
    if len({len(value) for value in decoded.values()}) > 1:
        raise InvalidRequest("every input must hold the same number of rows")
    inputs: Inputs = decoded if len(decoded) > 1 else next(iter(decoded.values()))
    requested = body.get("outputs")
    if requested is None:
        return Request(inputs, request_id)
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise InvalidRequest('outputs must be a list of {"name": ...} objects')
    for output in requested:
        if output.get("name") != signature.output.name:
            raise InvalidRequest(f"output {output.get('name')!r} is not served; this model gives "
                                 f"{signature.output.name!r}")  # fmt: skip
    return Request(inputs, request_id, outputs=bool(requested))


def _server_version() -> str:
    try:
        return metadata.version("edge-reconciler")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Handler(JSONHandler):
    owner: ModelServer

    def do_GET(self) -> None:
        if self.path == "/healthz":
            return self.send_json(HTTPStatus.OK, {"status": "ok"})
        if self.path.startswith("/v2"):
            return self._get_v2()
        match = _MODEL.match(self.path)
        loaded = self.owner.get(match.group(1)) if match else None
        if loaded is None:
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such model on this device"})
        self.send_json(HTTPStatus.OK, {"name": loaded.model, "version": loaded.version, "state": "AVAILABLE",
                                       "inputs": loaded.manifest.get("tensors", {}).get("inputs", [])})  # fmt: skip

    def _get_v2(self) -> None:
        if self.path == "/v2/health/live":
            return self.send_json(HTTPStatus.OK, {"live": True})
        if self.path == "/v2/health/ready":
            ready = self.owner.ready()
            return self.send_json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"ready": ready})
        if self.path == "/v2":
            return self.send_json(HTTPStatus.OK, {"name": "edge-reconciler", "version": _server_version(),
                                                  "extensions": []})  # fmt: skip
        match = _V2.match(self.path)
        if match is not None and match["verb"] == "/infer":
            return self.send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "infer takes a POST"})
        loaded = self._find_v2(match) if match is not None else None
        if match is None or loaded is None:
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such model on this device"})
        if match["verb"] == "/ready":
            return self.send_json(HTTPStatus.OK, {"name": loaded.model, "ready": True})
        if loaded.signature is None:
            return self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "the manifest has no tensor specs"})
        self.send_json(HTTPStatus.OK, {"name": loaded.model, "versions": [loaded.version],
                                       "platform": PLATFORMS.get(loaded.runner.format, loaded.runner.format),
                                       "inputs": [tensor.metadata() for tensor in loaded.signature.inputs],
                                       "outputs": [loaded.signature.output.metadata()]})  # fmt: skip

    def _find_v2(self, match: re.Match) -> Loaded | None:
        loaded = self.owner.get(match["model"])
        if loaded is None or match["version"] not in (None, loaded.version):
            return None
        return loaded

    def do_POST(self) -> None:
        predict, v2 = _PREDICT.match(self.path), _V2.match(self.path)
        if predict:
            loaded = self.owner.get(predict.group(1))
        else:
            loaded = self._find_v2(v2) if v2 and v2["verb"] == "/infer" else None
        if loaded is None:  # the body stays unread, so the connection must not carry another request
            return self._refuse(HTTPStatus.NOT_FOUND, "no such model on this device")
        raw = self.read_body(MAX_BODY)
        if raw is None:
            return
        if predict:
            answered = self._run(loaded, lambda: _decode_predict(raw, loaded.runner))
            if answered is not None:
                self.send_json(HTTPStatus.OK, {"predictions": answered[1].tolist(), "modelVersion": loaded.version})
            return
        signature = loaded.signature
        if signature is None:
            return self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "the manifest has no tensor specs"})
        answered = self._run(loaded, lambda: _decode_infer(raw, signature))
        if answered is None:
            return
        request, outputs = answered
        body: dict = {"model_name": loaded.model, "model_version": loaded.version}
        if request.id is not None:
            body["id"] = request.id
        out = signature.output
        tensor = {"name": out.name, "shape": list(outputs.shape), "datatype": out.datatype,
                  "data": out.from_float(outputs).reshape(-1).tolist()}  # fmt: skip
        body["outputs"] = [tensor] if request.outputs else []
        self.send_json(HTTPStatus.OK, body)

    def _run(self, loaded: Loaded, decode: Callable[[], Request]) -> tuple[Request, np.ndarray] | None:
        """Decode and run one request, counting it either way; None once an error has been answered."""
        start = time.perf_counter()
        inputs = None
        try:
            request = decode()
            inputs = request.inputs
            crash_point("serve")  # tests: a runtime that takes the process down on this input
            outputs = loaded.runner.run(inputs)
        except (ValueError, KeyError, TypeError) as exc:
            self._record(loaded, inputs, None, start, failed="input")
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {str(exc)[:200]}"})
            return None
        except Exception as exc:  # the runtime failed on this input: an inference error, counted
            self._record(loaded, inputs, None, start, failed="inference")
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"inference failed: {str(exc)[:200]}"})
            return None
        self._record(loaded, inputs, outputs, start, failed=False)
        return request, outputs

    def _record(self, loaded: Loaded, inputs, outputs, start: float, failed: bool | str) -> None:
        if self.owner.recorder is not None:
            self.owner.recorder(loaded.model, loaded.version, inputs, outputs, time.perf_counter() - start, failed)
