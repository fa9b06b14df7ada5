"""Memory as a device uses it: a model whose single-sample inference fits the profile's limit is measured, not
refused because the whole evaluation set would not fit at once (it runs in batches afterwards, uncounted); a
model that really needs more resident memory is refused, with what it used. Real onnxruntime in the probe's own
process, as the build runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIMIT = 48 << 20


def matmul_model(path: Path, width: int) -> Path:
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((width, width)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def probe(tmp_path: Path, model: Path, rows: int, width: int) -> tuple[int, dict]:
    data = tmp_path / f"{model.stem}.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32))
    out = tmp_path / f"out-{model.stem}"
    command = [sys.executable, "-m", "reconciler.optimize.probe", str(model), "onnx", str(data), str(out),
               "--runs", "20", "--memory-limit", str(LIMIT)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode == 0:
        return 0, json.loads((out / "result.json").read_text()) | {"outputs": np.load(out / "outputs.npy").shape}
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_a_model_that_fits_is_measured_though_its_evaluation_set_would_not_fit_at_once(tmp_path: Path):
    # 4 MiB of weights; 8,000 evaluation rows are 31 MiB in and 31 MiB out as one batch.
    code, result = probe(tmp_path, matmul_model(tmp_path / "small.onnx", 1024), 8000, 1024)
    assert code == 0, result
    assert 4 << 20 <= result["peak_memory_bytes"] < LIMIT
    assert result["outputs"] == (8000, 1024)  # every row evaluated, in batches


def test_a_model_that_needs_more_resident_memory_is_refused_with_what_it_used(tmp_path: Path):
    code, result = probe(tmp_path, matmul_model(tmp_path / "big.onnx", 4096), 100, 4096)  # 64 MiB of weights
    assert code == 3
    assert result["peak_memory_bytes"] > 64 << 20 and "resident memory" in result["error"]
