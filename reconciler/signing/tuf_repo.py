"""The controller's TUF repository: signed, versioned, expiring metadata for every artifact file it serves.

Who calls it: the controller after it verified artifacts (publish), on a timer (timestamp refresh), and an
operator rotating keys (root rotation). Agents read it through ``tuf.ngclient`` (``tuf_client``), which
refuses a replayed old targets list (rollback), a timestamp that stopped being renewed (freeze) and metadata
of different snapshots (mix-and-match). The controller's online keys sign targets, snapshot and timestamp;
root keys stay offline and are only needed to create or rotate the root.

Layout under the repository directory (served as-is by the artifact server)::

    metadata/N.root.json, root.json     every root version (clients walk the chain), and the newest
    metadata/N.targets.json             consistent snapshots: each version under its own name
    metadata/N.snapshot.json
    metadata/timestamp.json
    targets/MODEL/VERSION/PROFILE/SHA256.NAME

Target paths are ``MODEL/VERSION/PROFILE/NAME`` with plain names only. Files are hard-linked from the
artifact store when they share a filesystem. Every metadata write is atomic (temp file, then rename), and
the timestamp is written last, so a client never sees a half-published version.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from reconciler.durable import move_into_place, sync_file, write_atomic

from .keys import generate_key, load_public_key, tuf_key, tuf_signer

TOP_LEVEL_ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True)
class Lifetimes:
    """How long each role's metadata stays valid. The timestamp is short: it is the freshness heartbeat."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=7)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class OnlineSigners:
    """The controller's keys: ``targets`` may hold several (a k-of-n threshold), the others one each."""

    targets: Sequence[Signer]
    snapshot: Signer
    timestamp: Signer


@dataclass(frozen=True)
class RoleKeys:
    """Public keys and thresholds for a root: who may sign each top-level role."""

    keys: Mapping[str, Sequence[Key]]
    thresholds: Mapping[str, int] = field(default_factory=dict)


def check_target_path(path: str) -> str:
    """``MODEL/VERSION/PROFILE/NAME``: four plain segments, so no path ever leaves the targets folder."""
    segments = path.split("/")
    if len(segments) != 4 or not all(_SEGMENT.match(s) and s not in (".", "..") for s in segments):
        raise ValueError(f"target path {path!r} is not MODEL/VERSION/PROFILE/NAME with plain names")
    return path


def target_path(model: str, version: str, profile: str, name: str) -> str:
    return check_target_path(f"{model}/{version}/{profile}/{name}")


