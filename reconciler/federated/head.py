"""The classifier head of an ONNX model: found, read, replaced, and fine-tuned in numpy.

Who calls it: the training's server (reads the base version's head, writes the new version's source) and each
device's trainer (features from the model it serves, then local epochs on its own rows). The head is the last
fully connected layer before the softmax: a ``Gemm``, or a ``MatMul`` followed by an ``Add``, whose weights are
initializers. Everything under it stays as it is, so a device computes the features once with the artifact it
already runs (quantized or not) and training costs a few matrix products per epoch: light enough for any profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["Features", "Head", "HeadError", "accuracy", "find_head", "read_head", "train_head", "with_head"]


class HeadError(ValueError):
    """The model has no head this trainer can fine-tune (or a device's artifact lacks the base's features)."""


@dataclass(frozen=True)
class Head:
    """Where the head is in a graph: its input tensor (the features), its weights and bias initializers."""

    features: str
    weight: str
    bias: str
    transposed: bool
    """Gemm with ``transB=1``: the weight is stored (classes, features)."""


def find_head(model: onnx.ModelProto) -> Head:
    """The last fully connected layer on the way to the graph's first output (through a Softmax, if any)."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name for init in graph.initializer}
    tensor = graph.output[0].name
    node = producers.get(tensor)
    while node is not None and node.op_type in ("Softmax", "Identity", "Flatten", "Reshape"):
        node = producers.get(node.input[0])
    if node is not None and node.op_type == "Gemm" and len(node.input) == 3:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("transA", 0) == 0 and {node.input[1], node.input[2]} <= initializers:
            return Head(node.input[0], node.input[1], node.input[2], bool(attributes.get("transB", 0)))
    if node is not None and node.op_type == "Add":
        bias = next((name for name in node.input if name in initializers), None)
        other = next((name for name in node.input if name != bias), None)
        matmul = producers.get(other) if other else None
        if bias and matmul is not None and matmul.op_type == "MatMul" and matmul.input[1] in initializers:
            return Head(matmul.input[0], matmul.input[1], bias, False)
    raise HeadError("no fully connected last layer (Gemm, or MatMul + Add, with weights as initializers) before the "
                    "model's output")  # fmt: skip


def read_head(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """The head's weight as (features, classes) and its bias (classes), in float32."""
    head = find_head(model)
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
              if init.name in (head.weight, head.bias)}  # fmt: skip
    weight = values[head.weight].astype(np.float32)
    weight = weight.T if head.transposed else weight
    bias = values[head.bias].astype(np.float32).reshape(-1)
    if weight.ndim != 2 or bias.shape[0] != weight.shape[1]:
        raise HeadError(f"head weight {weight.shape} and bias {bias.shape} do not form a dense layer")
    return weight, bias


def with_head(model: onnx.ModelProto, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` with the head's weights replaced (shapes and dtypes as before)."""
    head = find_head(model)
    old_weight, old_bias = read_head(model)
    if weight.shape != old_weight.shape or bias.shape != old_bias.shape:
        raise HeadError(f"a head of {weight.shape}/{bias.shape} cannot replace {old_weight.shape}/{old_bias.shape}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for index, init in enumerate(copy.graph.initializer):
        if init.name in (head.weight, head.bias):
            old = numpy_helper.to_array(init)
            value = (weight.T if head.transposed else weight) if init.name == head.weight else bias
            copy.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(np.asarray(value, dtype=old.dtype).reshape(old.shape), init.name)
            )
    return copy


class Features:
    """A model run up to its head's input: the features a device trains its head on.

    ``tensor`` is the base version's head input; an artifact built from the base keeps its name through
    conversion and quantization (a structured prune of the layer under the head changes its width, and such a
    device cannot take part: :class:`HeadError`)."""

    def __init__(self, model_path: Path, tensor: str, width: int) -> None:
        import onnxruntime as ort

        model = onnx.load(str(model_path))
        produced = {out for node in model.graph.node for out in node.output}
        if tensor not in produced:
            raise HeadError(f"the model has no tensor {tensor!r} (built without the base's last hidden layer)")
        model.graph.output.insert(0, onnx.helper.make_tensor_value_info(tensor, _elem_type(model, tensor), None))
        del model.graph.output[1:]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.width = width

    def __call__(self, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
        rows = []
        for start in range(0, len(inputs), batch):
            chunk = np.asarray(inputs[start : start + batch], dtype=_dtype(self.input.type))
            rows.append(np.asarray(self.session.run(None, {self.input.name: chunk})[0], dtype=np.float32))
        found = np.concatenate(rows).reshape(len(inputs), -1) if rows else np.zeros((0, self.width), np.float32)
        if found.shape[1] != self.width:
            raise HeadError(f"the model's features are {found.shape[1]} wide, the base's head takes {self.width}")
        return found


def _elem_type(model: onnx.ModelProto, tensor: str) -> int:
    """The tensor's element type, by shape inference (float16 in a float16 artifact); float when unknown."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an artifact onnx cannot infer still runs: its features are float in practice
        return onnx.TensorProto.FLOAT
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        if info.name == tensor and info.type.tensor_type.elem_type:
            return info.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT


def _dtype(onnx_type: str) -> type:
    return {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(
        onnx_type, np.float32
    )


def train_head(
    weight: np.ndarray,
    bias: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mini-batch SGD on the softmax cross-entropy from (weight, bias); the new head, the last epoch's mean loss.

    Plain SGD with no momentum or decay: FedAvg's average of the devices' heads is then the step a centralized
    run over the same batches would take, to first order, which is what lets the federated head match it."""
    weight, bias = weight.astype(np.float64).copy(), bias.astype(np.float64).copy()
    features, labels = np.asarray(features, np.float64), np.asarray(labels, np.int64)
    order = np.random.default_rng(seed)
    loss = 0.0
    for _ in range(epochs):
        indices = order.permutation(len(features))
        total = 0.0
        for start in range(0, len(indices), batch_size):
            rows = indices[start : start + batch_size]
            probabilities = _softmax(features[rows] @ weight + bias)
            total += float(-np.log(probabilities[np.arange(len(rows)), labels[rows]] + 1e-12).sum())
            probabilities[np.arange(len(rows)), labels[rows]] -= 1.0
            gradient = probabilities / len(rows)
            weight -= learning_rate * features[rows].T @ gradient
            bias -= learning_rate * gradient.sum(axis=0)
        loss = total / max(len(indices), 1)
    return weight.astype(np.float32), bias.astype(np.float32), loss


def accuracy(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return 0.0
    return float(np.mean(np.argmax(features @ weight + bias, axis=1) == np.asarray(labels)))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
