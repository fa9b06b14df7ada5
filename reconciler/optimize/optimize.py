"""Training-side passes on Keras models: magnitude pruning, structured pruning, distillation.

Who calls it: the pipeline, before conversion. TensorFlow/Keras is imported inside the functions only.
All passes are seeded with TensorFlow op determinism on, so the same recipe gives the same weights.

- Magnitude pruning zeroes the smallest weights of every Conv/Dense kernel and fine-tunes with the
  mask re-applied after each batch, so the zeros stay zeros.
- Structured pruning removes whole filters/units (lowest L1 norm) and rebuilds a smaller Sequential
  model, so the artifact really gets smaller and faster; then it fine-tunes.
- Distillation trains a narrower student on the teacher's softened outputs and, with the same seed,
  the same student on labels alone: the pass fails unless distillation wins, with both numbers.

Supported models: magnitude pruning takes any Keras model (it only masks Conv/Dense kernels). Structured
pruning and distillation rebuild the model narrower, so they take Sequential classifiers, or functional models
whose layers form one chain, built from Conv1D/Conv2D, Dense, pooling, Flatten and Dropout layers. Anything
else is refused with the layer's name (for a residual model, the layer that joins the branches) rather than
pruned wrongly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from reconciler.api.model import DistillPass, PrunePass

from .datasets import Dataset
from .errors import BuildError

SEED = 7
_RESHAPING = ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "Dropout")
_PRUNABLE = ("Conv1D", "Conv2D", "Dense")


@dataclass(frozen=True)
class PassResult:
    model: object
    metrics: dict[str, float]


def keras_module():
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing warnings say nothing a build log reader can act on
    tf.config.experimental.enable_op_determinism()
    return keras


def outputs_logits(model) -> bool:
    return model.layers[-1].get_config().get("activation") != "softmax"


def accuracy(model, data: Dataset) -> float:
    predictions = model.predict(data.x, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(predictions, axis=1) == data.y))


def _as_chain(model, what: str):
    """``model`` as a Sequential: itself, or a functional model whose layers form one chain rebuilt as the
    Sequential of the same layers (weights shared). A model that branches is refused, naming the layer that joins
    the branches: removing channels there would have to agree across every branch that feeds it."""
    keras = keras_module()
    if isinstance(model, keras.Sequential):
        return model
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    join = next((layer for layer in layers if isinstance(layer.input, (list, tuple))), None)
    if join is not None:
        raise BuildError(f"{what} narrows the model layer by layer, and layer {join.name!r} ({type(join).__name__}) "
                         f"joins {len(join.input)} branches, whose channels would have to change alike: use "
                         "magnitude pruning, which keeps every shape")  # fmt: skip
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise BuildError(f"{what} needs a model with one input and one output, not {len(model.inputs)} and "
                         f"{len(model.outputs)}")  # fmt: skip
    return keras.Sequential([keras.Input(shape=model.input_shape[1:]), *layers], name=model.name)


def _check_supported(model) -> list:
    keras = keras_module()
    if not isinstance(model, keras.Sequential):
        raise BuildError(f"this pass supports Keras Sequential models, not {type(model).__name__}")
    for layer in model.layers:
        name = type(layer).__name__
        if name not in _PRUNABLE + _RESHAPING + ("Flatten", "GlobalAveragePooling1D", "GlobalAveragePooling2D"):
            raise BuildError(f"this pass does not support layer {layer.name!r} ({name})")
    return [i for i, layer in enumerate(model.layers) if type(layer).__name__ in _PRUNABLE]


def _fit(model, data: Dataset, epochs: int, callbacks=()) -> None:
    keras = keras_module()
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=outputs_logits(model)),
    )
    if epochs:
        keras.utils.set_random_seed(SEED)
        model.fit(data.x, data.y, epochs=epochs, batch_size=32, verbose=0, callbacks=list(callbacks))
    _check_finite(model)


def _check_finite(model) -> None:
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        raise BuildError("training diverged: the weights hold NaN or infinity")


def magnitude_prune(model, spec: PrunePass, train: Dataset) -> PassResult:
    """Any Keras model (Sequential or functional, with BatchNorm, depthwise or residual blocks): only the
    Conv/Dense kernels are masked, so no shape changes and nothing else needs to understand the graph."""
    keras = keras_module()
    prunable = [i for i, layer in enumerate(model.layers) if type(layer).__name__ in _PRUNABLE]
    if not prunable:
        raise BuildError("magnitude pruning found no Conv1D, Conv2D or Dense kernel to prune")
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    masks = {}
    for index in prunable:
        kernel = pruned.layers[index].kernel
        values = np.abs(kernel.numpy())
        threshold = np.quantile(values, spec.sparsity)
        masks[index] = (values > threshold).astype("float32")
        kernel.assign(kernel.numpy() * masks[index])

    class KeepZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for index, mask in masks.items():
                kernel = pruned.layers[index].kernel
                kernel.assign(kernel.numpy() * mask)

    before = _wire_bytes(model)
    _fit(pruned, train, spec.fine_tune_epochs, [KeepZeros()])
    kernels = [pruned.layers[i].kernel.numpy() for i in prunable]
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    after = _wire_bytes(pruned)
    # Zeroed weights keep the tensors' shapes: no runtime here skips them, so the only gain is on the wire.
    if after > before * (1 - MIN_WIRE_SAVING):
        raise BuildError(f"magnitude pruning to sparsity {zeros:.2f} saves {1 - after / before:.1%} on the wire "
                         f"({after} vs {before} bytes of weights, zstd-compressed) and nothing at run time (the "
                         "runtimes compute zeros like any weight): drop the pass, or prune structured")  # fmt: skip
    return PassResult(pruned, {"sparsity": round(zeros, 4), "wireBytesBefore": before, "wireBytesAfter": after})


MIN_WIRE_SAVING = 0.1
"""Magnitude pruning must shrink the compressed weights by this much to be worth a pass: the runtimes the
profiles use run dense kernels, so size on the wire is all that sparsity buys."""


def _wire_bytes(model) -> int:
    """The model's weights as they travel: float32, zstd-compressed (what a device downloads, before deltas)."""
    import zstandard

    weights = b"".join(np.asarray(w, dtype=np.float32).tobytes() for w in model.get_weights())
    return len(zstandard.ZstdCompressor(level=9).compress(weights))


