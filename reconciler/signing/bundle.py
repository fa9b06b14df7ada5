"""Signature bundles over a whole artifact directory, with OpenSSF model-signing.

Who calls it: ``reconciler.signing.release`` (signs), ``reconciler.signing.verify`` (checks), ``edgectl``.
Every file of the directory is hashed into one in-toto statement (per-file sha256), which is signed into a
sigstore bundle stored beside the files as ``release.sig``. Two signers:

- a key file (ECDSA P-256): works with no network, the default for air-gapped fleets;
- sigstore keyless (an OIDC identity token, a Fulcio certificate, a Rekor entry): needs the network to sign,
  and is verified *offline* against a pinned trusted root and an identity policy (issuer + subject).

model-signing's public ``verifying.Config`` hides which check failed and trusts the signer's own list of
ignored files; verification here re-hashes the directory with a fixed configuration instead (nothing is
ignored but the bundle itself, ``.git*`` files included) and diffs per file, so a refusal says exactly what
differs. The signer and verifier classes come from model-signing's ``_signing`` modules: pinned with the
package version in pyproject.toml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_signing import hashing
from model_signing import manifest as ms_manifest
from model_signing._signing import sign_ec_key, sign_sigstore, sign_sigstore_pb, signing

from .errors import KeyFileError, Refusal, RefusedError, SigningUnavailableError
from .keys import load_private_key

SIGNATURE_NAME = "release.sig"
MAX_BUNDLE_BYTES = 256 * 1024


@dataclass(frozen=True)
class KeylessIdentity:
    """Who a keyless signature must come from: the OIDC issuer and the certificate's subject."""

    issuer: str
    subject: str


def _hashing_config() -> hashing.Config:
    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)
    )


def sign_with_key(directory: Path, private_key: Path, password: bytes | None = None) -> Path:
    """Sign every file of ``directory`` with an ECDSA key file; returns the bundle's path."""
    key = load_private_key(private_key, password)  # permissions and type, before model-signing reads it
    if not hasattr(key, "curve"):
        raise KeyFileError(f"{private_key}: release signatures need an ECDSA key (P-256); Ed25519 signs TUF roles only")
    try:
        signer = sign_ec_key.Signer(Path(private_key), password.decode() if password else None)
    except ValueError as exc:
        raise KeyFileError(f"{private_key}: {exc}") from None
    return _sign(directory, signer)


def sign_keyless(directory: Path, identity_token: str, trust_config: Path | None = None) -> Path:
    """Sign with sigstore keyless: needs Fulcio and Rekor (from ``trust_config``, default the public instance)."""
    from sigstore.errors import NetworkError
    from sigstore.oidc import IdentityError

    try:
        signer = sign_sigstore.Signer(
            identity_token=identity_token, use_ambient_credentials=False, trust_config=trust_config
        )
        return _sign(directory, signer)
    except IdentityError as exc:
        raise SigningUnavailableError(f"keyless signing: the identity token is not usable: {exc}") from None
    except Exception as exc:
        # sigstore wraps transport failures in its own errors; a network cause anywhere in the chain means offline.
        if isinstance(exc, NetworkError) or _has_network_cause(exc):
            raise SigningUnavailableError(_offline_message(exc)) from None
        raise


