"""Training-side passes on real Keras models: pruning keeps its zeros, structure really shrinks, distillation
is kept only when it beats the same student trained without the teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reconciler.api.model import DistillPass, PrunePass
from reconciler.optimize import optimize
from reconciler.optimize.datasets import load_dataset
from reconciler.optimize.errors import BuildError

DIGITS = Path(__file__).resolve().parents[2] / "fleet-example" / "models" / "digits-cnn"


@pytest.fixture(scope="module")
def teacher():
    keras = optimize.keras_module()
    return keras.saving.load_model(DIGITS / "1.0.0" / "model.keras", compile=False)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DIGITS / "data" / "train.npz", "train"), load_dataset(DIGITS / "data" / "eval.npz", "eval")


def test_magnitude_pruning_reaches_its_sparsity_and_keeps_zeros_through_fine_tuning(teacher, data):
    train, evaluation = data
    result = optimize.magnitude_prune(teacher, PrunePass(method="magnitude", sparsity=0.6, fine_tune_epochs=2), train)
    assert 0.59 <= result.metrics["sparsity"] <= 0.61
    kernels = [layer.kernel.numpy() for layer in result.model.layers if hasattr(layer, "kernel")]
    assert all((k == 0).mean() >= 0.59 for k in kernels)
    assert optimize.accuracy(result.model, evaluation) > 0.9
    assert teacher.layers[0].kernel.numpy().astype(bool).mean() > 0.99  # the source model is untouched
    # What sparsity buys on these runtimes is size on the wire: the zstd-compressed weights, measured.
    assert result.metrics["wireBytesAfter"] < 0.7 * result.metrics["wireBytesBefore"]


def test_magnitude_pruning_that_saves_nothing_on_the_wire_is_refused_saying_so(teacher, data):
    with pytest.raises(BuildError) as refused:
        optimize.magnitude_prune(teacher, PrunePass(method="magnitude", sparsity=0.02, fine_tune_epochs=0), data[0])
    assert "magnitude pruning to sparsity 0.02 saves" in str(refused.value)
    assert "on the wire" in str(refused.value) and "nothing at run time" in str(refused.value)


def test_structured_pruning_removes_channels_and_keeps_the_function(teacher, data):
    train, evaluation = data
    result = optimize.structured_prune(teacher, PrunePass(method="structured", sparsity=0.5, fine_tune_epochs=0), train)
    widths = [layer.get_config().get("filters", layer.get_config().get("units")) for layer in result.model.layers]
    assert [w for w in widths if w] == [8, 16, 32, 10]
    assert result.metrics["parameters_after"] < 0.35 * result.metrics["parameters_before"]
    # Kept channels carry their trained weights: without any fine-tuning it still classifies well above chance.
    assert optimize.accuracy(result.model, evaluation) > 0.5


def test_distillation_is_kept_when_it_beats_the_student_alone(teacher, data):
    train, evaluation = data
    spec = DistillPass(width_multiplier=0.5, temperature=4, alpha=0.9, epochs=200)
    result = optimize.distill(teacher, spec, train.head(100), evaluation)
    assert result.metrics["student_accuracy"] > result.metrics["student_without_teacher_accuracy"] + 0.03
    assert result.model.count_params() < teacher.count_params() / 2


def test_distillation_that_does_not_help_fails_with_both_numbers(teacher, data):
    train, evaluation = data
    spec = DistillPass(width_multiplier=0.5, temperature=4, alpha=0.9, epochs=40)
    with pytest.raises(BuildError, match=r"^distillation did not help: the student reached 0\.\d{4} with the teacher "
                                         r"and 0\.\d{4} without it$"):  # fmt: skip
        optimize.distill(teacher, spec, train.head(60), evaluation)


def test_models_outside_the_supported_subset_are_refused_by_name(data):
    keras = optimize.keras_module()
    normalized = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(BuildError, match="does not support layer 'bn' \\(BatchNormalization\\)"):
        optimize.structured_prune(normalized, PrunePass(method="structured", sparsity=0.5), data[0])


def residual_model():
    """A small functional model with BatchNorm, a depthwise convolution and a residual add."""
    keras = optimize.keras_module()
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    branch = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    branch = keras.layers.BatchNormalization()(branch)
    x = keras.layers.Add(name="residual_add")([x, keras.layers.ReLU()(branch)])
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(32, activation="relu")(x)))


def test_a_residual_model_is_refused_for_structured_pruning_naming_the_join(data):
    with pytest.raises(BuildError, match=r"layer 'residual_add' \(Add\) joins 2 branches.*use magnitude pruning"):
        optimize.structured_prune(residual_model(), PrunePass(method="structured", sparsity=0.5), data[0])


def test_magnitude_pruning_takes_a_residual_functional_model(data):
    train, evaluation = data
    spec = PrunePass(method="magnitude", sparsity=0.5, fine_tune_epochs=2)
    result = optimize.magnitude_prune(residual_model(), spec, train)
    kernels = [layer.kernel.numpy() for layer in result.model.layers if type(layer).__name__ in ("Conv2D", "Dense")]
    assert len(kernels) == 3 and all((k == 0).mean() >= 0.49 for k in kernels)
    assert optimize.accuracy(result.model, evaluation) > 0.2  # fine-tuned from random weights: above chance (0.1)


def test_a_functional_chain_is_pruned_structurally(data):
    keras = optimize.keras_module()
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(x))
    chain = keras.Model(inputs, keras.layers.Dense(10)(x))
    spec = PrunePass(method="structured", sparsity=0.5, fine_tune_epochs=1)
    result = optimize.structured_prune(chain, spec, data[0])
    widths = [layer.kernel.shape[-1] for layer in result.model.layers if hasattr(layer, "kernel")]
    assert widths == [8, 16, 10]
    assert result.metrics["parameters_after"] < result.metrics["parameters_before"]


def test_softmax_outputs_are_handled_as_probabilities(data):
    keras = optimize.keras_module()
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])  # fmt: skip
    assert not optimize.outputs_logits(model)
    result = optimize.structured_prune(model, PrunePass(method="structured", sparsity=0.5, fine_tune_epochs=1), data[0])
    probabilities = result.model.predict(data[1].x[:5], verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
