"""From a FederatedTraining to a Flower run, and from a run's result to the new version's source.

Who calls it: the controller (:mod:`reconciler.controller.training`) and the training benches. Pure but for
reading and writing the run's folder: ``head.npz`` in (the base version's head), ``result.json`` and the trained
``head.npz`` out (written by :mod:`.flower_app`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the device's training process reads only the names below: it starts for every message
    import onnx

    from reconciler.api.training import FederatedTrainingSpec

RESULT = "result.json"
ROUNDS = "rounds.json"
"""Every round aggregated so far, written after each (the controller's status of a running training)."""
TRAINED = "head.npz"
BASE = "base-head.npz"


def prepare(spec: FederatedTrainingSpec, base: onnx.ModelProto, folder: Path, poll_seconds: float = 0.2,
            wait_seconds: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the base head into ``folder`` and return the run config of a training of ``spec`` from ``base``."""
    from .head import find_head, read_head

    head = find_head(base)
    weight, bias = read_head(base)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / BASE, weight=weight, bias=bias)
    secagg = spec.secure_aggregation
    return {
        "head": str(folder / BASE),
        "result-dir": str(folder),
        "features": head.features,
        "width": int(weight.shape[0]),
        "classes": int(weight.shape[1]),
        "join-timeout": spec.join_timeout.total_seconds(),
        "rounds": spec.rounds,
        "clients-per-round": spec.clients_per_round,
        "min-clients": spec.min_clients,
        "local-epochs": spec.local_epochs,
        "learning-rate": spec.learning_rate,
        "batch-size": spec.batch_size,
        "secagg": secagg.enabled,
        "shares": secagg.shares or 0,
        "threshold": secagg.reconstruction_threshold or 0,
        "clipping-range": secagg.clipping_range,
        "quantization-range": secagg.quantization_range,
        "round-timeout": spec.round_timeout.total_seconds(),
        "wait-timeout": (wait_seconds if wait_seconds is not None else spec.timeout.total_seconds()),
        "poll-interval": poll_seconds,
    }


def result(folder: Path) -> dict[str, Any] | None:
    """The ServerApp's result, or None while it has written none."""
    try:
        found = json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def finite(model: onnx.ModelProto) -> bool:
    """Whether the model's head holds only finite numbers."""
    from .head import read_head

    weight, bias = read_head(model)
    return bool(np.isfinite(weight).all() and np.isfinite(bias).all())


def trained_model(base: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """The base model with the trained head in place of its own."""
    from .head import with_head

    with np.load(folder / TRAINED, allow_pickle=False) as head:
        return with_head(base, head["weight"], head["bias"])
