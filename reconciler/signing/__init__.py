"""Trust: signed artifacts, TUF metadata, and the one verification that controller and agent share.

keys        key files (ECDSA P-256 for releases and TUF roles, Ed25519 for TUF roles), permission checks
bundle      model-signing bundles over a whole artifact directory (key file or sigstore keyless)
release     the owner's release statement (model, version, profiles, counters) inside the signed set
policy      who may release which models, from the Fleet document
verify      verify_artifact: layout, signature, files, statements, in that order
tuf_repo    the controller's TUF repository (root, targets, snapshot, timestamp)
tuf_client  the agent's TUF client (tuf.ngclient) with limits and refusal reasons
"""

from .bundle import SIGNATURE_NAME, KeylessIdentity, sign_keyless, sign_with_key
from .errors import FetchError, KeyFileError, Refusal, RefusedError, SigningUnavailableError, TrustError
from .keys import KeyPair, generate_key, load_private_key, load_public_key, tuf_key, tuf_signer
from .policy import ReleaseSigner, TrustPolicy, policy_from_fleet
from .release import RELEASE_NAME, Release, parse_release, write_release
from .verify import MANIFEST_NAME, Expectation, VerifiedArtifact, verify_artifact

__all__ = [
    "MANIFEST_NAME",
    "RELEASE_NAME",
    "SIGNATURE_NAME",
    "Expectation",
    "FetchError",
    "KeyFileError",
    "KeyPair",
    "KeylessIdentity",
    "Refusal",
    "RefusedError",
    "Release",
    "ReleaseSigner",
    "SigningUnavailableError",
    "TrustError",
    "TrustPolicy",
    "VerifiedArtifact",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "parse_release",
    "policy_from_fleet",
    "sign_keyless",
    "sign_with_key",
    "tuf_key",
    "tuf_signer",
    "verify_artifact",
    "write_release",
]
