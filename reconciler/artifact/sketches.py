"""Mergeable quantile sketches of what a model sees and says: the reference a build ships, the summaries devices
send, and what the controller merges fleet-wide.

Pure (no I/O). One KLL sketch (Apache DataSketches, ``k`` = 200: normalized rank error about 1.65 %) per input
feature, per output figure and for latency. Sketches of any number of devices merge into the sketch of their pooled
data within that rank error, so the controller compares a fleet's distributions with a build's reference without
any raw row leaving a device.

Features are a fixed, cheap projection of the model's inputs, the same on the build machine and on every device:

- a 2-D input (rows x columns): one feature per column, ``input_0[3]``; past ``MAX_FEATURES`` columns, contiguous
  groups of columns averaged (``input_0[0:4]``), so every column still counts;
- a 3-D or 4-D input (sequences, images): the mean per channel (``input_0[c1]``), the channel axis being the last
  one when it is short (NHWC, or a sequence's features) and the second otherwise (NCHW).

Outputs: a classifier (several output columns) gives ``score``, the top class's probability (a softmax first when
the rows are logits), and ``margin``, top-1 minus top-2; a regressor (one column) gives ``output``.

Sketches travel base64-encoded (``encode``/``decode``); a string that is not a sketch is refused, never trusted.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import re
from collections.abc import Iterable, Mapping

import datasketches
import numpy as np

from .runtime import Inputs

K = 200
MAX_FEATURES = 32
"""Features per model input: enough for tabular models, bounded for wide ones."""
MAX_ENCODED = 64 * 1024
"""Longest encoded sketch accepted (a k=200 float sketch of any length stays under 8 KiB)."""
LATENCY = "latencyMs"
MAX_VALUES = 1 << 40
"""Values one sketch may count (far above any device's traffic; a forged count past it is refused)."""
REFERENCE_POINTS = 256
"""Values a build's reference keeps per figure: the sample itself up to this size, else its quantiles at
(i + 0.5) / 256 (within 1/512 of its distribution). Few enough that the sketch never compacts, so the same build
gives the same bytes (KLL's compaction flips coins; an artifact's digest must not)."""


def new() -> datasketches.kll_floats_sketch:
    return datasketches.kll_floats_sketch(K)


def encode(sketch: datasketches.kll_floats_sketch) -> str:
    return base64.b64encode(sketch.serialize()).decode("ascii")


def decode(text: str, strict: bool = False) -> datasketches.kll_floats_sketch:
    """A sketch from its encoding; ValueError for anything that is not one. ``strict`` (what the device API asks of
    every upload; what is stored was checked so): also refuse what a device forged, values that are not finite, a
    count its items' weights do not add up to, or more values than ``MAX_VALUES``: a sketch that deserializes
    can still make every later merge or comparison fail."""
    if not isinstance(text, str) or len(text) > MAX_ENCODED:
        raise ValueError("not an encoded sketch")
    try:
        sketch = datasketches.kll_floats_sketch.deserialize(base64.b64decode(text, validate=True))
        items = [(float(item), int(weight)) for item, weight in sketch] if strict else []
    except (binascii.Error, RuntimeError, ValueError, OverflowError) as exc:
        raise ValueError(f"not an encoded sketch: {exc}") from None
    if not strict:
        return sketch
    if sketch.n > MAX_VALUES or sum(weight for _, weight in items) != sketch.n:
        raise ValueError("not an encoded sketch: its count and its items disagree")
    if not all(math.isfinite(item) for item, _ in items):
        raise ValueError("not an encoded sketch: values that are not finite")
    return sketch


def merged(encoded: Iterable[str]) -> datasketches.kll_floats_sketch:
    """One sketch of every encoded sketch's data (those that do not decode are left out)."""
    total = new()
    for text in encoded:
        try:
            total.merge(decode(text))
        except (ValueError, RuntimeError):
            continue
    return total


def merge_maps(left: Mapping[str, str], right: Mapping[str, str]) -> dict[str, str]:
    """Two ``{name: encoded sketch}`` maps merged name by name (a name on one side only is kept)."""
    result = dict(left)
    for name, text in right.items():
        result[name] = encode(merged([left[name], text])) if name in left else text
    return result


def features(inputs: Inputs) -> dict[str, np.ndarray]:
    """name -> one value per row: the fixed projection of every input (see the module's docstring). A single array
    is the artifact's ``input_0``; several are named as the artifact names them (``input_0``, ``input_1``, ...)."""
    named = inputs.items() if isinstance(inputs, Mapping) else [("input_0", inputs)]
    result: dict[str, np.ndarray] = {}
    for name, array in sorted(named, key=lambda item: _natural(item[0])):
        values = np.asarray(array, dtype=np.float32)
        rows = values.shape[0] if values.ndim else 0
        if values.ndim == 1:
            result[name] = values
        elif values.ndim == 2:
            result.update(_columns(name, values))
        elif values.ndim >= 3:
            axis = values.ndim - 1 if values.shape[-1] <= MAX_FEATURES else 1
            moved = np.moveaxis(values, axis, -1).reshape(rows, -1, values.shape[axis])
            result.update({f"{name}[c{c}]": v for c, v in enumerate(moved.mean(axis=1).T[:MAX_FEATURES])})
    return result


def _natural(name: str) -> list[int | str]:
    """``input_10`` after ``input_9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _columns(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    columns = values.shape[1]
    if columns <= MAX_FEATURES:
        return {f"{name}[{i}]": values[:, i] for i in range(columns)}
    edges = np.linspace(0, columns, MAX_FEATURES + 1).astype(int)
    return {f"{name}[{a}:{b}]": values[:, a:b].mean(axis=1) for a, b in itertools.pairwise(edges)}


def output_figures(outputs: np.ndarray) -> dict[str, np.ndarray]:
    """name -> one value per row of a model's (first) output."""
    values = np.asarray(outputs, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    values = values.reshape(values.shape[0], -1) if values.ndim > 2 else values
    if values.shape[1] == 1:
        return {"output": values[:, 0]}
    probabilities = values
    if np.any(values < 0) or not np.allclose(values.sum(axis=1), 1.0, atol=1e-3):  # logits
        shifted = np.exp(values - values.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    top = np.sort(probabilities, axis=1)[:, ::-1]
    return {"score": top[:, 0], "margin": top[:, 0] - top[:, 1]}


def figures(inputs: Inputs | None, outputs: np.ndarray | None) -> dict[str, np.ndarray]:
    """name -> one value per row: the input features and the output figures together."""
    return {**(features(inputs) if inputs is not None else {}),
            **(output_figures(outputs) if outputs is not None else {})}  # fmt: skip


def sketch_rows(inputs: Inputs | None, outputs: np.ndarray | None) -> dict[str, datasketches.kll_floats_sketch]:
    """Fresh sketches of a batch of rows (the reference a build ships is this over its evaluation data)."""
    sketches: dict[str, datasketches.kll_floats_sketch] = {}
    for name, column in figures(inputs, outputs).items():
        finite = column[np.isfinite(column)].astype(np.float32)
        if finite.size:
            sketch = sketches[name] = new()
            sketch.update(finite)
    return sketches


def reference_rows(inputs: Inputs | None, outputs: np.ndarray | None) -> dict[str, datasketches.kll_floats_sketch]:
    """The reference a build ships: per figure, an exact sketch (no compaction, hence deterministic) of the rows'
    values, or of ``REFERENCE_POINTS`` quantiles of them. Its ``n`` is what the drift threshold counts, so a large
    evaluation set is counted as ``REFERENCE_POINTS`` values: a larger threshold, never a false alarm."""
    found: dict[str, datasketches.kll_floats_sketch] = {}
    for name, column in figures(inputs, outputs).items():
        finite = np.sort(np.asarray(column, dtype=np.float64)[np.isfinite(column)])
        if not finite.size:
            continue
        if finite.size > REFERENCE_POINTS:
            finite = np.quantile(finite, (np.arange(REFERENCE_POINTS) + 0.5) / REFERENCE_POINTS, method="inverted_cdf")
        sketch = found[name] = datasketches.kll_floats_sketch(REFERENCE_POINTS)
        sketch.update(finite.astype(np.float32))
    return found
