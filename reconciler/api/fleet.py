"""``Fleet``: settings of the whole fleet repo (artifact store, trust, status path, intervals).

Pure (no I/O). At most one ``Fleet`` document per repo; a repo without one gets the defaults below,
so a minimal fleet repo needs nothing but profiles, groups, models and rollouts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import Field

from .document import Document, Problem
from .types import Duration, Name, QuotedStr, RepoPath, SpecModel


class ArtifactStore(SpecModel):
    """Where built artifacts live on the controller, content-addressed by sha256 (agents fetch them through the
    device API)."""

    type: Literal["filesystem", "oci"] = "filesystem"
    """Only filesystem is supported yet."""
    path: QuotedStr = "/var/lib/edge-reconciler/artifacts"
    """Directory of the filesystem store: ``edgectl run`` serves and assigns it when the directory exists and
    ``--store`` is not given."""


class SignerIdentity(SpecModel):
    """A sigstore keyless identity: the OIDC issuer and the subject (e-mail or workflow URI)."""

    issuer: QuotedStr
    subject: QuotedStr


class ReleaseSigner(SpecModel):
    """Who may release which models: a public key file (offline mode) or a sigstore identity."""

    name: Name
    public_key: RepoPath | None = None
    """PEM public key in the fleet repo (offline key mode)."""
    identity: SignerIdentity | None = None
    """Keyless identity (sigstore mode)."""
    models: list[QuotedStr] = Field(default_factory=lambda: ["*"])
    """Model names (shell-style patterns) this signer may release."""


class BuilderSigner(ReleaseSigner):
    """The controller's build workers as a release signer: they sign what they built from a merged recipe with a
    key of their own (a Secret only the build Job mounts), never with the controller's online keys."""

    max_counter: int = Field(ge=1)
    """The highest release counter the builder may sign: a release above it needs the owner's key (``edgectl
    sign``), so a stolen builder key cannot outrank what the owner released."""


class Trust(SpecModel):
    """How artifacts are signed and what agents trust."""

    mode: Literal["offline-key", "sigstore"] = "offline-key"
    """offline-key works air-gapped; sigstore signs keyless in CI and verifies offline."""
    release_signers: list[ReleaseSigner] = Field(default_factory=list)
    """Model owners' release keys or identities (the offline half of the two-key rule)."""
    release: Literal["owner-release", "builder"] = "owner-release"
    """owner-release: owners build and sign out of band, the controller publishes what verifies. builder: the
    controller builds what a merged rollout needs and ``builder`` signs it (``edgectl run --build``)."""
    builder: BuilderSigner | None = None
    """With ``release: builder``: the build workers' key, the models they may release, up to which counter."""
    trust_root: RepoPath | None = None
    """TUF root metadata (root.json) that agents pin and start from; later roots must be signed by it."""
    sigstore_trusted_root: RepoPath | None = None
    """sigstore trusted root (trusted_root.json) for verifying keyless release signatures offline; default:
    the production root that the sigstore package ships."""


class Intervals(SpecModel):
    """How often the controller works (``edgectl run --interval`` sets gitPoll and reconcile at once)."""

    git_poll: Duration = timedelta(seconds=60)
    """Between fetches of the fleet repo (a Git webhook or an operator's call fetches at once)."""
    reconcile: Duration = timedelta(seconds=30)
    """Between cycles: device reports and gates are judged this often, from the commit fetched last."""
    telemetry: Duration = timedelta(minutes=5)
    """Between compactions of the telemetry store (hours into days, the expired out)."""
    drift: Duration = timedelta(minutes=5)
    """Between drift evaluations (every model's merged sketches against its builds' references)."""


NOTIFIED = ("Start", "Promote", "Pause", "Succeed", "Abort", "Retry", "Rollback", "ReleaseRefused", "BuildRefused")
"""What a notification can be about: the step machine's decisions, a rollback commit, a release the controller
refused to publish (a bad signature, a policy that does not allow its signer), a build that stopped a rollout."""


