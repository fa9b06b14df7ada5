"""Local inference endpoint of the device: serves the active slot of each model, with no controller needed.

Who calls it: ``edgectl agent --serve HOST:PORT`` (the agent switches models through :meth:`reload`), and
applications on the device. JSON in and out, in the style of TensorFlow Serving and KServe v1::

    POST /v1/models/<model>:predict   {"instances": [[...]]} -> {"predictions": [[...]], "modelVersion": "2.0.0"}
    GET  /v1/models/<model>           -> {"name": ..., "version": ..., "state": "AVAILABLE"}
    GET  /healthz

Hot switch without dropped requests: a reload builds the new runtime session first, then replaces one
reference; requests already running finish on the session they started with. Every request is counted into
the model's telemetry (latency, errors, predicted class, input statistics) when a recorder is attached.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np

from reconciler.artifact.runtime import ModelRunner
from reconciler.httpserver import BackgroundServer, JSONHandler

from .slots import ModelSlots

_PREDICT = re.compile(r"^/v1/models/([a-z0-9][-a-z0-9.]{0,62}):predict$")
_MODEL = re.compile(r"^/v1/models/([a-z0-9][-a-z0-9.]{0,62})$")
MAX_BODY = 16 * 1024 * 1024

Recorder = Callable[[str, str, np.ndarray | None, np.ndarray | None, float, bool], None]
"""(model, version, inputs, outputs, latency seconds, failed) -> None"""


@dataclass(frozen=True)
class Loaded:
    model: str
    version: str
    runner: ModelRunner
    manifest: dict


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
        if active is None:
            return None
        manifest = json.loads((active / "manifest.json").read_bytes())
        model_file = next(name for name in manifest["files"] if name.startswith("model."))
        loaded = Loaded(model, manifest["version"], ModelRunner(active / model_file, manifest["format"], self.threads),
                        manifest)  # fmt: skip
        with self._lock:
            self._models[model] = loaded
        know = getattr(self.recorder, "know", None)
        if know is not None:
            know(manifest)
        return loaded

    def get(self, model: str) -> Loaded | None:
        with self._lock:
            return self._models.get(model)


def _check_shape(inputs: np.ndarray, expected: tuple[int | None, ...]) -> None:
    """A batch whose sample shape the model does not take is the caller's error (400), not the runtime's."""
    sample = tuple(expected[1:])
    if inputs.ndim != len(expected) or any(
        e is not None and e != a for e, a in zip(sample, inputs.shape[1:], strict=True)
    ):
        raise ValueError(f"instances have shape {inputs.shape[1:]} per sample; the model takes {sample}")


class _Handler(JSONHandler):
    owner: ModelServer

    def do_GET(self) -> None:
        if self.path == "/healthz":
            return self.send_json(HTTPStatus.OK, {"status": "ok"})
        match = _MODEL.match(self.path)
        loaded = self.owner.get(match.group(1)) if match else None
        if loaded is None:
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such model on this device"})
        self.send_json(HTTPStatus.OK, {"name": loaded.model, "version": loaded.version, "state": "AVAILABLE",
                                       "inputs": loaded.manifest.get("tensors", {}).get("inputs", [])})  # fmt: skip

    def do_POST(self) -> None:
        match = _PREDICT.match(self.path)
        loaded = self.owner.get(match.group(1)) if match else None
        if loaded is None:
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such model on this device"})
        raw = self.read_body(MAX_BODY)
        if raw is None:
            return
        start = time.perf_counter()
        inputs = None
        try:
            inputs = np.asarray(json.loads(raw)["instances"], dtype=np.float32)
            _check_shape(inputs, loaded.runner.input_shape)
            outputs = loaded.runner.run(inputs)
        except (ValueError, KeyError, TypeError) as exc:
            self._record(loaded, inputs, None, start, failed=True)
            return self.send_json(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {str(exc)[:200]}"})
        except Exception as exc:  # the runtime failed on this input: an inference error, counted
            self._record(loaded, inputs, None, start, failed=True)
            return self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"inference failed: {str(exc)[:200]}"})
        self._record(loaded, inputs, outputs, start, failed=False)
        self.send_json(HTTPStatus.OK, {"predictions": outputs.tolist(), "modelVersion": loaded.version})

    def _record(self, loaded: Loaded, inputs, outputs, start: float, failed: bool) -> None:
        if self.owner.recorder is not None:
            self.owner.recorder(loaded.model, loaded.version, inputs, outputs, time.perf_counter() - start, failed)
