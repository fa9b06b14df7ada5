"""What the controller takes of an uploaded capture batch: only the version the device is assigned, only a plain
.npz of x and y whose size is read before it is unpacked, only rows shaped like the folder's."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import LocalBackend
from reconciler.plan import Desired
from reconciler.plan.desired import CaptureSettings
from reconciler.telemetry.captures import MAX_UNPACKED, batch_problem, capture_recorder


def batch(rows: int = 4, width: int = 8) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.ones((rows, width), np.float32), y=np.zeros(rows, np.int64))
    return buffer.getvalue()


def test_only_a_plain_batch_of_the_assigned_version_lands_in_its_folder(tmp_path: Path):
    backend = LocalBackend(tmp_path / "state")
    backend.register_device("d1", {})
    backend.apply([Desired("d1", "m", "2.0.0", "p", "r", None, True, capture=CaptureSettings(0.02, 1 << 20))])
    store = ArtifactStore(tmp_path / "store")
    record = capture_recorder(store)
    assert record(backend, "d1", "m", "2.0.0", batch()) is True
    assert record(backend, "d1", "m", "3.0.0", batch()) is False  # a version it is not assigned: refused
    assert record(backend, "d1", "other", "2.0.0", batch()) is False
    assert "shape" in record(backend, "d1", "m", "2.0.0", batch(width=9))  # the folder's rows are 8 wide
    [kept] = store.captures("m", "2.0.0").glob("*.npz")
    assert kept.name.startswith("d1-")
    backend.close()


def test_a_batch_is_judged_before_it_is_unpacked():
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", b"\0" * (MAX_UNPACKED + 1))
        archive.writestr("y.npy", b"")
    assert len(bomb.getvalue()) < 1 << 20 and "unpacks" in batch_problem(bomb.getvalue())
    extra = io.BytesIO()
    np.savez(extra, x=np.zeros((2, 2)), y=np.zeros(2), z=np.zeros(2))
    assert "x and y only" in batch_problem(extra.getvalue())
    assert "not an .npz" in batch_problem(b"PK\x03\x04 not really")
    pickled = io.BytesIO()
    np.savez(pickled, x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.zeros(2))
    assert batch_problem(pickled.getvalue()) is not None  # object arrays need pickles: never loaded
    assert batch_problem(batch()) is None
