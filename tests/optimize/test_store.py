"""The content-addressed store: atomic entries, corruption detection, build cache, garbage collection."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.artifact.store import ArtifactStore, StoreError

A_ID, B_ID = "a" * 64, "b" * 64


def test_blobs_are_named_by_content(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    digest = store.put_bytes(b"model bytes")
    assert digest == hashlib.sha256(b"model bytes").hexdigest()
    assert store.read_blob(digest) == b"model bytes"
    source = tmp_path / "f.bin"
    source.write_bytes(b"model bytes")
    assert store.put_file(source) == digest
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_corrupted_blob_is_detected(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    digest = store.put_bytes(b"weights")
    store.blob_path(digest).write_bytes(b"weighs")
    with pytest.raises(StoreError, match="corrupt"):
        store.read_blob(digest)


def test_names_are_digests_only(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    for bad in ["../../etc/passwd", "A" * 64, "a" * 63, ""]:
        with pytest.raises(StoreError):
            store.blob_path(bad)
    with pytest.raises(StoreError):
        store.add_artifact(A_ID, {"../x": b"1", "manifest.json": b"{}"}, "manifest.json")


def test_artifact_round_trip_and_build_cache(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    record = store.add_artifact(A_ID, {"model.onnx": b"m", "manifest.json": b'{"k": 1}'}, "manifest.json")
    assert store.get_artifact(A_ID) == record
    assert store.read_manifest(A_ID) == {"k": 1}
    store.record_build("c" * 64, A_ID)
    assert store.lookup_build("c" * 64) == record
    assert store.lookup_build("d" * 64) is None


def test_a_record_whose_blob_vanished_is_an_error_not_a_hit(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    record = store.add_artifact(A_ID, {"model.onnx": b"m", "manifest.json": b"{}"}, "manifest.json")
    store.blob_path(record.files["model.onnx"]).unlink()
    with pytest.raises(StoreError, match="missing blobs"):
        store.get_artifact(A_ID)


def test_gc_keeps_what_is_referenced_and_shared_blobs(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    store.add_artifact(A_ID, {"model.onnx": b"shared", "manifest.json": b'{"a": 1}'}, "manifest.json")
    b = store.add_artifact(B_ID, {"model.onnx": b"shared", "extra.bin": b"only-b", "manifest.json": b"{}"},
                           "manifest.json")  # fmt: skip
    store.record_build("c" * 64, B_ID)
    report = store.gc(keep={A_ID})
    assert (report.artifacts_removed, report.blobs_removed) == (1, 2)
    assert report.bytes_freed == len(b"only-b") + len(b"{}")
    assert store.artifact_ids() == [A_ID]
    assert store.read_blob(b.files["model.onnx"]) == b"shared"
    assert store.lookup_build("c" * 64) is None


WRITER = """
import sys
from reconciler.artifact.store import ArtifactStore
store = ArtifactStore(sys.argv[1])
payload = bytes(range(256)) * (4 << 12)  # 4 MiB per file: big enough to be killed mid-write
store.add_artifact(sys.argv[2], {f"part{i}.bin": payload + bytes([i]) for i in range(6)} | {"manifest.json": b"{}"},
                   "manifest.json")
print("done", flush=True)
"""


def test_kill_at_any_moment_leaves_no_partial_artifact(tmp_path: Path):
    rng = random.Random(1234)
    completed = 0
    for attempt in range(12):
        root = tmp_path / f"store{attempt}"
        artifact_id = f"{attempt:064x}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), artifact_id], stdout=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 0.6))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        store = ArtifactStore(root)
        record = store.get_artifact(artifact_id)
        if record is not None:  # the record exists only when every blob is complete
            completed += 1
            assert set(record.files) == {*(f"part{i}.bin" for i in range(6)), "manifest.json"}
            for digest in record.files.values():
                store.read_blob(digest)  # verifies the digest
        for blob in (root / "blobs" / "sha256").iterdir():  # blobs in place are complete, whatever happened
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert completed < 12, "every writer finished before the kill: the test did not test anything"


def test_export_copies_verified_files_into_a_new_folder(tmp_path: Path):
    store = ArtifactStore(tmp_path / "store")
    store.add_artifact(A_ID, {"model.onnx": b"weights", "manifest.json": b"{}"}, "manifest.json")
    out = store.export(A_ID, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"model.onnx": b"weights", "manifest.json": b"{}"}
    (out / "model.onnx").write_bytes(b"edited")  # a copy: the store keeps its bytes
    assert store.read_blob(store.get_artifact(A_ID).files["model.onnx"]) == b"weights"
    with pytest.raises(FileExistsError):
        store.export(A_ID, tmp_path / "out")
    with pytest.raises(StoreError, match="no artifact"):
        store.export(B_ID, tmp_path / "other")
    store.blob_path(store.get_artifact(A_ID).files["model.onnx"]).write_bytes(b"rot")
    with pytest.raises(StoreError, match="corrupt"):
        store.export(A_ID, tmp_path / "third")


def test_lab_results_live_with_their_artifact_and_go_with_it(tmp_path):
    from reconciler.artifact.store import ArtifactStore

    store = ArtifactStore(tmp_path / "store")
    kept = store.add_artifact("a" * 64, {"model.onnx": b"kept"}, "model.onnx")
    gone = store.add_artifact("b" * 64, {"model.onnx": b"gone"}, "model.onnx")
    result = {"phase": "Benchmarked", "figures": {"labP95Ms": 2.5}}
    assert store.record_lab(kept.id, "lab-1", result) and not store.record_lab(kept.id, "lab-1", result)
    assert store.record_lab(gone.id, "lab-1", {"phase": "Failed", "message": "golden outputs differ"})
    assert store.lab_results(kept.id) == {"lab-1": result}
    store.gc([kept.id])
    assert store.lab_results(gone.id) == {} and store.lab_results(kept.id) == {"lab-1": result}
