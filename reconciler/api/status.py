"""The status half of the API: what the controller writes under the fleet's status path, typed.

Pure (no I/O). The controller builds these values and writes them (``to_yaml``); every reader (``edgectl get``,
``describe``, ``rollout status``, the watch, the demo, the FleetRollout mirror, ``edgectl plan``) reads the same
types back (``from_yaml`` / ``from_json``), so a field is named, defaulted and tolerated in one place.

Reading is forgiving on purpose: a status file is the controller's own output, but it lives in a Git repository
that people can edit or break. A file that does not parse, or a field of the wrong type, reads as the default
(an empty status), never as an exception: a rollout then continues from its start, which is what the controller
would do without the file.

Writing is deterministic: the bytes are a function of the values only (no timestamps of the write, keys in a
fixed order, empty fields left out as kubectl leaves them out), so an unchanged fleet renders identical files
and the status writer commits nothing.

    FleetStatus           every status file of a commit, by kind and name
    ├── RolloutStatus     one per rollout: where its step machine stands (RolloutState), devices, gates, decisions
    ├── GroupStatus       one per device group: members and assignments by phase
    ├── DriftStatus       one per model serving traffic: its versions' sketches against the build's reference
    └── ControllerStatus  the controller's own condition: Ready, or Stalled with the reason
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import yaml

from .document import API_VERSION
from .loader import FleetTree, SourceFile, load_fleet

HEADER = "# Written by edge-reconciler; do not edit: the controller owns this file.\n"
HISTORY = 10
"""Decisions kept in a rollout's status file (newest last)."""
PROBLEMS = 50
"""Plan problems kept in a rollout's status file."""
FAILING = 20
"""Failing devices named in a rollout's status file (the count of all of them is in ``devices``)."""


class RolloutPhase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ABORTED = "Aborted"


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


class DecisionKind(StrEnum):
    START = "Start"
    PROMOTE = "Promote"
    PAUSE = "Pause"
    SUCCEED = "Succeed"
    ABORT = "Abort"
    RETRY = "Retry"


class Reason(StrEnum):
    """Why a rollout is in its phase (``status.reason``), as Flux and Argo Rollouts name their conditions."""

    STARTED = "Started"
    WAITING = "Waiting"
    GATE_FAILED = "GateFailed"
    HELD_AFTER_GATE_FAILED = "HeldAfterGateFailed"
    """A gate failed with ``rollback.automatic: false``: held for a person (abort, or promote past it)."""
    WAITING_FOR_ARTIFACTS = "WaitingForArtifacts"
    BUILD_REFUSED = "BuildRefused"
    """A build the rollout needs was refused (its gates, its inputs): fixed by a new commit, never by waiting."""
    PAUSING = "Pausing"
    WAITING_FOR_PROMOTION = "WaitingForPromotion"
    PROMOTED = "Promoted"
    PAUSED_BY_PERSON = "PausedByPerson"
    RESUMED = "Resumed"
    ABORTED_BY_PERSON = "AbortedByPerson"
    RETRIED = "Retried"
    SUCCEEDED = "Succeeded"
    WAITING_FOR_LAB = "WaitingForLab"
    """The lab devices benchmark the new version; no fleet device has it yet."""
    LAB_FAILED = "LabFailed"
    """A lab device failed the benchmark or a lab gate: stalled before the first step, every device untouched."""
    LAB_PASSED = "LabPassed"


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout's step machine stands: the part of its status that the next cycle continues from."""

    phase: RolloutPhase = RolloutPhase.PENDING
    step: int = 0
    stable_version: str | None = None
    step_started: str | None = None
    """RFC 3339: when the current step began (deadlines and offline counting run from here)."""
    step_done: str | None = None
    """RFC 3339: when the step's devices settled (its pause runs from here)."""
    reason: str = ""
    message: str = ""
    failures: int = 0
    promotions_seen: int = 0
    retries_seen: int = 0
    last_admitted: str | None = None
    """RFC 3339: when ``maxConcurrent`` last let devices of the step start (their deadline runs from here)."""
    group: int = 0
    """With ``groupStrategy: Sequential``: the group the steps are walking now (0 for the first)."""
    lab: str = ""
    """The lab stage before the first step: Waiting (no fleet device has the version yet), Failed (stalled on the
    lab's figures), Passed, Overridden (a person promoted past a failure); empty: the rollout has no lab."""

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": str(self.phase),
            "step": self.step + 1,
            "stableVersion": self.stable_version,
            "stepStarted": self.step_started,
            "stepDone": self.step_done,
            "reason": str(self.reason),
            "message": self.message,
            "consecutiveFailures": self.failures,
            "promotionsSeen": self.promotions_seen,
            "retriesSeen": self.retries_seen,
            "lastAdmitted": self.last_admitted,
            "currentGroup": self.group,
            "lab": self.lab,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RolloutState:
        try:
            phase = RolloutPhase(body.get("phase", "Pending"))
        except ValueError:
            phase = RolloutPhase.PENDING
        return cls(
            phase,
            _step_index(body),
            _str_or_none(body.get("stableVersion")),
            _str_or_none(body.get("stepStarted")),
            _str_or_none(body.get("stepDone")),
            str(body.get("reason") or ""),
            str(body.get("message") or ""),
            _int(body.get("consecutiveFailures")),
            _int(body.get("promotionsSeen")),
            _int(body.get("retriesSeen")),
            _str_or_none(body.get("lastAdmitted")),
            _int(body.get("currentGroup")),
            str(body.get("lab") or ""),
        )


