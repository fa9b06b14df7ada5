"""Trust policy: which keys or keyless identities may release which models.

Who calls it: the controller (before it serves an artifact), the agent (before it loads one), ``edgectl
verify``. Built from the ``Fleet`` document's ``spec.trust`` so that the policy is reviewed in pull
requests like everything else. Paths in the spec are relative to the fleet repo; they are resolved here
and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from reconciler.api import Fleet

from .bundle import KeylessIdentity


@dataclass(frozen=True)
class ReleaseSigner:
    """One trusted model owner: a public key file (offline mode) or a keyless identity (sigstore mode)."""

    name: str
    public_key: Path | None = None
    identity: KeylessIdentity | None = None
    models: tuple[str, ...] = ("*",)
    max_counter: int | None = None
    """A builder's limit: the highest release counter it may sign (owners have none)."""

    def __post_init__(self) -> None:
        if (self.public_key is None) == (self.identity is None):
            raise ValueError(f"release signer {self.name}: set exactly one of public_key or identity")

    def may_release(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def describe(self) -> str:
        if self.identity is not None:
            return f"{self.name} ({self.identity.subject} via {self.identity.issuer})"
        return f"{self.name} (key {self.public_key.name if self.public_key else '?'})"


@dataclass(frozen=True)
class TrustPolicy:
    signers: tuple[ReleaseSigner, ...]
    sigstore_trusted_root: Path | None = None
    """Pinned sigstore trusted root for keyless bundles; None: the production root the sigstore package ships."""

    def signers_for(self, model: str) -> list[ReleaseSigner]:
        return [signer for signer in self.signers if signer.may_release(model)]


def policy_from_fleet(fleet: Fleet, repo_root: Path) -> TrustPolicy:
    trust = fleet.spec.trust
    signers = tuple(
        ReleaseSigner(
            name=s.name,
            public_key=repo_root / s.public_key if s.public_key else None,
            identity=KeylessIdentity(s.identity.issuer, s.identity.subject) if s.identity else None,
            models=tuple(s.models),
        )
        for s in trust.release_signers
    )
    if trust.builder is not None and trust.builder.public_key is not None:
        builder = trust.builder
        signers += (ReleaseSigner(builder.name, repo_root / builder.public_key, None, tuple(builder.models),
                                  builder.max_counter),)  # fmt: skip
    root = repo_root / trust.sigstore_trusted_root if trust.sigstore_trusted_root else None
    return TrustPolicy(signers, root)
