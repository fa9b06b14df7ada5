"""The classifier head of an ONNX model: found, read, replaced, trained on features of the model a device runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from reconciler.federated.head import Features, HeadError, accuracy, find_head, read_head, train_head, with_head

from .digits import Scenario, perceptron


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario(devices=6)


def test_the_head_is_the_last_dense_layer_and_replacing_it_changes_only_it(scenario: Scenario, tmp_path) -> None:
    head = find_head(scenario.base)
    assert (head.features, head.weight, head.bias) == ("hidden", "w2", "b2")
    weight, bias = read_head(scenario.base)
    assert weight.shape == (32, 10) and bias.shape == (10,)
    changed = with_head(scenario.base, weight * 2, bias + 1)
    again, again_bias = read_head(changed)
    np.testing.assert_array_equal(again, weight * 2)
    np.testing.assert_array_equal(again_bias, bias + 1)
    before = {i.name: i for i in scenario.base.graph.initializer}
    after = {i.name: i for i in changed.graph.initializer}
    assert after["w1"] == before["w1"] and after["b1"] == before["b1"]
    with pytest.raises(HeadError, match="cannot replace"):
        with_head(scenario.base, weight[:5], bias)


def test_a_transposed_gemm_and_a_matmul_add_head_are_both_found() -> None:
    rng = np.random.default_rng(0)
    w1, b1, w2, b2 = rng.normal(size=(64, 8)), np.zeros(8), rng.normal(size=(8, 3)), np.arange(3.0)
    model = perceptron(w1, b1, w2, b2)
    for node in model.graph.node:
        if node.name == "head":
            node.attribute.append(onnx.helper.make_attribute("transB", 1))
    for init in model.graph.initializer:
        if init.name == "w2":
            init.CopyFrom(onnx.numpy_helper.from_array(w2.T.astype(np.float32), "w2"))
    weight, bias = read_head(model)
    np.testing.assert_allclose(weight, w2, rtol=1e-6)
    np.testing.assert_array_equal(bias, b2.astype(np.float32))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["mm"]), onnx.helper.make_node("Add", ["mm", "b"], ["y"])],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.numpy_helper.from_array(np.ones((4, 2), np.float32), "w"),
         onnx.numpy_helper.from_array(np.zeros(2, np.float32), "b")])  # fmt: skip
    assert find_head(onnx.helper.make_model(graph)).features == "x"
    conv_only = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        graph.input,
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(HeadError, match="no fully connected last layer"):
        find_head(onnx.helper.make_model(conv_only))


def test_features_are_the_served_models_hidden_layer_and_a_model_without_it_cannot_train(scenario, tmp_path) -> None:
    path = tmp_path / "model.onnx"
    scenario.write_base(path)
    weight, bias = read_head(scenario.base)
    features = Features(path, "hidden", weight.shape[0])(scenario.eval_x)
    served = ort.InferenceSession(str(path)).run(None, {"x": scenario.eval_x})[0]
    # The head on the features is the served model: the same probabilities, within float rounding.
    logits = features @ weight + bias
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities / probabilities.sum(axis=1, keepdims=True), served, atol=1e-5)
    with pytest.raises(HeadError, match="no tensor 'penultimate'"):
        Features(path, "penultimate", 32)
    with pytest.raises(HeadError, match="are 32 wide"):
        Features(path, "hidden", 16)(scenario.eval_x[:3])


def test_fine_tuning_the_head_on_the_cameras_rows_beats_the_base(scenario, tmp_path) -> None:
    path = tmp_path / "model.onnx"
    scenario.write_base(path)
    weight, bias = read_head(scenario.base)
    features = Features(path, "hidden", weight.shape[0])
    eval_features = features(scenario.eval_x)
    base = accuracy(weight, bias, eval_features, scenario.eval_y)
    tuned_weight, tuned_bias, loss = train_head(weight, bias, features(scenario.pooled[0]), scenario.pooled[1],
                                                epochs=10, learning_rate=0.1, batch_size=32)  # fmt: skip
    tuned = accuracy(tuned_weight, tuned_bias, eval_features, scenario.eval_y)
    assert np.isfinite(loss) and loss > 0
    assert tuned > base + 0.02, (base, tuned)
