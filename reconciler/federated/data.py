"""A device's labeled rows for training: every ``.npz`` (``x``, ``y``) in one folder, read without pickles.

Who calls it: the device's training (``flower_app.HeadClient``) and the agent, which counts the rows before it
joins a training. The rows never leave the device; only the trained head's update does.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

MAX_BYTES = 256 * 1024 * 1024
"""Rows a device reads for training at most (the files' uncompressed sizes, read before anything is loaded)."""


def labeled_rows(folder: Path, max_bytes: int = MAX_BYTES) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """((x, y), "") with every file's rows in name order, or (None, why not)."""
    if not str(folder) or not folder.is_dir():
        return None, f"no labeled data: {folder} is not a folder"
    files = sorted(folder.glob("*.npz"))
    if not files:
        return None, f"no labeled data: no .npz file in {folder}"
    inputs, labels, total = [], [], 0
    for path in files:
        try:
            with zipfile.ZipFile(path) as archive:
                total += sum(member.file_size for member in archive.infolist())
            if total > max_bytes:
                return None, f"the labeled data in {folder} is over {max_bytes} bytes"
            with np.load(path, allow_pickle=False) as data:
                if not {"x", "y"} <= set(data.files):
                    return None, f"{path.name}: a labeled file holds 'x' (inputs) and 'y' (labels)"
                x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"]).reshape(-1)
        except (OSError, ValueError, TypeError, zipfile.BadZipFile) as exc:
            return None, f"{path.name}: not a readable .npz file ({exc})"
        if len(x) != len(y):
            return None, f"{path.name}: {len(x)} inputs but {len(y)} labels"
        if inputs and x.shape[1:] != inputs[0].shape[1:]:
            return None, f"{path.name}: rows of shape {x.shape[1:]}, other files' are {inputs[0].shape[1:]}"
        if x.ndim < 2:
            return None, f"{path.name}: 'x' holds one row per example (at least two dimensions)"
        if not np.issubdtype(y.dtype, np.integer) and not np.all(np.equal(np.mod(y, 1), 0)):
            return None, f"{path.name}: labels must be class indices"
        inputs.append(x)
        labels.append(y.astype(np.int64))
    return (np.concatenate(inputs), np.concatenate(labels)), ""
