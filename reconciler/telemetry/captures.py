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
MAX_UNPACKED = 64 * 1024 * 1024
"""Bytes a batch may hold once unpacked (a few MiB compressed can claim gigabytes)."""
MAX_FOLDER = 1024 * 1024 * 1024
"""Bytes of captures kept per model version; past it batches are refused until a person moves some away."""


def capture_recorder(store: ArtifactStore) -> Callable[[Backend, str, str, str, bytes], bool | str]:
    """The device API's ``on_capture``: True when kept; False when the device's assignment asks for no capture of
    the model; a string saying what is wrong with the batch otherwise."""

    def record(backend: Backend, device: str, model: str, version: str, data: bytes) -> bool | str:
        assigned = backend.assignments_for(device).get(model)
        if assigned is None or assigned[0].capture is None or assigned[0].version != version:
            return False  # only the version the device is assigned: no batch lands in another version's dataset
        folder = store.captures(model, version)
        kept = sorted(folder.glob("*.npz")) if folder.is_dir() else []
        if sum(path.stat().st_size for path in kept) + len(data) > MAX_FOLDER:
            return f"the capture folder of {model} {version} is full ({MAX_FOLDER} bytes)"
        problem = batch_problem(data, _row_shape(kept[0]) if kept else None)
        if problem is not None:
            return problem
        store.record_capture(model, version, device, data)
        return True

    return record


def batch_problem(data: bytes, row_shape: tuple[int, ...] | None = None) -> str | None:
    """Why ``data`` is not a batch a build can read (``row_shape``: the one every batch of its folder has); None
    when it is. Sizes are read from the archive before anything is unpacked."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if sorted(m.filename for m in members) != ["x.npy", "y.npy"]:
                return "a batch holds x and y only"
            if sum(m.file_size for m in members) > MAX_UNPACKED:
                return f"a batch unpacks to at most {MAX_UNPACKED} bytes"
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"not an .npz batch: {str(exc)[:200]}"
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
    if row_shape is not None and tuple(x.shape[1:]) != row_shape:
        return f"rows of shape {tuple(x.shape[1:])}, but the folder's are {row_shape}"
    return None


def _row_shape(path) -> tuple[int, ...] | None:
    """The shape of one row of a kept batch (read from the array's header, not the array)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x.npy") as header:
            major, _ = np.lib.format.read_magic(header)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read(header)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return tuple(shape[1:])
