"""What every backend offers the controller and the agents: inventory, assignments, their status.

Two implementations share this interface and its tests: ``KubernetesBackend`` (devices are Nodes,
assignments are ``ModelAssignment`` custom objects) and ``LocalBackend`` (SQLite in a state directory, the
embedded default that needs no cluster). The controller writes assignment *specs*; agents write their
*status*. Both count their writes, so "a reconcile that changes nothing writes nothing" is checkable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from reconciler.api.status import RolloutStatus
from reconciler.errors import EdgeReconcilerError, PermanentError, TemporaryError
from reconciler.plan import Desired, Device
from reconciler.plan.desired import CaptureSettings, Debug, TrainingCall, Trial
from reconciler.plan.window import Window

FIELD_MANAGER = "edge-reconciler"


class ClusterError(EdgeReconcilerError):
    """A backend call failed; only its two kinds below are raised."""


class TemporaryClusterError(ClusterError, TemporaryError):
    """The server was unreachable, busy or raced with another writer (network, 409, 429, 5xx, a locked
    database): the same call later may pass."""


class PermanentClusterError(ClusterError, PermanentError):
    """The server understood and said no (credentials, RBAC, validation, a missing CRD or namespace), or the
    local state cannot be used: a person fixes it."""


class ConflictError(TemporaryClusterError):
    """A compare-and-swap write lost: another writer changed, created or deleted the object first. Read it again
    and decide again."""


@dataclass(frozen=True)
class AssignmentStatus:
    """What an agent reports for one model on its device."""

    phase: str = "Pending"
    """Pending, Downloading, Verifying, Installing, Testing, Healthy, Failed, RolledBack."""
    installed_version: str | None = None
    previous_version: str | None = None
    message: str = ""
    reason: str = ""
    last_seen: str | None = None
    """RFC 3339 time of the agent's last report."""
    observed_generation: int = 0
    target_version: str | None = None
    """The version of the assignment this report answers (a report from an older spec is told apart)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else the agent reports (bytes transferred, health check figures)."""

    def to_json(self) -> dict[str, Any]:
        body = {_camel(k): v for k, v in asdict(self).items() if k != "extra" and v not in (None, "")}
        return {**body, **dict(self.extra)}

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | None) -> AssignmentStatus:
        body = {k: v for k, v in (body or {}).items() if k != TELEMETRY_FIELD}
        known = {f: body.pop(_camel(f)) for f in cls.__dataclass_fields__ if f != "extra" and _camel(f) in body}
        return cls(**known, extra=body)


TELEMETRY_FIELD = "telemetry"
"""Where assignments written by older controllers kept telemetry in their status: ignored, never a report field
(telemetry lives in the controller's store, ``reconciler.telemetry.store``)."""


@dataclass(frozen=True)
class StoredRollout:
    """A rollout as the controller keeps it in the backend: the authority over where the rollout stands. The
    status file in Git is the audit trail rendered from it, never read back while this record exists."""

    status: RolloutStatus
    synced: bool = False
    """The status commit that carries this status landed: the file in Git must say the same (else it was
    changed by someone else)."""
    pending: str | None = None
    """A rollback commit message still to be pushed (the devices were rolled back already)."""
    status_root: str | None = None
    """The Fleet's statusPath the file was rendered under (a moved path is no tampering)."""
    actions: Mapping[str, Any] = field(default_factory=dict)
    """What people asked through the operator API (``reconciler.controller.actions.OperatorActions``)."""

    def to_json(self) -> dict[str, Any]:
        body = {**self.status.to_json(), "gitSynced": self.synced, "pendingCommit": self.pending,
                "statusRoot": self.status_root}  # fmt: skip
        return {**body, "operatorActions": dict(self.actions)} if self.actions else body

    @classmethod
    def from_json(cls, body: Mapping[str, Any], name: str) -> StoredRollout:
        pending, root, actions = body.get("pendingCommit"), body.get("statusRoot"), body.get("operatorActions")
        return cls(RolloutStatus.from_json(body, name), body.get("gitSynced") is True,
                   pending if isinstance(pending, str) else None, root if isinstance(root, str) else None,
                   dict(actions) if isinstance(actions, Mapping) else {})  # fmt: skip