@dataclass(frozen=True)
class GateStatus:
    """One analysis gate as last evaluated: its value against its threshold."""

    name: str
    value: float | None
    threshold: float
    verdict: Verdict
    message: str = ""
    """What was measured, in words (``1 of 20 devices failed``)."""

    def sentence(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} {shown} > {self.threshold:g}" if self.verdict is Verdict.FAIL else f"{self.name} {shown}"

    def to_json(self) -> dict[str, Any]:
        value = None if self.value is None else round(self.value, 4)
        body: dict[str, Any] = {"name": self.name, "value": value, "threshold": self.threshold}
        body["verdict"] = str(self.verdict)
        if self.message:
            body["message"] = self.message
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> GateStatus:
        try:
            verdict = Verdict(body.get("verdict"))
        except ValueError:
            verdict = Verdict.INCONCLUSIVE
        value = body.get("value")
        # ``detail`` is what controllers before 0.2 wrote for ``message``.
        message = body.get("message") or body.get("detail") or ""
        return cls(str(body.get("name", "")), _float_or_none(value), _float(body.get("threshold")), verdict,
                   str(message))  # fmt: skip


@dataclass(frozen=True)
class DecisionRecord:
    """One decision of the step machine, as kept in the status file's history."""

    time: str
    decision: str
    """A :class:`DecisionKind`; kept as read so that a newer controller's kinds still show."""
    message: str
    step: int
    """Counted from 0 here, as the step machine indexes; written counted from 1, as every reader shows it."""

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "decision": str(self.decision), "message": self.message, "step": self.step + 1}

    @classmethod
    def from_json(cls, body: Mapping[str, Any], counted_from: int = 1) -> DecisionRecord:
        step = max(_int(body.get("step")) - counted_from, 0)
        return cls(str(body.get("time", "")), str(body.get("decision", "")), str(body.get("message", "")), step)


@dataclass(frozen=True)
class FailingDevice:
    """A device of the rollout that failed its version, with the reason its agent reported: what an operator
    needs before logging into the device. No report time: a heartbeat must not change the status file."""

    device: str
    version: str
    phase: str
    reason: str = ""
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        body = {"device": self.device, "version": self.version, "phase": self.phase, "reason": self.reason,
                "message": self.message}  # fmt: skip
        return {k: v for k, v in body.items() if v}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> FailingDevice:
        return cls(*(str(body.get(k) or "") for k in ("device", "version", "phase", "reason", "message")))