class TufRepository:
    """Reads the newest metadata from ``directory`` and writes new versions next to it."""

    def __init__(self, directory: Path, lifetimes: Lifetimes | None = None) -> None:
        self.directory = Path(directory)
        self.metadata_dir = self.directory / "metadata"
        self.targets_dir = self.directory / "targets"
        self.lifetimes = lifetimes or Lifetimes()

    # --- root --------------------------------------------------------------------------------------

    def initialize(self, roles: RoleKeys, root_signers: Sequence[Signer], now: datetime) -> Metadata[Root]:
        """Create root version 1. Refuses to overwrite an existing repository."""
        if (self.metadata_dir / "1.root.json").exists():
            raise FileExistsError(f"{self.metadata_dir} already holds a TUF repository")
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        root = Metadata(Root(version=1, expires=now + self.lifetimes.root, consistent_snapshot=True))
        _assign_roles(root.signed, roles)
        return self._write_root(root, root_signers)

    def rotate_root(self, roles: RoleKeys, signers: Sequence[Signer], now: datetime) -> Metadata[Root]:
        """A new root version with new keys. ``signers`` must meet the old root's threshold *and* the new
        one's: clients accept the new root only if both sign it."""
        current = self.root()
        new = Metadata(
            Root(version=current.signed.version + 1, expires=now + self.lifetimes.root, consistent_snapshot=True)
        )
        _assign_roles(new.signed, roles)
        return self._write_root(new, signers)

    def root(self) -> Metadata[Root]:
        return Metadata[Root].from_file(str(self.metadata_dir / "root.json"))

    def _write_root(self, root: Metadata[Root], signers: Sequence[Signer]) -> Metadata[Root]:
        for signer in signers:
            root.sign(signer, append=True)
        self._write(f"{root.signed.version}.root.json", root)
        self._write("root.json", root)
        return root

    # --- targets, snapshot, timestamp -------------------------------------------------------------

    def publish(self, files: Mapping[str, Path], signers: OnlineSigners, now: datetime) -> int:
        """Publish exactly ``files`` (target path -> local file) as a new targets version; returns it."""
        targets = {}
        for path, local in sorted(files.items()):
            info = TargetFile.from_file(check_target_path(path), str(local), ["sha256"])
            self._store_target(info, Path(local))
            targets[path] = info
        version = self._current_version(Targets.type) + 1
        md = Metadata(Targets(version=version, expires=now + self.lifetimes.targets, targets=targets))
        for signer in signers.targets:
            md.sign(signer, append=True)
        self._write(f"{version}.targets.json", md)
        self._snapshot(version, signers, now)
        return version

    def published(self) -> dict[str, str]:
        """The current targets: path -> sha256 (empty before the first publish)."""
        if not (self.metadata_dir / "timestamp.json").exists():
            return {}
        version = self._current_version(Targets.type)
        targets = Metadata[Targets].from_file(str(self.metadata_dir / f"{version}.targets.json")).signed.targets
        return {path: info.hashes["sha256"] for path, info in targets.items()}

    def timestamp_expires(self) -> datetime | None:
        path = self.metadata_dir / "timestamp.json"
        return Metadata[Timestamp].from_file(str(path)).signed.expires if path.exists() else None

    def refresh_timestamp(self, signers: OnlineSigners, now: datetime) -> int:
        """Re-sign the timestamp for the current snapshot: clients that stop seeing this call it a freeze."""
        snapshot = self._load(Timestamp.type).signed.snapshot_meta.version
        return self._timestamp(snapshot, signers, now)

    def _snapshot(self, targets_version: int, signers: OnlineSigners, now: datetime) -> None:
        version = self._current_version(Snapshot.type) + 1
        md = Metadata(
            Snapshot(
                version=version,
                expires=now + self.lifetimes.snapshot,
                meta={"targets.json": MetaFile(version=targets_version)},
            )
        )
        md.sign(signers.snapshot)
        self._write(f"{version}.snapshot.json", md)
        self._timestamp(version, signers, now)

    def _timestamp(self, snapshot_version: int, signers: OnlineSigners, now: datetime) -> int:
        current = self._current_version(Timestamp.type)
        md = Metadata(
            Timestamp(
                version=current + 1,
                expires=now + self.lifetimes.timestamp,
                snapshot_meta=MetaFile(version=snapshot_version),
            )
        )
        md.sign(signers.timestamp)
        self._write("timestamp.json", md)
        return current + 1

    def _current_version(self, role: str) -> int:
        if role == Timestamp.type:
            path = self.metadata_dir / "timestamp.json"
            return Metadata.from_file(str(path)).signed.version if path.exists() else 0
        if not (self.metadata_dir / "timestamp.json").exists():
            return 0
        snapshot_version = self._load(Timestamp.type).signed.snapshot_meta.version
        if role == Snapshot.type:
            return snapshot_version
        snapshot = Metadata[Snapshot].from_file(str(self.metadata_dir / f"{snapshot_version}.snapshot.json"))
        return snapshot.signed.meta["targets.json"].version

    def _load(self, role: str) -> Metadata:
        return Metadata.from_file(str(self.metadata_dir / f"{role}.json"))

    # --- files -------------------------------------------------------------------------------------

    def _store_target(self, info: TargetFile, local: Path) -> None:
        directory, _, name = info.path.rpartition("/")
        target = self.targets_dir / directory / f"{info.hashes['sha256']}.{name}"
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            try:
                os.link(local, tmp)  # a second name for the same bytes: no copy (model files are large)
            except OSError:  # another file system, or no hard links: copy
                shutil.copyfile(local, tmp)
            with tmp.open("rb") as written:  # the bytes may not be on disk yet, however they got there
                sync_file(written)
            move_into_place(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write(self, name: str, md: Metadata) -> None:
        write_atomic(self.metadata_dir / name, md.to_bytes(JSONSerializer(compact=False)))


ONLINE_ROLES = (Targets.type, Snapshot.type, Timestamp.type)


def online_signers(keys_dir: Path, password: bytes | None = None) -> OnlineSigners:
    """The controller's online keys from ``KEYS_DIR/{targets,snapshot,timestamp}.key``."""
    keys_dir = Path(keys_dir)
    return OnlineSigners(
        [tuf_signer(keys_dir / "targets.key", password)],
        tuf_signer(keys_dir / "snapshot.key", password),
        tuf_signer(keys_dir / "timestamp.key", password),
    )


def create_repository(directory: Path, keys_dir: Path, now: datetime) -> TufRepository:
    """A new repository with one key per role from ``keys_dir`` (each generated when missing), and an empty
    first publish so that clients can start at once. ``root.key`` belongs offline afterwards."""
    keys_dir = Path(keys_dir)
    public = {}
    for role in TOP_LEVEL_ROLES:
        if not (keys_dir / f"{role}.key").exists():
            generate_key(keys_dir / role)
        public[role] = [tuf_key(load_public_key(keys_dir / f"{role}.pub"))]
    repo = TufRepository(directory)
    repo.initialize(RoleKeys(public), [tuf_signer(keys_dir / "root.key")], now)
    repo.publish({}, online_signers(keys_dir), now)
    return repo


def _assign_roles(root: Root, roles: RoleKeys) -> None:
    for role in TOP_LEVEL_ROLES:
        keys = roles.keys.get(role, ())
        if not keys:
            raise ValueError(f"role {role} needs at least one key")
        threshold = roles.thresholds.get(role, 1)
        if not 1 <= threshold <= len(keys):
            raise ValueError(f"role {role}: threshold {threshold} with {len(keys)} key(s)")
        root.roles[role] = Role([], threshold)
        for key in keys:
            root.add_key(key, role)


def utcnow() -> datetime:
    """The one clock read of a publish cycle; callers pass it down so tests control time."""
    return datetime.now(UTC).replace(microsecond=0)