def spec_to_json(desired: Desired) -> dict[str, Any]:
    body = {
        _camel(k): v for k, v in asdict(desired).items() if k not in ("window", "trial", "debug", "capture", "training")
    }
    if body["artifact"] is None:
        del body["artifact"]
    if not desired.benchmark:
        del body["benchmark"]
    if desired.window is not None:
        body["window"] = desired.window.to_json()
    if desired.trial is not None:
        body["trial"] = desired.trial.to_json()
    if desired.debug is not None:
        body["debug"] = desired.debug.to_json()
    if desired.capture is not None:
        body["capture"] = desired.capture.to_json()
    if desired.training is not None:
        body["training"] = desired.training.to_json()
    return body


def spec_from_json(body: Mapping[str, Any]) -> Desired:
    return Desired(
        device=body["device"], model=body["model"], version=body["version"], profile=body["profile"],
        rollout=body["rollout"], artifact=body.get("artifact"), in_rollout=bool(body.get("inRollout")),
        window=Window.from_json(body.get("window")), trial=Trial.from_json(body.get("trial")),
        benchmark=bool(body.get("benchmark")), debug=Debug.from_json(body.get("debug")),
        capture=CaptureSettings.from_json(body.get("capture")), training=TrainingCall.from_json(body.get("training")),
    )  # fmt: skip


@dataclass(frozen=True)
class Event:
    """Something that happened to a rollout or to one device's model, as a Kubernetes Event says it: the same
    event again raises ``count`` and ``last_seen`` instead of adding a line (kubectl's ``x3 over 10m``)."""

    kind: str
    """``Rollout`` (a FleetRollout) or ``Device`` (a device's ModelAssignment of ``model``)."""
    name: str
    reason: str
    message: str
    type: str = "Normal"
    """``Normal`` or ``Warning``."""
    model: str | None = None
    count: int = 1
    first_seen: str | None = None
    last_seen: str | None = None

    @property
    def key(self) -> str:
        """What makes two events the same one (their times and count aside)."""
        text = "\0".join((self.kind, self.name, self.model or "", self.reason, self.message))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def involved(self) -> str:
        """``rollout/NAME`` or ``device/NAME``, as ``edgectl get events --for`` names it."""
        return f"{self.kind.lower()}/{self.name}"


EVENTS_KEPT = 5000
"""Events the local backend keeps (the newest); Kubernetes drops them after its event TTL (an hour by default)."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class Backend(Protocol):
    writes: int
    """Write requests sent so far (creates, applies, deletes, status updates)."""

    def sync(self, inventory: bool = True) -> None:
        """Bring the view of devices (unless ``inventory`` is False) and assignments up to date; a no-op while
        watches keep it current."""

    def devices(self) -> list[Device]: ...

    def assignments(self) -> dict[tuple[str, str], Desired]:
        """(device, model) -> the spec last written."""
        ...

    def assignments_for(self, device: str) -> dict[str, tuple[Desired, int]]:
        """model -> (spec, generation) for one device: what its agent acts on."""
        ...

    def statuses(self) -> dict[tuple[str, str], AssignmentStatus]: ...

    def apply(self, desired: Iterable[Desired]) -> int:
        """Write these specs (create or update); returns how many were written."""
        ...

    def delete(self, keys: Iterable[tuple[str, str]]) -> int: ...

    def rollouts(self) -> dict[str, StoredRollout]:
        """The controller's record of each rollout (empty on a fresh backend)."""
        ...

    def save_rollouts(self, records: Mapping[str, StoredRollout]) -> int:
        """Keep these records (only those that changed are written); returns the writes."""
        ...

    def report_status(self, device: str, model: str, status: AssignmentStatus) -> None:
        """An agent's report for its own assignment."""
        ...

    def record_event(self, event: Event, now: datetime, again: bool = True) -> None:
        """Keep ``event`` (its times and count are set here); the same event kept before gets ``count`` + 1 and
        ``now`` as its last time, or (``again`` False: a restarted controller meeting what it may have recorded
        already) is left as it is."""
        ...

    def events(self, kind: str | None = None, name: str | None = None) -> list[Event]:
        """Events kept, oldest last-seen first; only those of ``kind`` (and ``name``) when given."""
        ...