@dataclass(frozen=True)
class DeviceCounts:
    """The rollout's targeted devices: how many, how many want the new version, and phases per version."""

    targeted: int = 0
    on_new_version: int = 0
    by_version: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """version -> phase -> devices. A device that reports another installed version than it should run is
    counted as ``Phase(installed)``, e.g. ``Downloading(1.0.0)``."""

    def healthy_on(self, version: str) -> int:
        return int(self.by_version.get(version, {}).get("Healthy", 0))

    def by_phase(self) -> dict[str, int]:
        """Devices per phase over every version (``Healthy(1.0.0)`` counted as ``Healthy``)."""
        phases: dict[str, int] = {}
        for counts in self.by_version.values():
            for phase, count in counts.items():
                key = phase.split("(")[0]
                phases[key] = phases.get(key, 0) + count
        return phases

    def to_json(self) -> dict[str, Any]:
        return {
            "targeted": self.targeted,
            "onNewVersion": self.on_new_version,
            "byVersion": {v: dict(sorted(c.items())) for v, c in sorted(self.by_version.items())},
        }

    @classmethod
    def from_json(cls, body: Any) -> DeviceCounts:
        if not isinstance(body, Mapping):
            return cls()
        by_version = body.get("byVersion")
        counts = {
            str(version): {str(phase): _int(n) for phase, n in phases.items()}
            for version, phases in (by_version.items() if isinstance(by_version, Mapping) else ())
            if isinstance(phases, Mapping)
        }
        return cls(_int(body.get("targeted")), _int(body.get("onNewVersion")), counts)


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout's status file (``STATUS_PATH/rollouts/NAME.yaml``) and its FleetRollout mirror."""

    rollout: str
    model: str = ""
    version: str = ""
    state: RolloutState = field(default_factory=RolloutState)
    observed_revision: str | None = None
    """Digest of the spec files the status was computed from (status files excluded)."""
    observed_commit: str | None = None
    """The commit that last changed the specs of this revision."""
    devices: DeviceCounts = field(default_factory=DeviceCounts)
    gates: tuple[GateStatus, ...] = ()
    last_decision: DecisionRecord | None = None
    history: tuple[DecisionRecord, ...] = ()
    problems: tuple[str, ...] = ()
    failing: tuple[FailingDevice, ...] = ()
    """Up to ``FAILING`` devices that failed the rollout's version, by name; kept after an abort returned them."""

    @property
    def phase(self) -> RolloutPhase:
        return self.state.phase

    @property
    def ready(self) -> tuple[int, int]:
        """(devices Healthy on the rollout's version, devices targeted)."""
        return self.devices.healthy_on(self.version), self.devices.targeted

    def describes(self, model: str, version: str) -> bool:
        """Whether this status is about the given model version (a new version in the spec starts afresh)."""
        return self.model == model and self.version == version

    def with_decision(self, record: DecisionRecord) -> RolloutStatus:
        return replace(self, last_decision=record, history=(*self.history, record)[-HISTORY:])

    def to_json(self) -> dict[str, Any]:
        state = self.state.to_json()
        body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "RolloutStatus", "rollout": self.rollout,
                                "model": self.model, "version": self.version}  # fmt: skip
        for key in ("phase", "currentGroup", "step", "stableVersion", "stepStarted", "stepDone", "lab"):
            body[key] = state[key]
        body["observedRevision"] = self.observed_revision
        body["observedCommit"] = self.observed_commit
        for key in ("reason", "message", "consecutiveFailures", "promotionsSeen", "retriesSeen", "lastAdmitted"):
            body[key] = state[key]
        body["devices"] = self.devices.to_json()
        body["gates"] = [g.to_json() for g in self.gates]
        body["lastDecision"] = self.last_decision.to_json() if self.last_decision else None
        body["history"] = [h.to_json() for h in self.history]
        body["problems"] = list(self.problems)
        body["failingDevices"] = [f.to_json() for f in self.failing]
        # As kubectl does: empty fields are left out; the phase and step always show.
        return {k: v for k, v in body.items() if k in ("phase", "step") or v not in (None, "", 0, [], {})}

    @classmethod
    def from_json(cls, body: Any, name: str = "") -> RolloutStatus:
        if not isinstance(body, Mapping):
            return cls(name)
        last = body.get("lastDecision")
        counted_from = _steps_counted_from(body)
        return cls(
            rollout=str(body.get("rollout") or name),
            model=str(body.get("model") or ""),
            version=str(body.get("version") or ""),
            state=RolloutState.from_json(body),
            observed_revision=_str_or_none(body.get("observedRevision")),
            observed_commit=_str_or_none(body.get("observedCommit")),
            devices=DeviceCounts.from_json(body.get("devices")),
            gates=tuple(GateStatus.from_json(g) for g in _list(body.get("gates")) if isinstance(g, Mapping)),
            last_decision=DecisionRecord.from_json(last, counted_from) if isinstance(last, Mapping) else None,
            history=tuple(
                DecisionRecord.from_json(h, counted_from) for h in _list(body.get("history")) if isinstance(h, Mapping)
            ),
            problems=tuple(str(p) for p in _list(body.get("problems"))),
            failing=tuple(
                FailingDevice.from_json(f) for f in _list(body.get("failingDevices")) if isinstance(f, Mapping)
            ),
        )

    def to_yaml(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_yaml(cls, data: bytes | None, name: str = "") -> RolloutStatus:
        return cls.from_json(_load(data), name)


@dataclass(frozen=True)
class GroupStatus:
    """A device group's status file (``STATUS_PATH/groups/NAME.yaml``)."""

    group: str
    devices: int = 0
    assignments: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """``model@version`` -> phase -> devices of the group."""

    def by_phase(self) -> dict[str, int]:
        phases: dict[str, int] = {}
        for counts in self.assignments.values():
            for phase, count in counts.items():
                phases[phase] = phases.get(phase, 0) + count
        return phases

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "DeviceGroupStatus",
            "group": self.group,
            "devices": self.devices,
            "assignments": {k: dict(sorted(v.items())) for k, v in sorted(self.assignments.items())},
        }

    @classmethod
    def from_json(cls, body: Any, name: str = "") -> GroupStatus:
        if not isinstance(body, Mapping):
            return cls(name)
        assignments = body.get("assignments")
        counts = {
            str(key): {str(phase): _int(n) for phase, n in phases.items()}
            for key, phases in (assignments.items() if isinstance(assignments, Mapping) else ())
            if isinstance(phases, Mapping)
        }
        return cls(str(body.get("group") or name), _int(body.get("devices")), counts)

    def to_yaml(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_yaml(cls, data: bytes | None, name: str = "") -> GroupStatus:
        return cls.from_json(_load(data), name)


@dataclass(frozen=True)
class TamperRecord:
    """Status files someone else changed, deleted or rewrote: the controller kept its own state and restored
    them (``reason: StatusTampered``)."""

    time: str
    commit: str
    """The branch head where the change was seen."""
    paths: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"reason": "StatusTampered", "time": self.time, "commit": self.commit, "paths": list(self.paths),
                "message": "changed outside the controller; restored from the controller's state (devices kept "
                           "their assignments)"}  # fmt: skip

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TamperRecord:
        return cls(str(body.get("time") or ""), str(body.get("commit") or ""),
                   tuple(str(p) for p in _list(body.get("paths"))))  # fmt: skip


