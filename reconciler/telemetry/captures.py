"""Batches of sampled inputs that devices upload (``monitoring.capture``): checked, then kept in the artifact
store as the model version's dataset folder.

Who calls it: the device API (``on_capture``), once per batch, in a worker thread. A batch is taken only from a
device whose assignment of the model asks for capture now, and only when it is what a build can read: an
``.npz`` (no pickles) with numeric, finite ``x`` and labels ``y`` of as many rows.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

import numpy as np

from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import Backend

MAX_ROWS = 100_000


def capture_recorder(store: ArtifactStore) -> Callable[[Backend, str, str, str, bytes], bool | str]:
    """The device API's ``on_capture``: True when kept; False when the device's assignment asks for no capture of
    the model; a string saying what is wrong with the batch otherwise."""

    def record(backend: Backend, device: str, model: str, version: str, data: bytes) -> bool | str:
        assigned = backend.assignments_for(device).get(model)
        if assigned is None or assigned[0].capture is None:
            return False
        problem = batch_problem(data)
        if problem is not None:
            return problem
        store.record_capture(model, version, device, data)
        return True

    return record


def batch_problem(data: bytes) -> str | None:
    """Why ``data`` is not a batch a build can read; None when it is."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as batch:
            if set(batch.files) != {"x", "y"}:
                return f"a batch holds x and y, not {sorted(batch.files)}"
            x, y = batch["x"], batch["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        return f"not an .npz batch: {str(exc)[:200]}"
    if len(x) != len(y) or not 0 < len(x) <= MAX_ROWS:
        return f"x has {len(x)} rows and y {len(y)}: they must match, between 1 and {MAX_ROWS}"
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)) or not np.isfinite(x).all():
        return "x and y must be numeric, x finite"
    return None
