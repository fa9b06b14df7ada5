"""Content-addressed artifact store on the local filesystem.

Who calls it: the build pipeline (writes), the artifact server and ``edgectl`` (reads), garbage collection.
Layout under the root::

    blobs/sha256/<hex>          file contents, named by their sha256
    artifacts/<id>.json         an artifact: its id, manifest blob and named file blobs
    builds/<key>.json           build cache: inputs digest -> artifact id
    deltas/<base>-<target>.zst  binary delta from one blob to another, made on first request
    lab/<id>.json               what lab devices measured of an artifact, by device (the controller records it)
    tmp/                        writes in progress (never read)

Every write goes to ``tmp/`` first, is fsynced, then renamed into place, and an artifact's record is
written only after all its blobs exist: a crash at any moment leaves either no entry or a complete one.
Names are validated hex digests, so no caller-supplied string ever becomes a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.durable import move_into_place, sync_file, write_atomic

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class StoreError(Exception):
    """The store is missing something it should have, or holds something corrupt."""


@dataclass(frozen=True)
class ArtifactRecord:
    """An artifact in the store: ``files`` maps file names (``model.onnx``, ``manifest.json``) to blob digests."""

    id: str
    manifest: str
    files: Mapping[str, str]

    def to_json(self) -> dict:
        return {"id": self.id, "manifest": self.manifest, "files": dict(sorted(self.files.items()))}


@dataclass(frozen=True)
class GcReport:
    artifacts_removed: int
    blobs_removed: int
    bytes_freed: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(value: str) -> str:
    if not _HEX64.match(value):
        raise StoreError(f"not a sha256 hex digest: {value!r}")
    return value


class ArtifactStore:
    """A filesystem CAS. Safe for concurrent writers: identical content lands on identical names."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for folder in ("blobs/sha256", "artifacts", "builds", "deltas", "lab", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    # --- blobs ---------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / check_digest(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            self._write_atomic(self.blob_path(digest), data)
        return digest

    def put_file(self, path: Path) -> str:
        """Copy a file in (streamed, hashed while copying)."""
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                sync_file(out)
            target = self.blob_path(digest.hexdigest())
            if not target.exists():
                move_into_place(Path(tmp), target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return digest.hexdigest()

    def read_blob(self, digest: str, verify: bool = True) -> bytes:
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"blob {digest} is missing") from exc
        if verify and hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"blob {digest} is corrupt (its content has another digest)")
        return data

    # --- artifacts -----------------------------------------------------------------------------------

    def add_artifact(self, artifact_id: str, files: Mapping[str, bytes | Path], manifest_name: str) -> ArtifactRecord:
        """Store an artifact's files, then its record: readers see all of it or nothing."""
        check_digest(artifact_id)
        if manifest_name not in files:
            raise StoreError(f"artifact files lack the manifest {manifest_name!r}")
        digests = {}
        for name, content in files.items():
            if "/" in name or name in ("", ".", ".."):
                raise StoreError(f"artifact file names are plain names, not {name!r}")
            digests[name] = self.put_bytes(content) if isinstance(content, bytes) else self.put_file(content)
        record = ArtifactRecord(artifact_id, digests[manifest_name], digests)
        self._write_atomic(self._record_path(artifact_id), _json_bytes(record.to_json()))
        return record

    def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        try:
            data = json.loads(self._record_path(artifact_id).read_bytes())
        except FileNotFoundError:
            return None
        record = ArtifactRecord(data["id"], data["manifest"], data["files"])
        missing = [d for d in record.files.values() if not self.has_blob(d)]
        if missing:
            raise StoreError(f"artifact {artifact_id} references missing blobs {missing}")
        return record

    def stored_at(self, artifact_id: str) -> float:
        """When the artifact's record was written (seconds since the epoch): the newest build of a key wins."""
        return self._record_path(artifact_id).stat().st_mtime

    def artifact_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "artifacts").glob("*.json"))

    def resolve(self, given: str) -> str:
        """The artifact id ``given`` stands for: itself, or the one artifact it is a prefix of (``edgectl get
        artifacts`` shows 12 characters; at least 6 are needed, and a prefix two artifacts share is refused)."""
        given = given.removeprefix("sha256:").lower()
        if _HEX64.match(given):
            return given
        if len(given) < 6 or any(c not in "0123456789abcdef" for c in given):
            raise StoreError(f"{given!r} is no artifact id: give the 64 hex digits or a prefix of 6 or more")
        matches = [a for a in self.artifact_ids() if a.startswith(given)]
        if len(matches) != 1:
            raise StoreError(f"no artifact {given}… in {self.root}" if not matches else
                             f"{given}… names {len(matches)} artifacts: give more digits")  # fmt: skip
        return matches[0]

    def read_manifest(self, artifact_id: str) -> dict:
        record = self.get_artifact(artifact_id)
        if record is None:
            raise StoreError(f"no artifact {artifact_id}")
        return json.loads(self.read_blob(record.manifest))

    def export(self, artifact_id: str, directory: Path) -> Path:
        """Copy an artifact's files, each checked against its digest, into a new ``directory`` (for signing
        and serving). Copies, not links: whatever happens to the folder never reaches the store."""
        record = self.get_artifact(artifact_id)
        if record is None:
            raise StoreError(f"no artifact {artifact_id}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=False)
        for name, digest in sorted(record.files.items()):
            (directory / name).write_bytes(self.read_blob(digest))
        return directory

    def delta(self, base: str, target: str) -> Path:
        """A delta that rebuilds blob ``target`` from blob ``base`` (made once, then served from disk)."""
        from .delta import make_delta

        path = self.root / "deltas" / f"{check_digest(base)}-{check_digest(target)}.zst"
        if not path.exists():
            self._write_atomic(path, make_delta(self.read_blob(base), self.read_blob(target)))
        return path

    # --- build cache ---------------------------------------------------------------------------------

    def lookup_build(self, key: str) -> ArtifactRecord | None:
        """The artifact built from inputs with digest ``key``, if it is still complete in the store."""
        try:
            artifact_id = json.loads(self._build_path(key).read_bytes())["artifact"]
        except FileNotFoundError:
            return None
        return self.get_artifact(artifact_id)

    def record_build(self, key: str, artifact_id: str) -> None:
        self._write_atomic(self._build_path(key), _json_bytes({"key": key, "artifact": check_digest(artifact_id)}))

    # --- lab results ----------------------------------------------------------------------------------

    def record_lab(self, artifact_id: str, device: str, result: Mapping) -> bool:
        """Keep what lab device ``device`` reported of an artifact (its benchmark, or why it failed), next to the
        artifact, so its figures outlive the assignment; True when that changed the record."""
        results = self.lab_results(artifact_id)
        if results.get(device) == result:
            return False
        results[device] = dict(result)
        self._write_atomic(self._lab_path(artifact_id), _json_bytes(results))
        return True

    def lab_results(self, artifact_id: str) -> dict[str, dict]:
        """device -> what it reported of the artifact; empty when no lab device measured it."""
        try:
            body = json.loads(self._lab_path(artifact_id).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): v for k, v in body.items() if isinstance(v, dict)} if isinstance(body, dict) else {}

    # --- captured inputs -----------------------------------------------------------------------------

    def record_capture(self, model: str, version: str, device: str, data: bytes) -> Path:
        """Keep a device's batch of sampled inputs (an ``.npz`` with ``x`` and ``y``) in the model version's dataset
        folder, ``captures/MODEL/VERSION/``, named by device and content (a batch sent twice is kept once)."""
        digest = hashlib.sha256(data).hexdigest()[:16]
        path = self.captures(model, version) / f"{device}-{digest}.npz"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomic(path, data)
        return path

    def captures(self, model: str, version: str) -> Path:
        """The dataset folder of a model version's captured inputs (builds read a folder of ``.npz`` files)."""
        return self.root / "captures" / model / version

    # --- garbage collection --------------------------------------------------------------------------

    def gc(self, keep: Iterable[str], tmp_grace_seconds: float = 3600.0) -> GcReport:
        """Remove artifacts not in ``keep`` (what devices run or should run), then unreferenced blobs."""
        keep = set(keep)
        removed = 0
        for artifact_id in self.artifact_ids():
            if artifact_id not in keep:
                self._record_path(artifact_id).unlink(missing_ok=True)
                self._lab_path(artifact_id).unlink(missing_ok=True)
                removed += 1
        live_ids = set(self.artifact_ids())
        live_blobs: set[str] = set()
        for artifact_id in live_ids:
            data = json.loads(self._record_path(artifact_id).read_bytes())
            live_blobs.update(data["files"].values())
        for entry in (self.root / "builds").glob("*.json"):
            if json.loads(entry.read_bytes())["artifact"] not in live_ids:
                entry.unlink(missing_ok=True)
        blobs = freed = 0
        for blob in (self.root / "blobs" / "sha256").iterdir():
            if blob.name not in live_blobs:
                freed += blob.stat().st_size
                blob.unlink(missing_ok=True)
                blobs += 1
        for delta in (self.root / "deltas").glob("*.zst"):
            base, _, target = delta.stem.partition("-")
            if base not in live_blobs or target not in live_blobs:
                delta.unlink(missing_ok=True)
        cutoff = time.time() - tmp_grace_seconds
        for leftover in (self.root / "tmp").iterdir():  # writes that a crash interrupted
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink(missing_ok=True)
        return GcReport(removed, blobs, freed)

    # --- internals -----------------------------------------------------------------------------------

    def _record_path(self, artifact_id: str) -> Path:
        return self.root / "artifacts" / f"{check_digest(artifact_id)}.json"

    def _build_path(self, key: str) -> Path:
        return self.root / "builds" / f"{check_digest(key)}.json"

    def _lab_path(self, artifact_id: str) -> Path:
        return self.root / "lab" / f"{check_digest(artifact_id)}.json"

    def _write_atomic(self, target: Path, data: bytes) -> None:
        write_atomic(target, data, temp_dir=self.root / "tmp")


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
