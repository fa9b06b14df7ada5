"""Datasets that builds use (training, evaluation, calibration): ``.npz`` files with ``x`` and ``y`` arrays.

Who calls it: the pipeline and the passes. Everything is checked on load (keys, lengths, finite values)
so a bad file fails with its name instead of deep inside TensorFlow or onnxruntime.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BuildError


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def head(self, count: int) -> Dataset:
        return Dataset(self.x[:count], self.y[:count])


def load_dataset(path: Path, name: str) -> Dataset:
    """Load ``path`` (shown as ``name`` in errors) and check it is usable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise BuildError(f"{name}: an .npz dataset needs arrays 'x' and 'y' (found {sorted(data.files)})")
            x, y = data["x"], data["y"]
    except FileNotFoundError as exc:
        raise BuildError(f"{name}: no such file") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BuildError(f"{name}: not a readable .npz file ({exc})") from exc
    if len(x) != len(y) or len(x) == 0:
        raise BuildError(f"{name}: x has {len(x)} rows and y has {len(y)}; they must match and not be empty")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise BuildError(f"{name}: x must be numeric and finite")
    return Dataset(x.astype(np.float32), y)


def check_input_shape(dataset: Dataset, expected: tuple[int | None, ...], name: str) -> None:
    """Refuse data whose sample shape is not the model's input shape (batch dimension excluded)."""
    sample = tuple(dataset.x.shape[1:])
    want = tuple(expected[1:])
    if len(sample) != len(want) or any(w is not None and w != s for w, s in zip(want, sample, strict=False)):
        raise BuildError(f"{name}: samples have shape {sample}, the model expects {want}")
