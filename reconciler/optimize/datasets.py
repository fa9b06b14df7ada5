"""Datasets that builds use (training, evaluation, calibration): ``.npz`` files of inputs and labels ``y``.

A model with one input reads the array ``x``; an ONNX model with several inputs reads one array per input, named
as the model names its inputs (``np.savez(path, image=..., meta=..., y=...)``).

Who calls it: the pipeline and the passes. Everything is checked on load (keys, lengths, finite values)
so a bad file fails with its name instead of deep inside TensorFlow or onnxruntime.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reconciler.artifact.runtime import Inputs, inputs_from_arrays, row_count, take

from .errors import BuildError


@dataclass(frozen=True)
class Dataset:
    x: Inputs
    y: np.ndarray

    def __len__(self) -> int:
        return row_count(self.x)

    def head(self, count: int) -> Dataset:
        return Dataset(take(self.x, 0, count), self.y[:count])

    @property
    def named(self) -> bool:
        """The inputs are arrays by name (a model with several inputs)."""
        return isinstance(self.x, Mapping)

    def renamed(self, names: Mapping[str, str]) -> Dataset:
        """The same arrays under other input names (the source's names to the artifact's)."""
        assert isinstance(self.x, Mapping)
        return Dataset({names[name]: value for name, value in self.x.items()}, self.y)

    def digest_material(self) -> bytes:
        if isinstance(self.x, Mapping):
            parts = [name.encode() + b"\0" + self.x[name].tobytes() for name in sorted(self.x)]
            return b"".join(parts) + self.y.tobytes()
        return self.x.tobytes() + self.y.tobytes()


def load_dataset(path: Path, name: str) -> Dataset:
    """Load ``path`` (shown as ``name`` in errors) and check it is usable. A folder is every ``.npz`` in it, in
    name order, rows appended (a model version's captured inputs, ``captures/MODEL/VERSION/``, is such a folder)."""
    if Path(path).is_dir():
        return _load_folder(Path(path), name)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "y" not in data or len(data.files) < 2:
                raise BuildError(f"{name}: an .npz dataset needs labels 'y' and inputs: 'x', or one array per model "
                                 f"input named after it (found {sorted(data.files)})")  # fmt: skip
            x = inputs_from_arrays({key: data[key] for key in data.files})
            y = data["y"]
    except FileNotFoundError as exc:
        raise BuildError(f"{name}: no such file") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BuildError(f"{name}: not a readable .npz file ({exc})") from exc
    arrays = x if isinstance(x, Mapping) else {"x": x}
    for key, value in arrays.items():
        if len(value) != len(y) or len(value) == 0:
            raise BuildError(f"{name}: {key} has {len(value)} rows and y has {len(y)}; they must match and not be "
                             "empty")  # fmt: skip
        if not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
            raise BuildError(f"{name}: {key} must be numeric and finite")
    if isinstance(x, Mapping):
        return Dataset({key: value.astype(np.float32) for key, value in x.items()}, y)
    return Dataset(x.astype(np.float32), y)


def _load_folder(folder: Path, name: str) -> Dataset:
    parts = [load_dataset(file, f"{name}/{file.name}") for file in sorted(folder.glob("*.npz"))]
    if not parts:
        raise BuildError(f"{name}: a dataset folder needs .npz files; this one has none")
    if any(part.named != parts[0].named for part in parts):
        raise BuildError(f"{name}: some files name one array per input and others use x: use one way")
    y = np.concatenate([part.y for part in parts])
    if not parts[0].named:
        try:
            return Dataset(np.concatenate([part.x for part in parts]), y)
        except ValueError as exc:
            raise BuildError(f"{name}: the files' rows differ in shape ({exc})") from None
    keys = set(parts[0].x)
    if any(set(part.x) != keys for part in parts):
        raise BuildError(f"{name}: the files name different inputs")
    return Dataset({key: np.concatenate([part.x[key] for part in parts]) for key in sorted(keys)}, y)


def check_input_shape(dataset: Dataset, expected: Mapping[str, tuple[int | None, ...]], name: str) -> None:
    """Refuse data whose inputs are not the model's, by name and sample shape (batch dimension excluded)."""
    if not dataset.named:
        if len(expected) > 1:
            raise BuildError(f"{name}: the model takes {len(expected)} inputs ({', '.join(expected)}): name one array "
                             "after each instead of 'x'")  # fmt: skip
        _check_shape(dataset.x, next(iter(expected.values())), name)
        return
    assert isinstance(dataset.x, Mapping)
    if set(dataset.x) != set(expected):
        raise BuildError(f"{name}: arrays {', '.join(sorted(dataset.x))}, but the model's inputs are "
                         f"{', '.join(expected)}")  # fmt: skip
    for key, shape in expected.items():
        _check_shape(dataset.x[key], shape, f"{name}.{key}")


def _check_shape(x: np.ndarray, expected: tuple[int | None, ...], name: str) -> None:
    sample = tuple(x.shape[1:])
    want = tuple(expected[1:])
    if len(sample) != len(want) or any(w is not None and w != s for w, s in zip(want, sample, strict=False)):
        raise BuildError(f"{name}: samples have shape {sample}, the model expects {want}")