def structured_prune(model, spec: PrunePass, train: Dataset) -> PassResult:
    model = _as_chain(model, "structured pruning")
    prunable = _check_supported(model)
    if len(prunable) < 2:
        raise BuildError("structured pruning needs at least two Conv/Dense layers (the output layer is kept whole)")
    keep: dict[int, np.ndarray] = {}
    for index in prunable[:-1]:  # never the output layer
        kernel = model.layers[index].kernel.numpy()
        norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
        count = max(1, math.ceil(kernel.shape[-1] * (1 - spec.sparsity)))
        keep[index] = np.sort(np.argsort(-norms, kind="stable")[:count])
    smaller = _rebuild(model, {i: len(k) for i, k in keep.items()})
    _copy_kept_weights(model, smaller, keep)
    before = sum(int(np.prod(w.shape)) for w in model.get_weights())
    after = sum(int(np.prod(w.shape)) for w in smaller.get_weights())
    _fit(smaller, train, spec.fine_tune_epochs)
    return PassResult(smaller, {"parameters_before": before, "parameters_after": after})


def _rebuild(model, widths: dict[int, int], output_activation: str | None = None):
    """A Sequential like ``model`` with the given filter/unit counts per layer index (fresh weights)."""
    keras = keras_module()
    layers = [keras.Input(shape=model.input_shape[1:])]
    for index, layer in enumerate(model.layers):
        config = layer.get_config()
        if index in widths:
            config["filters" if "filters" in config else "units"] = widths[index]
        if output_activation is not None and index == len(model.layers) - 1:
            config["activation"] = output_activation
        layers.append(type(layer).from_config(config))
    return keras.Sequential(layers, name=model.name)


