"""Run an artifact: one small wrapper over onnxruntime and LiteRT with float inputs and outputs.

Who calls it: the benchmark probe (in a clean subprocess), manifest generation (golden vectors) and the
edge agent. Integer-only TFLite models take and give int8 tensors: this wrapper quantizes inputs and
dequantizes outputs with the tensors' own scale and zero point, so callers always speak float32.
Runtimes are imported lazily: a device has only the one its profile uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class ModelRunner:
    """A loaded model. ``run`` takes a float32 batch and returns the first output as float32."""

    def __init__(self, path: Path, fmt: str, threads: int = 1, providers: Sequence[str] = ()) -> None:
        self.format = fmt
        if fmt == "onnx":
            self._init_onnx(path, threads, providers)
        elif fmt == "tflite":
            self._init_tflite(path, threads)
        else:
            raise ValueError(f"unknown artifact format {fmt!r}")

    def _init_onnx(self, path: Path, threads: int, providers: Sequence[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self.providers = chosen
        self._session = ort.InferenceSession(str(path), options, providers=chosen)
        first = self._session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in first.shape)

    def _init_tflite(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.providers = ["LiteRT CPU"]
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_name = self._input["name"]
        self.input_shape = (None, *(int(d) for d in self._input["shape"][1:]))

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.format == "tflite":
            return np.concatenate([self._run_tflite_one(sample[None]) for sample in x])
        batch = self.input_shape[0]
        if batch is None or batch == len(x):
            return self._run_onnx(x)
        # A model exported with a fixed batch size: feed it in chunks of exactly that size.
        return np.concatenate([self._run_onnx(x[i : i + batch]) for i in range(0, len(x), batch)])

    def _run_onnx(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self.input_name: x.astype(np.float32)})[0], dtype=np.float32)

    def _run_tflite_one(self, x: np.ndarray) -> np.ndarray:
        value = x.astype(np.float32)
        scale, zero_point = self._input["quantization"]
        if self._input["dtype"] in (np.int8, np.uint8) and scale:
            info = np.iinfo(self._input["dtype"])
            value = np.clip(np.round(value / scale + zero_point), info.min, info.max).astype(self._input["dtype"])
        self._interpreter.set_tensor(self._input["index"], value)
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output["index"])
        scale, zero_point = self._output["quantization"]
        if self._output["dtype"] in (np.int8, np.uint8) and scale:
            out = (out.astype(np.float32) - zero_point) * scale
        return out.astype(np.float32)