class Notification(SpecModel):
    """Where decisions are sent: a webhook whose URL (a secret) is read on the controller, never from Git."""

    name: Name
    type: Literal["generic", "slack", "teams"] = "generic"
    """generic: JSON with the decision's fields; slack: an incoming webhook's ``text``; teams: a MessageCard."""
    url_file: QuotedStr | None = None
    """A file on the controller holding the URL (a mounted Secret)."""
    url_env: QuotedStr | None = None
    """An environment variable of the controller holding the URL."""
    events: list[Literal[NOTIFIED]] = Field(default_factory=lambda: list(NOTIFIED))  # type: ignore[valid-type]
    """The kinds sent (default: all)."""
    rollouts: list[Name] = Field(default_factory=list)
    """Only these rollouts' decisions (default: every rollout's)."""


class CommitAuthor(SpecModel):
    """Author of the controller's status and rollback commits."""

    name: QuotedStr = "edge-reconciler"
    email: QuotedStr = "edge-reconciler@localhost"


class FleetSpec(SpecModel):
    """Repo-level settings of the fleet."""

    branch: QuotedStr = "main"
    """Branch the controller reconciles, and commits rollbacks to (``edgectl rollout --via-git`` commits here)."""
    status_branch: QuotedStr = "edgereconciler/status"
    """Branch the controller commits status to (every status file, whenever one changes), so that the fleet's
    branch carries people's changes and rollback decisions only; the fleet's branch itself (``main``) keeps all
    status there, as before."""
    status_path: RepoPath = "status"
    """Directory the controller writes status to; never edited by hand, ignored by the loader."""
    artifact_store: ArtifactStore = Field(default_factory=ArtifactStore)
    trust: Trust = Field(default_factory=Trust)
    intervals: Intervals = Field(default_factory=Intervals)
    commit_author: CommitAuthor = Field(default_factory=CommitAuthor)
    notifications: list[Notification] = Field(default_factory=list)
    """Webhooks that get the controller's decisions (retried; a failure never stalls a cycle)."""


class Fleet(Document):
    """Settings of the whole fleet repo. Optional; at most one per repo."""

    KIND: ClassVar[str] = "Fleet"
    kind: Literal["Fleet"]
    spec: FleetSpec = Field(default_factory=FleetSpec)

    def problems(self) -> list[Problem]:
        found: list[Problem] = []
        if self.spec.artifact_store.type == "oci":
            found.append((("spec", "artifactStore", "type"), "the OCI store is not supported yet: use filesystem"))
        for i, target in enumerate(self.spec.notifications):
            if (target.url_file is None) == (target.url_env is None):
                found.append((("spec", "notifications", i), "set exactly one of urlFile or urlEnv (the URL is a "
                                                            "secret: it never lives in Git)"))  # fmt: skip
        for i, signer in enumerate(self.spec.trust.release_signers):
            loc = ("spec", "trust", "releaseSigners", i)
            if (signer.public_key is None) == (signer.identity is None):
                found.append((loc, "set exactly one of publicKey (offline-key) or identity (sigstore)"))
            elif self.spec.trust.mode == "offline-key" and signer.public_key is None:
                found.append(((*loc, "publicKey"), "trust mode offline-key needs a publicKey"))
            elif self.spec.trust.mode == "sigstore" and signer.identity is None:
                found.append(((*loc, "identity"), "trust mode sigstore needs an identity"))
        builder = self.spec.trust.builder
        if self.spec.trust.release == "builder" and builder is None:
            found.append((("spec", "trust", "builder"), "release: builder needs a builder (its key, models and "
                                                        "maxCounter)"))  # fmt: skip
        if builder is not None:
            if builder.public_key is None:
                found.append((("spec", "trust", "builder", "publicKey"), "the builder signs with a key: publicKey"))
            if builder.name in {s.name for s in self.spec.trust.release_signers}:
                found.append((("spec", "trust", "builder", "name"), f"{builder.name} is also a release signer: "
                                                                    "give the builder a name of its own"))  # fmt: skip
        return found


def default_fleet() -> Fleet:
    """The settings a repo without a Fleet document gets."""
    return Fleet.model_validate(
        {"apiVersion": "edgereconciler.io/v1alpha1", "kind": "Fleet", "metadata": {"name": "default"}}
    )