def _copy_kept_weights(source, target, keep: dict[int, np.ndarray]) -> None:
    """Copy the kept output channels, and slice the next layer's inputs to match."""
    incoming: np.ndarray | None = None  # kept channels feeding the current layer
    spatial = 1  # Flatten multiplies channels by the spatial size
    for index, (old, new) in enumerate(zip(source.layers, target.layers, strict=True)):
        name = type(old).__name__
        if name == "Flatten":
            shape = old.input.shape[1:-1]
            spatial = int(np.prod(shape)) if len(shape) else 1
            continue
        if name not in _PRUNABLE:
            continue
        kernel, bias = old.get_weights()
        if incoming is not None:
            if name == "Dense" and spatial > 1:
                channels = kernel.shape[0] // spatial
                rows = (np.arange(spatial)[:, None] * channels + incoming[None, :]).ravel()
                kernel = kernel[rows]
            else:
                kernel = np.take(kernel, incoming, axis=-2)
        if index in keep:
            kernel, bias = kernel[..., keep[index]], bias[keep[index]]
            incoming = keep[index]
        else:
            incoming = None
        spatial = 1
        new.set_weights([kernel, bias])


def distill(teacher, spec: DistillPass, train: Dataset, evaluation: Dataset) -> PassResult:
    keras = keras_module()
    import tensorflow as tf

    teacher = _as_chain(teacher, "distillation")
    prunable = _check_supported(teacher)
    widths = {}
    for index in prunable[:-1]:
        config = teacher.layers[index].get_config()
        width = config.get("filters", config.get("units"))
        widths[index] = max(1, math.ceil(width * spec.width_multiplier))
    teacher_logits = teacher.predict(train.x, verbose=0, batch_size=256)
    if not outputs_logits(teacher):
        teacher_logits = np.log(np.clip(teacher_logits, 1e-7, 1.0))
    classes = teacher_logits.shape[1]
    soft = tf.nn.softmax(teacher_logits / spec.temperature).numpy()
    targets = np.concatenate([np.eye(classes, dtype="float32")[train.y], soft], axis=1)
    temperature, alpha = spec.temperature, spec.alpha

    def loss(y_true, y_pred):
        hard, soft_true = y_true[:, :classes], y_true[:, classes:]
        ce = keras.losses.categorical_crossentropy(hard, y_pred, from_logits=True)
        log_student = keras.ops.log_softmax(y_pred / temperature, axis=-1)
        kl = keras.ops.sum(soft_true * (keras.ops.log(keras.ops.clip(soft_true, 1e-7, 1.0)) - log_student), axis=-1)
        return alpha * kl * temperature**2 + (1 - alpha) * ce

    keras.utils.set_random_seed(SEED)
    student = _rebuild(teacher, widths, output_activation="linear")
    student.compile(keras.optimizers.Adam(1e-3), loss)
    keras.utils.set_random_seed(SEED)
    student.fit(train.x, targets, epochs=spec.epochs, batch_size=32, verbose=0)
    _check_finite(student)

    keras.utils.set_random_seed(SEED)
    baseline = _rebuild(teacher, widths, output_activation="linear")
    _fit(baseline, train, spec.epochs)

    distilled_accuracy, baseline_accuracy = accuracy(student, evaluation), accuracy(baseline, evaluation)
    metrics = {
        "student_accuracy": round(distilled_accuracy, 4),
        "student_without_teacher_accuracy": round(baseline_accuracy, 4),
        "teacher_accuracy": round(accuracy(teacher, evaluation), 4),
    }
    if distilled_accuracy <= baseline_accuracy:
        raise BuildError(
            f"distillation did not help: the student reached {distilled_accuracy:.4f} with the teacher and "
            f"{baseline_accuracy:.4f} without it"
        )
    if not outputs_logits(teacher):
        final = _rebuild(teacher, widths)
        final.set_weights(student.get_weights())
        student = final
    return PassResult(student, metrics)