@dataclass(frozen=True)
class ControllerStatus:
    """The controller's own condition (``STATUS_PATH/controller.yaml``): Ready, or Stalled and why."""

    observed_commit: str | None = None
    stalled: str | None = None
    """Why nothing was applied (unsigned head, spec errors); None when the controller is Ready."""
    last_tamper: TamperRecord | None = None
    """The last time status files were found changed by someone else (and restored)."""
    version: str | None = None
    """The controller's release (``edgectl version`` shows it next to the client's)."""

    @property
    def ready(self) -> bool:
        return self.stalled is None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "ControllerStatus",
                                "observedCommit": self.observed_commit, "ready": self.ready}  # fmt: skip
        if self.stalled is not None:
            body["reason"] = "Stalled"
            body["message"] = self.stalled
        if self.last_tamper is not None:
            body["lastTamper"] = self.last_tamper.to_json()
        if self.version is not None:
            body["controllerVersion"] = self.version
        return body

    @classmethod
    def from_json(cls, body: Any) -> ControllerStatus:
        if not isinstance(body, Mapping):
            return cls()
        stalled = None if body.get("ready", True) else str(body.get("message") or body.get("reason") or "Stalled")
        tamper = body.get("lastTamper")
        record = TamperRecord.from_json(tamper) if isinstance(tamper, Mapping) else None
        return cls(
            _str_or_none(body.get("observedCommit")), stalled, record, _str_or_none(body.get("controllerVersion"))
        )

    def to_yaml(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_yaml(cls, data: bytes | None) -> ControllerStatus:
        return cls.from_json(_load(data))


DRIFTED_DEVICES = 50
"""Drifted devices named per version in a drift status file (the count of all of them is kept)."""


@dataclass(frozen=True)
class FigureDrift:
    """One figure (an input feature, ``score``, ``margin``, ``output``) against its build's reference."""

    ks: float
    threshold: float
    """The KS distance past which the figure has drifted, for these sample sizes (``reconciler.telemetry.drift``)."""
    psi: float = 0.0
    js: float = 0.0
    values: int = 0

    @property
    def drifted(self) -> bool:
        return self.ks > self.threshold

    def to_json(self) -> dict[str, Any]:
        return {"ks": round(self.ks, 4), "threshold": round(self.threshold, 4), "psi": round(self.psi, 4),
                "js": round(self.js, 4), "values": self.values, "drifted": self.drifted}  # fmt: skip

    @classmethod
    def from_json(cls, body: Any) -> FigureDrift:
        if not isinstance(body, Mapping):
            return cls(0.0, 1.0)
        return cls(_float(body.get("ks")), _float(body.get("threshold")), _float(body.get("psi")),
                   _float(body.get("js")), _int(body.get("values")))  # fmt: skip


@dataclass(frozen=True)
class DriftScope:
    """Drift of one slice of a version's devices: all of them, one profile, one group or one device."""

    devices: int = 0
    figures: Mapping[str, FigureDrift] = field(default_factory=dict)
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    """Inference latency of the slice's requests over the window: ``p50``, ``p95``, ``p99`` (merged sketches)."""

    @property
    def drifted(self) -> tuple[str, ...]:
        """Drifted figures, the farthest past its threshold first."""
        found = [(f.threshold - f.ks, name) for name, f in self.figures.items() if f.drifted]
        return tuple(name for _, name in sorted(found))

    def only_drifted(self) -> DriftScope:
        return DriftScope(self.devices, {name: self.figures[name] for name in self.drifted}, self.latency_ms)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"devices": self.devices, "drifted": list(self.drifted)}
        if self.latency_ms:
            body["latencyMs"] = {q: round(v, 3) for q, v in self.latency_ms.items()}
        body["figures"] = {name: f.to_json() for name, f in sorted(self.figures.items())}
        return body

    @classmethod
    def from_json(cls, body: Any) -> DriftScope:
        if not isinstance(body, Mapping):
            return cls()
        figures, latency = body.get("figures"), body.get("latencyMs")
        figures = figures if isinstance(figures, Mapping) else {}
        latency = latency if isinstance(latency, Mapping) else {}
        return cls(_int(body.get("devices")), {str(k): FigureDrift.from_json(v) for k, v in figures.items()},
                   {str(q): _float(v) for q, v in latency.items()})  # fmt: skip


