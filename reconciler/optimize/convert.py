"""Convert a Keras model to the profile's format: ONNX (SavedModel export + tf2onnx) or TFLite.

Who calls it: the pipeline's convert step. TensorFlow is imported only inside these functions.
``tf2onnx.convert.from_keras`` breaks on Keras 3, so the model is exported as a SavedModel and converted
by tf2onnx's command line in a child process. The ONNX graph's doc string records the temporary path
it came from; it is cleared so the same model always gives the same bytes (deterministic builds).
TFLite quantization happens inside the converter, so TFLite modes are converter settings here.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from reconciler.artifact.manifest import graph_inputs

from .datasets import Dataset
from .errors import BuildError, first_line

TFLITE_MODES = (None, "dynamic", "float16", "int8", "int8-only")


def canonical_onnx(data: bytes) -> bytes:
    """The model with deterministic names and no doc strings: same graph, same bytes.

    Doc strings carry temporary paths; node and tensor names carry Keras' process-wide layer counters
    (``conv2d_7`` in a process that built six models before). Graph inputs and outputs are named by position
    (``input_0``, ``output_0``), which is how the runtimes address them.
    """
    import onnx

    model = onnx.load_from_string(data)
    model.doc_string = ""
    graph = model.graph
    graph.doc_string = ""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        for node in graph.node:  # subgraphs refer to outer names: rename nothing rather than break them
            node.doc_string = ""
        return model.SerializeToString()
    names: dict[str, str] = {"": ""}
    # Inputs and outputs get positional names: the runtimes address them by position, and Keras names them by
    # counters too (``input_layer_3`` after a pruning pass made a new model).
    for index, value in enumerate(graph_inputs(graph)):
        names[value.name] = f"input_{index}"
    for index, value in enumerate(graph.output):
        names.setdefault(value.name, f"output_{index}")

    def rename(name: str) -> str:
        return names.setdefault(name, f"t{len(names)}")

    # Names follow the graph's structure (node order, then each node's inputs and outputs), never the
    # converter's initializer order, which changes between runs.
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type}_{index}"
        node.doc_string = ""
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for info in graph.value_info:
        info.name = rename(info.name)
    for value in [*graph.input, *graph.output]:
        value.name = rename(value.name)
    _sort_by_name(graph.initializer)
    _sort_by_name(graph.value_info)
    return model.SerializeToString()


def _sort_by_name(field) -> None:
    items = sorted(field, key=lambda item: (len(item.name), item.name))
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items, strict=True):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)


def keras_to_onnx(model, opset: int, workdir: Path) -> bytes:
    saved = workdir / "saved_model"
    output = workdir / "converted.onnx"
    try:
        model.export(str(saved), verbose=False)
    except Exception as exc:  # Keras raises many types for layers it cannot trace
        raise BuildError(f"Keras could not export the model for conversion: {exc}") from exc
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--opset", str(opset),
               "--output", str(output)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0 or not output.exists():
        lines = [line for line in result.stderr.splitlines() if "ERROR" in line or "Error" in line]
        detail = " | ".join(lines[-3:]) or result.stderr.strip().splitlines()[-1:]
        raise BuildError(f"tf2onnx could not convert the model to ONNX opset {opset}: {detail}")
    return canonical_onnx(output.read_bytes())


def keras_to_tflite(model, mode: str | None, calibration: Dataset | None, samples: int) -> bytes:
    """TFLite flatbuffer: float32 (mode None), dynamic range, float16, full int8, or int8-only (int8 I/O)."""
    import tensorflow as tf

    if mode not in TFLITE_MODES:
        raise BuildError(f"TFLite has no quantization mode {mode!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in ("int8", "int8-only"):
        if calibration is None:
            raise BuildError(f"TFLite {mode} quantization needs calibration data")
        rows = calibration.x[:samples]

        def representative():
            for row in rows:
                yield [row[None].astype("float32")]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if mode == "int8-only":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel export to stdout
            return bytes(converter.convert())
    except Exception as exc:  # the converter reports unsupported ops with its own exception types
        raise BuildError(f"TFLite conversion ({mode or 'float32'}) failed: {first_line(exc)}") from exc
