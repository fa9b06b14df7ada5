"""The agent's side of TUF: fetch an artifact's files only through fresh, consistent, correctly signed metadata.

Who calls it: the edge agent, before :func:`reconciler.signing.verify.verify_artifact`. ``tuf.ngclient``
does the metadata work (root chain, thresholds, versions, expiry, lengths and hashes); this module picks
the limits, checks target paths before anything is written, and turns ngclient's exceptions into a
:class:`Refusal` a device reports (or a :class:`FetchError` to retry).

The device keeps its trusted metadata in ``metadata_dir``; the first run starts from the pinned root
(the fleet's ``spec.trust.trustRoot``), every later run from what it trusted last, so a repository that
serves older metadata than the device has seen is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from .errors import FetchError, Refusal, RefusedError
from .tuf_repo import check_target_path
from .verify import MANIFEST_NAME, MAX_MANIFEST_BYTES


@dataclass(frozen=True)
class MetadataLimits:
    """Largest metadata a device downloads: an attacker must not be able to fill its disk or memory."""

    root: int = 512 * 1024
    timestamp: int = 16 * 1024
    snapshot: int = 1024 * 1024
    targets: int = 8 * 1024 * 1024
    max_root_rotations: int = 32


@dataclass(frozen=True)
class TargetDownload:
    """One file of an artifact as TUF vouches for it: download ``url``, then check length and sha256."""

    name: str
    url: str
    length: int
    sha256: str
    info: TargetFile


class ArtifactUpdater:
    def __init__(
        self,
        metadata_dir: Path,
        repository_url: str,
        trusted_root: bytes | None = None,
        limits: MetadataLimits | None = None,
        fetcher: FetcherInterface | None = None,
    ) -> None:
        """``repository_url`` serves ``metadata/`` and ``targets/``. ``trusted_root`` is needed once, on
        the first run; later runs continue from the root the device trusted last."""
        limits = limits or MetadataLimits()
        self.metadata_dir = Path(metadata_dir)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        base = repository_url.rstrip("/")
        config = UpdaterConfig(
            max_root_rotations=limits.max_root_rotations,
            root_max_length=limits.root,
            timestamp_max_length=limits.timestamp,
            snapshot_max_length=limits.snapshot,
            targets_max_length=limits.targets,
        )
        if trusted_root is None and not (self.metadata_dir / "root.json").exists():
            raise RefusedError(Refusal.UNSIGNED, f"no pinned TUF root: {self.metadata_dir} is empty and none was given")
        self._base, self._config, self._fetcher = base, config, fetcher
        self._bootstrap = trusted_root
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Update root, timestamp, snapshot and targets; refuse anything stale, replayed or mixed.

        Each refresh starts a new ngclient ``Updater`` (it allows one refresh per instance) from the metadata
        the device trusts on disk; the pinned root is used only until the device has a root of its own."""
        local_root = self.metadata_dir / "root.json"
        bootstrap = None if local_root.exists() else self._bootstrap
        with _translated():
            updater = Updater(
                str(self.metadata_dir), f"{self._base}/metadata/", None, f"{self._base}/targets/", self._fetcher,
                self._config, bootstrap=bootstrap,
            )  # fmt: skip
            updater.refresh()
        self._updater = updater

    def fetch_artifact(self, model: str, version: str, profile: str, into: Path) -> Path:
        """Download an artifact's files into ``into`` (created empty) through ngclient, each checked against
        the signed length and sha256. Agents use :meth:`artifact_targets` with a resumable downloader."""
        into = Path(into)
        into.mkdir(parents=True, exist_ok=False)
        for target in self.artifact_targets(model, version, profile, into):
            if target.name != MANIFEST_NAME:  # artifact_targets put it there already
                with _translated():
                    self._updater.download_target(target.info, str(into / target.name))
        return into

    def artifact_targets(
        self, model: str, version: str, profile: str, scratch: Path,
        local: Callable[[str, int, str, Path], object] | None = None,
    ) -> list[TargetDownload]:  # fmt: skip
        """Every file of an artifact with its URL, signed length and sha256, for a resumable downloader.
        The manifest (small) is fetched through ngclient into ``scratch`` to learn the file names; every
        name is checked before anything else is fetched. ``local(name, length, sha256, destination)`` may put a
        copy already on the device there instead (truthy when it did; it must check length and sha256)."""
        if self._updater is None:
            self.refresh()
        prefix = f"{model}/{version}/{profile}"
        Path(scratch).mkdir(parents=True, exist_ok=True)
        manifest_info = self._targetinfo(f"{prefix}/{MANIFEST_NAME}")
        manifest_path = Path(scratch) / MANIFEST_NAME
        sha256 = manifest_info.hashes.get("sha256", "")
        if local is None or not local(MANIFEST_NAME, manifest_info.length, sha256, manifest_path):
            with _translated():
                self._updater.download_target(manifest_info, str(manifest_path))
        try:
            manifest = json.loads(manifest_path.read_bytes()[:MAX_MANIFEST_BYTES])
            names = sorted({MANIFEST_NAME, *manifest["files"], "release.json", "release.sig"})
        except (ValueError, KeyError, TypeError) as exc:
            raise RefusedError(Refusal.MALFORMED, f"{MANIFEST_NAME} of {model}@{version} does not list files") from exc
        infos = {name: self._targetinfo(f"{prefix}/{name}") for name in names}
        return [
            TargetDownload(name, f"{self._base}/targets/{prefix}/{info.hashes['sha256']}.{name}", info.length,
                           info.hashes["sha256"], info)
            for name, info in infos.items()
        ]  # fmt: skip

    def _targetinfo(self, path: str) -> TargetFile:
        """The signed description of one target; refuses odd paths and targets the repository does not list."""
        try:
            check_target_path(path)
        except ValueError as exc:
            raise RefusedError(Refusal.PATH_TRAVERSAL, str(exc)) from None
        assert self._updater is not None
        with _translated():
            info = self._updater.get_targetinfo(path)
        if info is None:
            raise RefusedError(Refusal.UNKNOWN_TARGET, f"the repository's signed targets do not list {path}")
        return info