@dataclass(frozen=True)
class VersionDrift:
    """A model version's traffic over the window against its builds' references, fleet-wide and by slice."""

    fleet: DriftScope = field(default_factory=DriftScope)
    profiles: Mapping[str, DriftScope] = field(default_factory=dict)
    groups: Mapping[str, DriftScope] = field(default_factory=dict)
    devices: Mapping[str, DriftScope] = field(default_factory=dict)
    """Drifted devices only (at most ``DRIFTED_DEVICES``), with their drifted figures."""
    drifted_devices: int = 0
    since: str | None = None
    """When drift was first seen fleet-wide, on a profile or in a group, and has held since (None: not now): what a
    retraining request waits on."""
    reference: str | None = None
    """Why nothing could be compared (no reference sketches in the version's manifests), when so."""

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_devices) or self.widely_drifted

    @property
    def widely_drifted(self) -> bool:
        """Drifted fleet-wide, on a profile or in a group: what ``since`` and retraining requests go by (one
        device's traffic, however odd, asks for no retraining)."""
        return bool(self.fleet.drifted or any(s.drifted for s in self.profiles.values())
                    or any(s.drifted for s in self.groups.values()))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"drifted": self.drifted}
        if self.since:
            body["since"] = self.since
        if self.reference:
            body["reference"] = self.reference
        body["fleet"] = self.fleet.to_json()
        for key, scopes in (("profiles", self.profiles), ("groups", self.groups)):
            if scopes:
                body[key] = {name: scope.only_drifted().to_json() for name, scope in sorted(scopes.items())}
        body["driftedDevices"] = self.drifted_devices
        if self.devices:
            body["devices"] = {name: scope.only_drifted().to_json() for name, scope in sorted(self.devices.items())}
        return body

    @classmethod
    def from_json(cls, body: Any) -> VersionDrift:
        if not isinstance(body, Mapping):
            return cls()

        def scopes(key: str) -> dict[str, DriftScope]:
            found = body.get(key)
            return {str(k): DriftScope.from_json(v) for k, v in (found.items() if isinstance(found, Mapping) else ())}

        return cls(DriftScope.from_json(body.get("fleet")), scopes("profiles"), scopes("groups"), scopes("devices"),
                   _int(body.get("driftedDevices")), _str_or_none(body.get("since")),
                   _str_or_none(body.get("reference")))  # fmt: skip


