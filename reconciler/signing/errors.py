"""Trust errors, split by origin as python-tuf does: untrusted data is *refused* with a reason a person and
a status field can act on; a failure to reach something is a *transport* error that may pass on retry.

    TrustError
    ├── RefusedError             the artifact or its metadata is not trusted; ``reason`` names the check
    ├── KeyFileError             a key file is missing, unreadable, of an unsupported type, or readable by others
    ├── SigningUnavailableError  keyless signing could not reach its certificate authority or log (offline)
    └── FetchError               metadata or a file could not be downloaded; retry later

A loop that does not care where a failure came from catches the kinds of :mod:`reconciler.errors`: a
FetchError is also a TemporaryError, a KeyFileError also a PermanentError (a person must fix the file). A
RefusedError is neither: it is a verdict on the data, and the same data gets the same verdict.

Messages name files, roles and keys by path or id, never by content: no key material reaches a log.
"""

from __future__ import annotations

from enum import StrEnum

from reconciler.errors import PermanentError, TemporaryError


class Refusal(StrEnum):
    """Why something was refused. Stable strings: they appear in device status and in rollout gates."""

    UNSIGNED = "Unsigned"
    """No signature bundle, or one that is not a bundle."""
    UNTRUSTED_SIGNER = "UntrustedSigner"
    """Signed, but by no key or identity the policy trusts for this model."""
    WRONG_IDENTITY = "WrongIdentity"
    """A keyless signature whose certificate names another subject or issuer."""
    TAMPERED = "Tampered"
    """A file's content differs from what was signed."""
    FILES_CHANGED = "FilesChanged"
    """A file was added to or removed from the signed set."""
    NOT_RELEASED = "NotReleased"
    """No release statement from a model owner covers this artifact (e.g. signed by the controller alone)."""
    WRONG_MODEL = "WrongModel"
    """Manifest, release statement and the requested model or version disagree."""
    WRONG_PROFILE = "WrongProfile"
    """Built or released for another hardware profile than the device's."""
    REVOKED = "Revoked"
    """The release counter is below the model's minimum: an older release the owner withdrew."""
    EXPIRED = "Expired"
    """Signed metadata past its expiry (targets, snapshot or root)."""
    FROZEN = "Frozen"
    """The timestamp expired: the repository stopped vouching for freshness (a freeze attack or an outage)."""
    ROLLBACK = "Rollback"
    """Metadata older than what the device already trusts."""
    MIX_AND_MATCH = "MixAndMatch"
    """Metadata files that do not belong to the same snapshot."""
    THRESHOLD = "Threshold"
    """Fewer valid signatures than the role's threshold."""
    UNKNOWN_TARGET = "UnknownTarget"
    """The repository's signed targets do not list the requested artifact."""
    PATH_TRAVERSAL = "PathTraversal"
    """A target or file name that is not a plain relative name."""
    OVERSIZED = "Oversized"
    """A file or metadata larger than its limit."""
    MALFORMED = "Malformed"
    """Unparseable or structurally wrong metadata, manifest or release statement."""


class TrustError(Exception):
    """Base of every error of ``reconciler.signing``."""


class RefusedError(TrustError):
    """Untrusted input. ``reason`` is machine-readable; ``str()`` is the sentence for a person."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class KeyFileError(TrustError, PermanentError):
    """A key file that cannot be used. The message names the path, never the content."""


class SigningUnavailableError(TrustError):
    """Keyless signing needs the network (OIDC, Fulcio, Rekor); offline fleets sign with key files."""


class FetchError(TrustError, TemporaryError):
    """A download failed in transport (connection, HTTP status). Nothing was trusted; retry later."""