@contextmanager
def _translated() -> Iterator[None]:
    """ngclient's exceptions become a Refusal (bad data) or a FetchError (transport); others pass."""
    try:
        yield
    except (RefusedError, FetchError):
        raise
    except Exception as exc:
        mapped = refusal_for(exc)
        if mapped is None:
            raise
        raise mapped from exc


def refusal_for(exc: BaseException) -> RefusedError | FetchError | None:
    """Classify one ngclient exception (None: not one of TUF's)."""
    text = str(exc)
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        if text.startswith("timestamp"):
            return RefusedError(Refusal.FROZEN, f"the repository's timestamp expired ({text}): freeze or outage")
        return RefusedError(Refusal.EXPIRED, text)
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        # "must be >=" and a snapshot listing an older role version are replays of old metadata; "Expected
        # X vN, got vM" for the file just fetched means it belongs to another snapshot.
        if "must be >=" in text or ".json version" in text or isinstance(exc, tuf_errors.EqualVersionNumberError):
            return RefusedError(Refusal.ROLLBACK, text or "metadata version did not increase")
        return RefusedError(Refusal.MIX_AND_MATCH, text)
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return RefusedError(Refusal.THRESHOLD, text)
    if isinstance(exc, (tuf_errors.LengthOrHashMismatchError, tuf_errors.DownloadLengthMismatchError)):
        reason = Refusal.OVERSIZED if isinstance(exc, tuf_errors.DownloadLengthMismatchError) else Refusal.TAMPERED
        return RefusedError(reason, text)
    if isinstance(exc, tuf_errors.RepositoryError):
        return RefusedError(Refusal.MALFORMED, text)
    if isinstance(exc, tuf_errors.DownloadError):
        return FetchError(f"download failed: {text or type(exc).__name__}")
    return None


class PoolFetcher(FetcherInterface):
    """TUF downloads through a given urllib3 pool: the device API needs the device's client certificate on
    every request, and one pool keeps one TLS session for metadata, targets and status alike."""

    def __init__(self, pool, socket_timeout: float = 30.0, chunk_size: int = 1 << 16) -> None:
        self.pool, self.socket_timeout, self.chunk_size = pool, socket_timeout, chunk_size

    def _fetch(self, url: str) -> Iterator[bytes]:
        import urllib3

        try:
            response = self.pool.request("GET", url, preload_content=False, retries=False,
                                         timeout=urllib3.Timeout(self.socket_timeout))  # fmt: skip
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_errors.SlowRetrievalError from exc
        if response.status >= 400:
            response.drain_conn()  # the error's body, read: the connection goes back to the pool clean, not mid-body
            response.release_conn()
            raise tuf_errors.DownloadHTTPError(f"HTTP error occurred with status {response.status}", response.status)
        return self._chunks(response)

    def _chunks(self, response) -> Iterator[bytes]:
        import urllib3

        try:
            yield from response.stream(self.chunk_size)
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_errors.SlowRetrievalError from exc
        finally:
            response.release_conn()
