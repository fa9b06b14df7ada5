"""Quality metrics per task: what "as good as the source" means for a classifier, a regressor or a detector.

Pure (no I/O). The build compares every variant's outputs with the evaluation labels and with the source model's
outputs on the same rows; which numbers it reports, and which one the gates hold against the source, follow
``Model.spec.task``:

    classification     accuracy (top-1), agreement (same class as the source)          gate: maxAccuracyDrop
    binary             accuracy at ``threshold``, agreement (same side of it)            gate: maxAccuracyDrop
    regression         mae, rmse, relativeError (mae over mean |y|), maxDeviation       gate: maxMAEIncrease
                       (largest |variant - source| on a row)
    anomaly-detection  one score per row: auroc (when labels hold both classes), score   gate: maxAccuracyDrop
                       correlation with the source; several outputs: as classification     (on auroc)

A regression variant is never reported with an accuracy: the share of exactly equal floats says nothing.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Task = Literal["classification", "binary", "regression", "anomaly-detection"]


def primary(task: str, outputs: np.ndarray) -> tuple[str, bool]:
    """(the metric the gates hold against the source, whether higher is better)."""
    if task == "regression":
        return "mae", False
    if task == "anomaly-detection" and _scores(outputs) is not None:
        return "auroc", True
    return "accuracy", True


def evaluate(task: str, outputs: np.ndarray, labels: np.ndarray, reference: np.ndarray | None = None,
             threshold: float = 0.5) -> dict[str, float]:  # fmt: skip
    """The task's metrics of ``outputs`` against ``labels``, and against the source's ``reference`` outputs."""
    reference = outputs if reference is None else reference
    if task == "regression":
        return _regression(outputs, labels, reference)
    if task == "binary":
        ours, theirs = _above(outputs, threshold), _above(reference, threshold)
        truth = np.asarray(labels).reshape(-1) >= threshold if _is_float(labels) else np.asarray(labels).reshape(-1)
        return {"accuracy": _round(np.mean(ours == truth.astype(bool))), "agreement": _round(np.mean(ours == theirs))}
    if task == "anomaly-detection":
        scores = _scores(outputs)
        if scores is not None:
            return _anomaly(scores, labels, _scores(reference))
    predictions, source = np.argmax(outputs, axis=1), np.argmax(reference, axis=1)
    return {"accuracy": _round(np.mean(predictions == labels)), "agreement": _round(np.mean(predictions == source))}


def _regression(outputs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    predicted = outputs.reshape(len(outputs), -1).astype(np.float64)
    truth = np.asarray(labels, dtype=np.float64).reshape(len(outputs), -1)
    error = np.abs(predicted - truth)
    scale = float(np.mean(np.abs(truth))) or 1.0
    deviation = np.abs(predicted - reference.reshape(len(outputs), -1).astype(np.float64))
    return {"mae": _round(np.mean(error), 6), "rmse": _round(np.sqrt(np.mean(error**2)), 6),
            "relativeError": _round(np.mean(error) / scale, 6),
            "maxDeviation": _round(np.max(deviation), 6)}  # fmt: skip


def _anomaly(scores: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> dict[str, float]:
    found: dict[str, float] = {}
    truth = np.asarray(labels).reshape(-1)
    if set(np.unique(truth).tolist()) == {0, 1}:
        found["auroc"] = _round(auroc(scores, truth.astype(bool)))
    if reference is not None and np.std(scores) > 0 and np.std(reference) > 0:
        found["scoreCorrelation"] = _round(np.corrcoef(scores, reference)[0, 1])
    return found


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (Mann-Whitney U), ties counted half."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of tied scores
        tied = scores == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    count_pos, count_neg = int(positive.sum()), int((~positive).sum())
    if not count_pos or not count_neg:
        return float("nan")
    return float((ranks[positive].sum() - count_pos * (count_pos + 1) / 2) / (count_pos * count_neg))


def _scores(outputs: np.ndarray) -> np.ndarray | None:
    """One score per row, or None when the model outputs several values (classes)."""
    flat = outputs.reshape(len(outputs), -1)
    return flat[:, 0].astype(np.float64) if flat.shape[1] == 1 else None


def _above(outputs: np.ndarray, threshold: float) -> np.ndarray:
    flat = outputs.reshape(len(outputs), -1)
    return flat[:, 0] >= threshold if flat.shape[1] == 1 else np.argmax(flat, axis=1) == 1


def _is_float(values: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(values).dtype, np.floating)


def _round(value, digits: int = 4) -> float:
    return round(float(value), digits)


def headline(measured: dict[str, float], reference: dict[str, float]) -> tuple[str, str]:
    """(the task's main figure, its change against the source) for tables: ``0.8700`` and ``+0.50`` (accuracy
    points), ``auroc 0.9412`` and ``-0.20``, ``mae 0.1234`` and ``+3.1%`` (relative rise)."""
    if "mae" in measured:
        base = reference.get("mae")
        rise = f"{(measured['mae'] - base) / base * 100:+.1f}%" if base else "-"
        return f"mae {measured['mae']:.4g}", rise
    metric = "auroc" if "auroc" in measured else "accuracy"
    if metric not in measured:
        return "-", "-"
    value = measured[metric]
    delta = f"{(value - reference[metric]) * 100:+.2f}" if metric in reference else "-"
    return (f"auroc {value:.4f}" if metric == "auroc" else f"{value:.4f}"), delta
