"""Run an artifact: one small wrapper over onnxruntime and LiteRT with float inputs and outputs.

Who calls it: the benchmark probe (in a clean subprocess), manifest generation (golden vectors) and the
edge agent. Integer-only TFLite models take and give int8 tensors: this wrapper quantizes inputs and
dequantizes outputs with the tensors' own scale and zero point, so callers always speak float32.
Runtimes are imported lazily: a device has only the one its profile uses.

A model with one input takes one array; an ONNX model with several takes a mapping from input name to array
(:data:`Inputs`), rows along the first axis of each. The first output is the one returned: it is what the
metrics, golden vectors and drift histograms speak of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np

Inputs: TypeAlias = np.ndarray | Mapping[str, np.ndarray]
"""One array for a single-input model; arrays by input name for a model with several."""


def row_count(x: Inputs) -> int:
    return len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)


def take(x: Inputs, start: int, stop: int) -> Inputs:
    """Rows ``start:stop`` of every input."""
    return {name: value[start:stop] for name, value in x.items()} if isinstance(x, Mapping) else x[start:stop]


def flat_rows(x: Inputs) -> np.ndarray:
    """Every input of a row side by side, flattened: per-row statistics (drift histograms) over all inputs."""
    if isinstance(x, Mapping):
        return np.hstack([x[name].reshape(row_count(x), -1) for name in sorted(x)])
    return x.reshape(len(x), -1)


def inputs_from_arrays(arrays: Mapping[str, np.ndarray], labels: str = "y") -> Inputs:
    """A data file's inputs: ``x`` alone for a single-input model, else every array but the labels, by name."""
    named = {name: value for name, value in arrays.items() if name != labels}
    if set(named) == {"x"}:
        return named["x"]
    return named


def as_arrays(x: Inputs) -> dict[str, np.ndarray]:
    """The inverse of :func:`inputs_from_arrays` (without labels): what ``np.savez`` writes for these inputs."""
    return dict(x) if isinstance(x, Mapping) else {"x": x}


def as_lists(x: Inputs, decimals: int) -> list | dict[str, list]:
    """JSON form (golden vectors): a nested list, or nested lists by input name."""
    if isinstance(x, Mapping):
        return {name: np.round(value, decimals).tolist() for name, value in sorted(x.items())}
    return np.round(x, decimals).tolist()


def from_lists(value: list | dict[str, list]) -> Inputs:
    """The inverse of :func:`as_lists`, as float32."""
    if isinstance(value, dict):
        return {name: np.asarray(rows, dtype=np.float32) for name, rows in value.items()}
    return np.asarray(value, dtype=np.float32)


class ModelRunner:
    """A loaded model. ``run`` takes a float32 batch (:data:`Inputs`) and returns the first output as float32."""

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
        self.input_shapes = {i.name: tuple(d if isinstance(d, int) else None for d in i.shape)
                             for i in self._session.get_inputs()}  # fmt: skip
        self.input_name = next(iter(self.input_shapes))
        self.input_shape = self.input_shapes[self.input_name]

    def _init_tflite(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.providers = ["LiteRT CPU"]
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_name = self._input["name"]
        self.input_shape = (None, *(int(d) for d in self._input["shape"][1:]))
        self.input_shapes = {self.input_name: self.input_shape}

    def run(self, x: Inputs) -> np.ndarray:
        feed = self._feed(x)
        if self.format == "tflite":
            return np.concatenate([self._run_tflite_one(sample[None]) for sample in feed[self.input_name]])
        rows, batch = row_count(feed), self.input_shape[0]
        if batch is None or batch == rows:
            return self._run_onnx(feed)
        # A model exported with a fixed batch size: feed it in chunks of exactly that size, the last one padded
        # with zero rows whose outputs are dropped.
        chunks = []
        for start in range(0, rows, batch):
            chunk = take(feed, start, start + batch)
            count = row_count(chunk)
            if count < batch:
                chunk = {name: np.concatenate([v, np.zeros((batch - count, *v.shape[1:]), v.dtype)])
                         for name, v in chunk.items()}  # fmt: skip
            chunks.append(self._run_onnx(chunk)[:count])
        return np.concatenate(chunks)

    def _feed(self, x: Inputs) -> dict[str, np.ndarray]:
        """Arrays by input name; a clear error for missing or unknown names and for one array given to many."""
        names = list(self.input_shapes)
        if not isinstance(x, Mapping):
            if len(names) > 1:
                raise ValueError(f"the model takes {len(names)} inputs ({', '.join(names)}): give arrays by name")
            return {names[0]: x}
        if set(x) != set(names):
            raise ValueError(f"the model's inputs are {', '.join(names)}; given {', '.join(sorted(x)) or 'none'}")
        return dict(x)

    def _run_onnx(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays = {name: np.asarray(value, dtype=np.float32) for name, value in feed.items()}
        return np.asarray(self._session.run(None, arrays)[0], dtype=np.float32)

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
