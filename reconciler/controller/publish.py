"""From owner-signed releases to TUF targets the agents can fetch: the controller's half of the two-key rule.

Who calls it: the controller, every cycle, before it plans. Model owners (or their CI) drop released artifact
folders (``edgectl build`` + ``edgectl export`` + ``edgectl sign``) anywhere under the releases directory. Each
folder is verified against the fleet's trust policy exactly as an agent will verify it; a folder that does
not verify is reported and never published, so the controller cannot hand out what no owner released. The
newest release counter wins when one (model, version, profile) was released more than once.

Publishing is idempotent: a new targets version is signed only when the set of files changed, and the
timestamp is re-signed once half its lifetime has passed (agents refuse a frozen repository). Verification
results are remembered per folder and signature file, so a cycle with nothing new costs a directory scan.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from reconciler.artifact.manifest import artifact_id
from reconciler.signing import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Expectation,
    RefusedError,
    TrustPolicy,
    VerifiedArtifact,
    verify_artifact,
)
from reconciler.signing.tuf_repo import OnlineSigners, TufRepository, target_path

log = logging.getLogger("edge_reconciler.controller")

ArtifactKey = tuple[str, str, str]
"""(model, version, profile)"""


@dataclass
class PublishOutcome:
    artifacts: dict[ArtifactKey, str] = field(default_factory=dict)
    """What agents can fetch now: (model, version, profile) -> artifact id (as the build store names it)."""
    signers: dict[ArtifactKey, str] = field(default_factory=dict)
    """(model, version, profile) -> the release signer of what is published (an owner, or the builder)."""
    refused: dict[str, str] = field(default_factory=dict)
    """Release folder -> why it was not published."""
    targets_version: int | None = None
    """The targets version this cycle signed; None when nothing changed."""


class Publisher:
    def __init__(self, releases: Path, repository: TufRepository, signers: OnlineSigners) -> None:
        self.releases = Path(releases)
        self.repository = repository
        self.signers = signers
        self._verified: dict[Path, tuple[float, VerifiedArtifact | str]] = {}
        self._bundles: dict[Path, tuple[float, str]] = {}
        """Signature bundle -> (mtime, sha256): the one file of a release that its own digests do not cover."""
        self._ids: dict[Path, str] = {}
        self._published: dict[str, str] | None = None
        """What the repository lists now (path -> sha256), as this publisher last wrote or read it."""

    def sync(self, policy: TrustPolicy, now: datetime) -> PublishOutcome:
        outcome = PublishOutcome()
        chosen: dict[ArtifactKey, VerifiedArtifact] = {}
        for signature in sorted(self.releases.glob(f"**/{SIGNATURE_NAME}")):
            if any(part.startswith(".") for part in signature.relative_to(self.releases).parts):
                continue  # a release being written (the builder signs in a hidden folder, then renames it)
            result = self._verify(signature.parent, policy)
            if isinstance(result, str):
                outcome.refused[str(signature.parent)] = result
                continue
            key = (result.model, result.version, result.profile)
            if key not in chosen or result.release.counter > chosen[key].release.counter:
                chosen[key] = result
        files = {}
        for (model, version, profile), artifact in sorted(chosen.items()):
            for name in [*sorted(artifact.digests), SIGNATURE_NAME]:
                files[target_path(model, version, profile, name)] = artifact.directory / name
            outcome.artifacts[(model, version, profile)] = self._ids[artifact.directory]
            outcome.signers[(model, version, profile)] = artifact.signer
        wanted = {path: self._digest(chosen, path) for path in files}
        expires = self.repository.timestamp_expires()
        if self._published is None:
            self._published = self.repository.published()
        if expires is None or wanted != self._published:  # a new repository publishes at once
            outcome.targets_version = self.repository.publish(files, self.signers, now)
            self._published = wanted
            log.info("published", extra={"targetsVersion": outcome.targets_version, "artifacts": len(chosen)})
        elif expires - now < self.repository.lifetimes.timestamp / 2:
            self.repository.refresh_timestamp(self.signers, now)
        return outcome

    def _digest(self, chosen: dict[ArtifactKey, VerifiedArtifact], path: str) -> str:
        """The sha256 a target should have: the signed digest of an artifact file, or the bundle's own hash."""
        model, version, profile, name = path.split("/")
        artifact = chosen[(model, version, profile)]
        if name in artifact.digests:
            return artifact.digests[name]
        bundle = artifact.directory / name
        stamp = bundle.stat().st_mtime
        cached = self._bundles.get(bundle)
        if cached is None or cached[0] != stamp:
            cached = self._bundles[bundle] = (stamp, hashlib.sha256(bundle.read_bytes()).hexdigest())
        return cached[1]

    def _verify(self, folder: Path, policy: TrustPolicy) -> VerifiedArtifact | str:
        try:
            stamp = (folder / SIGNATURE_NAME).stat().st_mtime
        except OSError as exc:
            return str(exc)
        cached = self._verified.get(folder)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            model = json.loads((folder / MANIFEST_NAME).read_bytes()).get("model", "")
            result: VerifiedArtifact | str = verify_artifact(folder, policy, Expectation(str(model)))
        except (OSError, ValueError, AttributeError) as exc:
            result = f"unreadable release: {exc}"
        except RefusedError as exc:
            result = str(exc)
        if isinstance(result, str):
            log.warning("release refused", extra={"release": str(folder), "reason": result})
        else:
            self._ids[folder] = artifact_id(result.manifest)  # canonical JSON of the manifest: once, not per cycle
        self._verified[folder] = (stamp, result)
        return result
