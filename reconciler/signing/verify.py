"""The one verification of an artifact directory, shared by the controller (before it serves an artifact)
and the agent (before it loads one).

The order of the checks is the security argument; nothing is parsed before it is authenticated:

1. **Layout.** Only plain regular files with plain names; ``release.sig``, ``release.json`` and
   ``manifest.json`` present. Symlinks, folders and unexpected names are refused outright.
2. **Signature.** The bundle must verify against a release signer that the policy trusts *for this model*
   (a key, or a keyless identity checked offline against the pinned trusted root). A bundle by any other key
   (the controller's online key included) is refused: the controller alone cannot release a model.
3. **Files.** Every file is re-hashed and compared with the signed digests; an added, removed or changed
   file is refused.
4. **Statements.** Only now are ``release.json`` and ``manifest.json`` parsed, from bytes whose digest is
   checked once more against the signed one (the directory may change under us). Manifest, release and
   request must agree on model and version; the manifest's profile must be one the release names, and the
   device's own profile; the release counter must not be below the minimum the device has seen.

Freshness (is this still what the controller wants, is the metadata current) is TUF's job, in
``reconciler.signing.tuf_client``, and happens before this on the agent.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .bundle import SIGNATURE_NAME, verify_keyless, verify_with_key
from .errors import Refusal, RefusedError
from .policy import ReleaseSigner, TrustPolicy
from .release import RELEASE_NAME, Release, parse_release

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Expectation:
    """What the verifier asks for. The controller leaves ``profile`` empty (it serves every profile)."""

    model: str
    version: str | None = None
    profile: str | None = None
    minimum_counter: int = 0


@dataclass(frozen=True)
class VerifiedArtifact:
    directory: Path
    model: str
    version: str
    profile: str
    signer: str
    release: Release
    digests: dict[str, str]
    manifest: dict


def verify_artifact(directory: Path, policy: TrustPolicy, expect: Expectation) -> VerifiedArtifact:
    """Verify ``directory`` or raise :class:`RefusedError` naming the check that failed."""
    directory = Path(directory)
    _check_layout(directory)
    signer, digests = _check_signature(directory, policy, expect.model)
    release = parse_release(_read_signed(directory, RELEASE_NAME, digests))
    manifest = _parse_manifest(_read_signed(directory, MANIFEST_NAME, digests))
    _check_statements(manifest, release, expect, digests)
    if signer.max_counter is not None and release.counter > signer.max_counter:
        raise RefusedError(Refusal.UNTRUSTED_SIGNER,
                           f"{signer.describe()} may release up to counter {signer.max_counter}, this release has "
                           f"counter {release.counter}: a higher counter needs an owner's key")  # fmt: skip
    return VerifiedArtifact(
        directory, release.model, release.version, manifest["profile"], signer.name, release, digests, manifest
    )


def _check_layout(directory: Path) -> None:
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        raise RefusedError(Refusal.UNSIGNED, f"{directory} is not an artifact directory") from None
    for entry in entries:
        mode = entry.lstat().st_mode
        if not stat.S_ISREG(mode):
            what = "symlink" if stat.S_ISLNK(mode) else "folder" if stat.S_ISDIR(mode) else "special file"
            raise RefusedError(Refusal.FILES_CHANGED, f"{entry.name} is a {what}; artifacts hold plain files only")
        if not _PLAIN_NAME.match(entry.name):
            raise RefusedError(Refusal.PATH_TRAVERSAL, f"file name {entry.name!r} is not a plain name")
    names = {entry.name for entry in entries}
    if SIGNATURE_NAME not in names:
        raise RefusedError(Refusal.UNSIGNED, f"no signature bundle {SIGNATURE_NAME}")
    for required in (RELEASE_NAME, MANIFEST_NAME):
        if required not in names:
            raise RefusedError(Refusal.NOT_RELEASED if required == RELEASE_NAME else Refusal.MALFORMED,
                               f"no {required} in the artifact")  # fmt: skip


def _check_signature(directory: Path, policy: TrustPolicy, model: str) -> tuple[ReleaseSigner, dict[str, str]]:
    candidates = policy.signers_for(model)
    if not candidates:
        raise RefusedError(Refusal.UNTRUSTED_SIGNER, f"the trust policy names no release signer for model {model}")
    refusals: list[RefusedError] = []
    for signer in candidates:
        try:
            if signer.public_key is not None:
                return signer, verify_with_key(directory, signer.public_key)
            assert signer.identity is not None
            return signer, verify_keyless(directory, signer.identity, policy.sigstore_trusted_root)
        except RefusedError as refused:
            if refused.reason not in (Refusal.UNTRUSTED_SIGNER, Refusal.WRONG_IDENTITY):
                raise  # the signature is good and the content is not: no other signer changes that
            refusals.append(refused)
    reason = (
        Refusal.WRONG_IDENTITY
        if all(r.reason is Refusal.WRONG_IDENTITY for r in refusals)
        else (Refusal.UNTRUSTED_SIGNER)
    )
    trusted = ", ".join(s.describe() for s in candidates)
    details = "; ".join(r.message for r in refusals)
    raise RefusedError(reason, f"not signed by a release signer trusted for {model} ({trusted}): {details}")


def _read_signed(directory: Path, name: str, digests: dict[str, str]) -> bytes:
    limit = MAX_MANIFEST_BYTES
    with (directory / name).open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise RefusedError(Refusal.OVERSIZED, f"{name} is larger than {limit} bytes")
    if hashlib.sha256(data).hexdigest() != digests.get(name):
        raise RefusedError(Refusal.TAMPERED, f"{name} changed after its signature was checked")
    return data


def _parse_manifest(data: bytes) -> dict:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RefusedError(Refusal.MALFORMED, f"{MANIFEST_NAME} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or not all(
        isinstance(manifest.get(k), str) for k in ("model", "version", "profile")
    ):
        raise RefusedError(Refusal.MALFORMED, f"{MANIFEST_NAME} lacks model, version or profile")
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise RefusedError(Refusal.MALFORMED, f"{MANIFEST_NAME} lists no files")
    return manifest


def _check_statements(manifest: dict, release: Release, expect: Expectation, digests: dict[str, str]) -> None:
    built = f"{manifest['model']}@{manifest['version']}"
    released = f"{release.model}@{release.version}"
    if built != released:
        raise RefusedError(Refusal.WRONG_MODEL, f"the manifest is {built} but the release statement is {released}")
    if release.model != expect.model or (expect.version is not None and release.version != expect.version):
        wanted = f"{expect.model}@{expect.version}" if expect.version else expect.model
        raise RefusedError(Refusal.WRONG_MODEL, f"asked for {wanted}, the artifact is {released}")
    profile = manifest["profile"]
    if profile not in release.profiles:
        raise RefusedError(Refusal.NOT_RELEASED,
                           f"{released} was released for {', '.join(release.profiles)}, not for {profile}")  # fmt: skip
    if expect.profile is not None and profile != expect.profile:
        raise RefusedError(
            Refusal.WRONG_PROFILE, f"the artifact is built for {profile}; this device is {expect.profile}"
        )
    if release.counter < expect.minimum_counter:
        raise RefusedError(Refusal.REVOKED,
                           f"release counter {release.counter} of {release.model} is below the minimum "
                           f"{expect.minimum_counter}: the owner withdrew it")  # fmt: skip
    for name, entry in manifest["files"].items():
        wanted = entry.get("sha256") if isinstance(entry, dict) else None
        if digests.get(name) != wanted:
            raise RefusedError(
                Refusal.MALFORMED, f"{MANIFEST_NAME} lists {name} with another digest than the signed file"
            )