def _offline_message(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return (
        "keyless signing needs the sigstore services (OIDC issuer, Fulcio, Rekor) and could not reach them "
        f"({type(cause).__name__}: {str(cause)[:200]}). "
        "Air-gapped fleets sign with a key file: edgectl keys generate, then edgectl sign --key"
    )


def _has_network_cause(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (OSError, ConnectionError)) or "connect" in type(exc).__name__.lower():
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _sign(directory: Path, signer: signing.Signer) -> Path:
    directory = Path(directory)
    statement = _hashing_config().hash(directory)
    bundle = directory / SIGNATURE_NAME
    signer.sign(signing.Payload(statement)).write(bundle)
    return bundle


def verify_with_key(directory: Path, public_key: Path) -> dict[str, str]:
    """Check the bundle against one public key, then every file; returns the signed ``{name: sha256}``."""
    try:
        verifier = sign_ec_key.Verifier(Path(public_key))
    except ValueError as exc:
        raise KeyFileError(f"{public_key}: {exc}") from None
    signature = _read_bundle(directory, sign_sigstore_pb.Signature)
    try:
        signed = verifier.verify(signature)
    except Exception as exc:  # cryptography's InvalidSignature, model-signing's ValueError("Key mismatch...")
        raise RefusedError(Refusal.UNTRUSTED_SIGNER, f"not signed by {Path(public_key).name}") from exc
    return _check_files(directory, signed)


def verify_keyless(directory: Path, identity: KeylessIdentity, trusted_root: Path | None = None) -> dict[str, str]:
    """Check a keyless bundle offline: certificate chain and log entry against the pinned ``trusted_root``
    (default: the production root that the sigstore package ships), then the identity, then every file."""
    from sigstore.errors import VerificationError
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier, policy

    root = TrustedRoot.from_file(str(trusted_root)) if trusted_root else _bundled_production_root()
    verifier = sign_sigstore.Verifier.__new__(sign_sigstore.Verifier)  # its __init__ insists on a client config
    verifier._verifier = Verifier(trusted_root=root)
    verifier._policy = policy.Identity(identity=identity.subject, issuer=identity.issuer)
    signature = _read_bundle(directory, sign_sigstore.Signature)
    try:
        signed = verifier.verify(signature)
    except VerificationError as exc:
        text = str(exc)
        reason = Refusal.WRONG_IDENTITY if ("SAN" in text or "issuer" in text.lower()) else Refusal.UNTRUSTED_SIGNER
        raise RefusedError(reason, text) from exc
    except Exception as exc:
        raise RefusedError(Refusal.UNTRUSTED_SIGNER, f"keyless bundle does not verify: {exc}") from exc
    return _check_files(directory, signed)


def _bundled_production_root():
    from sigstore.models import ClientTrustConfig

    return ClientTrustConfig.production(offline=True).trusted_root


def _read_bundle(directory: Path, kind: type[signing.Signature]) -> signing.Signature:
    path = Path(directory) / SIGNATURE_NAME
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise RefusedError(Refusal.UNSIGNED, f"no signature bundle {SIGNATURE_NAME} in {directory}") from None
    if size > MAX_BUNDLE_BYTES:
        raise RefusedError(Refusal.OVERSIZED, f"{SIGNATURE_NAME} is {size} bytes, more than {MAX_BUNDLE_BYTES}")
    try:
        return kind.read(path)
    except Exception as exc:
        raise RefusedError(Refusal.UNSIGNED, f"{SIGNATURE_NAME} is not a sigstore bundle: {exc}") from exc


def _check_files(directory: Path, signed: ms_manifest.Manifest) -> dict[str, str]:
    expected = _digests(signed)
    try:
        actual = _digests(_hashing_config().hash(Path(directory)))
    except (ValueError, OSError) as exc:  # symlinks and unreadable files
        raise RefusedError(Refusal.FILES_CHANGED, f"cannot hash the artifact: {exc}") from exc
    added, removed = sorted(actual.keys() - expected.keys()), sorted(expected.keys() - actual.keys())
    if added or removed:
        parts = ([f"added {', '.join(added)}"] if added else []) + (
            [f"removed {', '.join(removed)}"] if removed else []
        )
        raise RefusedError(Refusal.FILES_CHANGED, f"the signed file set changed: {'; '.join(parts)}")
    changed = sorted(name for name in expected if expected[name] != actual[name])
    if changed:
        raise RefusedError(Refusal.TAMPERED, f"content differs from the signed digest: {', '.join(changed)}")
    return expected


def _digests(statement: ms_manifest.Manifest) -> dict[str, str]:
    return {str(rd.identifier): rd.digest.digest_hex for rd in statement.resource_descriptors()}
