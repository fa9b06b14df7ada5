"""A small digit classifier as an ONNX source, and devices' local data for federated training tests and benches.

The base version is a two-layer perceptron (64 -> 32 -> 10) trained in numpy on scikit-learn's 8x8 digits as a
scanner sees them. The devices are cameras that see the same digits darker and noisier: the base version loses
accuracy there, and retraining its head on the cameras' own labeled rows wins most of it back. Each device holds a
different share of the classes (a Dirichlet split), as fleets do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN, CLASSES = 32, 10


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def as_camera_sees(x: np.ndarray, seed: int) -> np.ndarray:
    """Darker, lower-contrast and noisier than the scans the base version learned from."""
    noise = np.random.default_rng(seed).normal(0.0, 0.12, x.shape)
    return np.clip(0.35 * x + 0.4 + noise, 0.0, 1.0).astype(np.float32)


def train_base(x: np.ndarray, y: np.ndarray, seed: int = 0, steps: int = 400) -> onnx.ModelProto:
    """Full-batch gradient descent on a 64-32-10 perceptron; the ONNX graph Gemm-Relu-Gemm-Softmax."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (x.shape[1], HIDDEN))
    b1 = np.zeros(HIDDEN)
    w2 = rng.normal(0, 0.3, (HIDDEN, CLASSES))
    b2 = np.zeros(CLASSES)
    onehot = np.eye(CLASSES)[y]
    for _ in range(steps):
        hidden = np.maximum(x @ w1 + b1, 0.0)
        logits = hidden @ w2 + b2
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(x)
        gw2, gb2 = hidden.T @ grad, grad.sum(0)
        dh = (grad @ w2.T) * (hidden > 0)
        gw1, gb1 = x.T @ dh, dh.sum(0)
        for value, gradient in ((w1, gw1), (b1, gb1), (w2, gw2), (b2, gb2)):
            value -= 0.5 * gradient
    return perceptron(w1, b1, w2, b2)


def perceptron(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), name)
             for name, v in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["hidden_pre"], name="dense"),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="relu"),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"], name="head"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "digits-mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", CLASSES])],
                              inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="digits-mlp")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def split(y: np.ndarray, devices: int, alpha: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    """Row indices per device, each class spread over the devices by Dirichlet(alpha) shares."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(devices)]
    for label in range(CLASSES):
        rows = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * devices)) * len(rows)).astype(int)[:-1]
        for device, chunk in enumerate(np.split(rows, cuts)):
            parts[device].extend(chunk.tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


class Scenario:
    """Base model, held-out camera rows to score on, and each device's labeled camera rows."""

    def __init__(self, devices: int = 6, seed: int = 0) -> None:
        x, y = digits()
        order = np.random.default_rng(seed).permutation(len(x))
        scans, cameras = order[: len(x) // 3], order[len(x) // 3 :]
        self.base = train_base(x[scans], y[scans], seed)
        camera_x, camera_y = as_camera_sees(x[cameras], seed + 1), y[cameras]
        held_out = len(cameras) // 4
        self.eval_x, self.eval_y = camera_x[:held_out], camera_y[:held_out]
        train_x, train_y = camera_x[held_out:], camera_y[held_out:]
        self.device_data = [(train_x[rows], train_y[rows]) for rows in split(train_y, devices, seed=seed)]
        self.pooled = (train_x, train_y)

    def write_base(self, path: Path) -> str:
        """Write the base ONNX; its sha256."""
        data = self.base.SerializeToString()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def write_device_data(self, folder: Path, device: int) -> Path:
        """The device's labeled rows as ``folder/rows.npz`` (``x``, ``y``)."""
        folder.mkdir(parents=True, exist_ok=True)
        x, y = self.device_data[device]
        np.savez(folder / "rows.npz", x=x, y=y)
        return folder
