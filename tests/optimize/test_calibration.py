"""Calibration methods are what they say: entropy (KL) calibration clips a heavy-tailed activation where MinMax
keeps the outlier's whole range. onnxruntime's quantize_static alone gives entropy 128 bins for 128 quantized
bins, one candidate threshold, so entropy came out byte-identical to MinMax."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from reconciler.optimize.datasets import Dataset
from reconciler.optimize.quantize import quantize_onnx


def mlp() -> bytes:
    rng = np.random.default_rng(4)
    w1 = numpy_helper.from_array((rng.standard_normal((16, 32)) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((32, 4)) * 0.3).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w1, w2])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def input_scale(model: bytes) -> float:
    """The scale of the QuantizeLinear that quantizes the graph's input."""
    graph = onnx.load_from_string(model).graph
    scales = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    first = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
    return float(scales[first.input[1]])


def test_entropy_clips_the_outliers_that_minmax_keeps(tmp_path):
    rng = np.random.default_rng(9)
    rows = rng.standard_normal((256, 16)).astype(np.float32)
    rows[::64, 0] = 40.0  # four outliers far outside the bulk
    calibration = Dataset(rows, np.zeros(len(rows)))
    minmax, _ = quantize_onnx(mlp(), "static", calibration, 256, True, tmp_path, method="minmax")
    entropy, _ = quantize_onnx(mlp(), "static", calibration, 256, True, tmp_path, method="entropy")
    assert entropy != minmax
    # MinMax spans the outlier (about 40 + 3 over 255 steps); entropy keeps the bulk of the distribution.
    assert input_scale(minmax) > 0.15
    assert input_scale(entropy) < 0.5 * input_scale(minmax)