@dataclass(frozen=True)
class DriftStatus:
    """A model's drift status file (``STATUS_PATH/drift/MODEL.yaml``): each version serving traffic in the window."""

    model: str
    window: str = ""
    false_alarm_rate: float = 0.01
    versions: Mapping[str, VersionDrift] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": "ModelDriftStatus", "model": self.model, "window": self.window,
                "falseAlarmRate": self.false_alarm_rate,
                "versions": {v: d.to_json() for v, d in sorted(self.versions.items())}}  # fmt: skip

    @classmethod
    def from_json(cls, body: Any, name: str = "") -> DriftStatus:
        if not isinstance(body, Mapping):
            return cls(name)
        versions = body.get("versions")
        return cls(str(body.get("model") or name), str(body.get("window") or ""),
                   _float(body.get("falseAlarmRate")) or 0.01,
                   {str(v): VersionDrift.from_json(d) for v, d in
                    (versions.items() if isinstance(versions, Mapping) else ())})  # fmt: skip

    def to_yaml(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_yaml(cls, data: bytes | None, name: str = "") -> DriftStatus:
        return cls.from_json(_load(data), name)


class TrainingPhase(StrEnum):
    """Where a FederatedTraining stands."""

    PENDING = "Pending"
    """Merged; waiting for its SuperLink or for enough devices to join."""
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    """The last round ended; the new version is on ``branch``."""
    FAILED = "Failed"
    """The run stopped (too few devices, timeout, an error); ``message`` says why. Nothing was proposed."""
    MERGED = "Merged"
    """The Model holds the proposed version now (a person merged the branch)."""


@dataclass(frozen=True)
class TrainingRound:
    """One round of a training: who trained, on how many rows, and what the round's sum scored."""

    round: int
    participants: int
    samples: int
    seconds: float
    loss: float | None = None
    accuracy: float | None = None
    """Accuracy of the round's aggregate, measured by the sampled devices on their own rows (weighted)."""
    dropped: int = 0
    """Devices sampled that sent no update (dropped out mid-round)."""
    bytes_sent: int = 0
    bytes_received: int = 0
    """The round's messages, server to devices and back (serialized, before HTTP and TLS)."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"round": self.round, "participants": self.participants, "samples": self.samples,
                                "seconds": round(self.seconds, 3), "dropped": self.dropped,
                                "bytesSent": self.bytes_sent, "bytesReceived": self.bytes_received}  # fmt: skip
        if self.loss is not None:
            body["loss"] = round(self.loss, 5)
        if self.accuracy is not None:
            body["accuracy"] = round(self.accuracy, 5)
        return body

    @classmethod
    def from_json(cls, body: Any) -> TrainingRound:
        body = body if isinstance(body, Mapping) else {}
        return cls(_int(body.get("round")), _int(body.get("participants")), _int(body.get("samples")),
                   _float(body.get("seconds")), _float_or_none(body.get("loss")),
                   _float_or_none(body.get("accuracy")), _int(body.get("dropped")), _int(body.get("bytesSent")),
                   _int(body.get("bytesReceived")))  # fmt: skip


@dataclass(frozen=True)
class TrainingStatus:
    """A FederatedTraining's status file (``STATUS_PATH/trainings/NAME.yaml``)."""

    name: str
    phase: TrainingPhase = TrainingPhase.PENDING
    message: str = ""
    model: str = ""
    base_version: str = ""
    version: str = ""
    secure_aggregation: bool = True
    started: str | None = None
    finished: str | None = None
    joined: tuple[str, ...] = ()
    """Devices whose SuperNode is connected now (or was, at the end)."""
    declined: Mapping[str, str] = field(default_factory=dict)
    """Devices called that did not join, and why (no data, an artifact without the base's features)."""
    rounds: tuple[TrainingRound, ...] = ()
    branch: str | None = None
    """Where the new version waits for a pull request (Succeeded)."""
    artifact: str | None = None
    """sha256 of the new source model in the artifact store."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "FederatedTrainingStatus", "name": self.name,
                                "phase": str(self.phase), "model": self.model, "baseVersion": self.base_version,
                                "version": self.version, "secureAggregation": self.secure_aggregation}  # fmt: skip
        for key, value in (("message", self.message), ("started", self.started), ("finished", self.finished),
                           ("branch", self.branch), ("artifact", self.artifact)):  # fmt: skip
            if value:
                body[key] = value
        body["joined"] = sorted(self.joined)
        if self.declined:
            body["declined"] = dict(sorted(self.declined.items()))
        body["rounds"] = [r.to_json() for r in self.rounds]
        return body

    @classmethod
    def from_json(cls, body: Any, name: str = "") -> TrainingStatus:
        if not isinstance(body, Mapping):
            return cls(name)
        try:
            phase = TrainingPhase(str(body.get("phase")))
        except ValueError:
            phase = TrainingPhase.PENDING
        declined = body.get("declined")
        return cls(str(body.get("name") or name), phase, str(body.get("message") or ""), str(body.get("model") or ""),
                   str(body.get("baseVersion") or ""), str(body.get("version") or ""),
                   body.get("secureAggregation") is not False, _str_or_none(body.get("started")),
                   _str_or_none(body.get("finished")), tuple(str(d) for d in _list(body.get("joined"))),
                   {str(k): str(v) for k, v in (declined.items() if isinstance(declined, Mapping) else ())},
                   tuple(TrainingRound.from_json(r) for r in _list(body.get("rounds"))),
                   _str_or_none(body.get("branch")), _str_or_none(body.get("artifact")))  # fmt: skip

    def to_yaml(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_yaml(cls, data: bytes | None, name: str = "") -> TrainingStatus:
        return cls.from_json(_load(data), name)


@dataclass(frozen=True)
class StatusPaths:
    """Where each status file lives under the Fleet's ``statusPath``: the one place that spells the layout."""

    root: str = "status"

    @property
    def prefix(self) -> str:
        return self.root.rstrip("/") + "/"

    def rollout(self, name: str) -> str:
        return f"{self.prefix}rollouts/{name}.yaml"

    def group(self, name: str) -> str:
        return f"{self.prefix}groups/{name}.yaml"

    def drift(self, model: str) -> str:
        return f"{self.prefix}drift/{model}.yaml"

    def training(self, name: str) -> str:
        return f"{self.prefix}trainings/{name}.yaml"

    @property
    def controller(self) -> str:
        return f"{self.prefix}controller.yaml"

    def owns(self, path: str) -> bool:
        return path.startswith(self.prefix)


@dataclass(frozen=True)
class FleetStatus:
    """Every status file of one commit, typed; a missing file reads as an empty status."""

    paths: StatusPaths = field(default_factory=StatusPaths)
    rollouts: Mapping[str, RolloutStatus] = field(default_factory=dict)
    groups: Mapping[str, GroupStatus] = field(default_factory=dict)
    controller: ControllerStatus | None = None
    drift: Mapping[str, DriftStatus] = field(default_factory=dict)
    trainings: Mapping[str, TrainingStatus] = field(default_factory=dict)

    def rollout(self, name: str) -> RolloutStatus:
        return self.rollouts.get(name) or RolloutStatus(name)

    def group(self, name: str) -> GroupStatus:
        return self.groups.get(name) or GroupStatus(name)

    @classmethod
    def from_files(cls, files: Iterable[SourceFile], paths: StatusPaths) -> FleetStatus:
        rollouts, groups, controller, drift, trainings = {}, {}, None, {}, {}
        for file in files:
            if not paths.owns(file.path):
                continue
            inner = file.path.removeprefix(paths.prefix)
            folder, _, leaf = inner.rpartition("/")
            name = leaf.removesuffix(".yaml")
            if folder == "rollouts":
                rollouts[name] = RolloutStatus.from_yaml(file.content, name)
            elif folder == "groups":
                groups[name] = GroupStatus.from_yaml(file.content, name)
            elif folder == "drift":
                drift[name] = DriftStatus.from_yaml(file.content, name)
            elif folder == "trainings":
                trainings[name] = TrainingStatus.from_yaml(file.content, name)
            elif inner == "controller.yaml":
                controller = ControllerStatus.from_yaml(file.content)
        return cls(paths, rollouts, groups, controller, drift, trainings)


@dataclass(frozen=True)
class FleetAtCommit:
    """A fleet repo's specs and status, split where the Fleet document says (``spec.statusPath``)."""

    tree: FleetTree
    status: FleetStatus
    spec_files: tuple[SourceFile, ...]

    @property
    def revision(self) -> str:
        return spec_revision(self.spec_files)


def load_with_status(files: Iterable[SourceFile]) -> FleetAtCommit:
    """Load the specs and read the status files of one tree of files; raises ``SpecErrors`` for the specs."""
    files = list(files)
    tree = load_fleet(files)  # the loader already leaves out whatever lies under the Fleet's status path
    paths = StatusPaths(tree.fleet.spec.status_path)
    specs = tuple(f for f in files if not paths.owns(f.path))
    return FleetAtCommit(tree, FleetStatus.from_files(files, paths), specs)


def spec_revision(files: Iterable[SourceFile]) -> str:
    """A digest of spec files: status commits do not change it, so the controller's own commits never look
    like a spec change."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.path):
        digest.update(file.path.encode() + b"\0" + hashlib.sha256(file.content or b"").digest())
    return f"sha256:{digest.hexdigest()}"


def _dump(body: Mapping[str, Any]) -> bytes:
    return (HEADER + yaml.safe_dump(dict(body), sort_keys=False, default_flow_style=False)).encode()


def _load(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None


def _steps_counted_from(body: Mapping[str, Any]) -> int:
    """Steps are written counted from 1 (``step``), as ``edgectl`` and the CRD's column show them. Earlier
    controllers wrote ``currentStep`` and history steps counted from 0: a file that has ``currentStep`` and no
    ``step`` is theirs, and its steps are read as they were meant."""
    return 0 if "step" not in body and "currentStep" in body else 1


def _step_index(body: Mapping[str, Any]) -> int:
    if _steps_counted_from(body) == 0:
        return _int(body.get("currentStep"))
    return max(_int(body.get("step")) - 1, 0)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _float_or_none(value: Any) -> float | None:
    return None if value is None else _float(value)


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []
