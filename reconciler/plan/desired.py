"""Desired state: for every device and model, the version and artifact it should run.

Pure (no I/O): specs, an inventory of devices (name + labels), where each rollout stands, and the
artifacts known to exist go in; a :class:`Plan` comes out. Who calls it: the controller on every reconcile,
``edgectl plan`` for pull requests, and benchmarks (100,000 devices must plan well under a second).

Rules:

- a device's hardware profile is the one profile whose selector matches its labels (none or several: a
  plan problem for that device, which then gets nothing new);
- a rollout targets the devices of its groups; a targeted device is *in* the rollout when its bucket is
  below the rollout's current percent. The bucket is a stable hash of rollout name and device name in
  [0, 100): the same device always lands in the same place, so raising the percent only adds devices, and
  the result does not depend on the order of the inventory;
- a device in a rollout wants the rollout's version; a targeted device not (yet) in it, one whose labels do
  not satisfy the rollout's ``conditions`` (e.g. a metered link), or every device of an aborted rollout,
  wants the rollout's *stable* version (what the fleet ran before);
- two active rollouts that claim the same device for the same model: a plan problem for the device (the
  spec cross-check already refuses overlapping groups; labels can still overlap at run time);
- a device of a lab group (``role: lab``) is never rolled out to: every active rollout whose model has a recipe
  for its profile gives it the new version in benchmark mode (measured, never served), whatever the position.
  While a rollout waits for its lab (``RolloutPosition.lab_hold``), no fleet device is in it.

Selectors are evaluated once per distinct combination of the label values any selector reads, not once
per device: fleets have many devices and few distinct label combinations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from reconciler.api import FleetTree
from reconciler.api.types import LabelSelector

from .window import Window, window_for

BUCKETS = 10_000
"""Percent resolution: buckets of 0.01 %."""


@dataclass(frozen=True)
class Device:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class RolloutPosition:
    """Where a rollout stands: its current cumulative percent and the version the fleet falls back to."""

    percent: int
    stable_version: str | None = None
    aborted: bool = False
    group: int = 0
    """With ``groupStrategy: Sequential``: the group whose devices ``percent`` applies to (earlier groups are done,
    later ones not started)."""
    lab_hold: bool = False
    """The rollout waits for its lab devices' benchmarks: no fleet device is in it yet (ignored when none of its
    devices' profiles has a lab device)."""


@dataclass(frozen=True)
class Desired:
    """What one device should run for one model, and why."""

    device: str
    model: str
    version: str
    profile: str
    rollout: str
    artifact: str | None
    """Artifact id when the build exists; None while it is being built (the device waits)."""
    in_rollout: bool
    """True: the rollout's new version; False: its stable version."""
    window: Window | None = None
    """When the device may switch (in its own time zone); None: any time. It may download before."""
    trial: Trial | None = None
    """How the device tries the version after switching; None: the agent's default."""
    benchmark: bool = False
    """A lab device: download, verify and benchmark the version, report the figures, never serve it."""
    debug: Debug | None = None
    """A temporary log level for the device's agent (a DebugSession); None: its own."""
    capture: CaptureSettings | None = None
    """Sampled input capture of this model (its ``monitoring.capture``); None: nothing is kept."""
    training: TrainingCall | None = None
    """A federated training this device may take part in with the version it runs; None: none."""


@dataclass(frozen=True)
class TrainingCall:
    """A FederatedTraining as the device reads it from its assignment: where the SuperLink listens and where the
    device's labeled rows are. The device joins (starts a SuperNode) only with enough rows and the base version
    serving; what each round trains comes from the training's server."""

    name: str
    superlink: str
    """host:port of the SuperLink's Fleet API (TLS, verified against the fleet CA); empty: the device API's own
    address, which passes the Fleet API through."""
    data: str
    """``local`` or ``capture``."""
    path: str
    min_samples: int
    trainer: str = "head"

    def to_json(self) -> dict:
        return {"name": self.name, "superlink": self.superlink, "data": self.data, "path": self.path,
                "minSamples": self.min_samples, "trainer": self.trainer}  # fmt: skip

    @classmethod
    def from_json(cls, body: Mapping | None) -> TrainingCall | None:
        if not isinstance(body, Mapping) or not body.get("name"):
            return None
        return cls(str(body["name"]), str(body["superlink"]), str(body.get("data") or "local"),
                   str(body.get("path") or ""), int(body.get("minSamples") or 1),
                   str(body.get("trainer") or "head"))  # fmt: skip


def training_calls(tree: FleetTree, desired: Mapping[tuple[str, str], Desired], labels: Mapping[str, Mapping[str, str]],
                   running: Mapping[str, str]) -> dict[tuple[str, str], TrainingCall]:  # fmt: skip
    """(device, model) -> the running training it is called to: fleet devices (not lab ones) of the training's
    groups whose assignment is the base version. ``running``: training name -> the SuperLink's address (empty:
    through the device API)."""
    found: dict[tuple[str, str], TrainingCall] = {}
    for name, address in sorted(running.items()):
        training = tree.trainings.get(name)
        if training is None:
            continue
        spec = training.spec
        selectors = [tree.groups[g].spec.selector for g in spec.groups if g in tree.groups]
        call = TrainingCall(name, address, spec.data.source, spec.data.path, spec.data.min_samples, spec.trainer)
        for (device, model), target in desired.items():
            if model != spec.model or target.version != spec.base_version or target.benchmark:
                continue
            if (device, model) not in found and any(s.matches(labels.get(device, {})) for s in selectors):
                found[(device, model)] = call
    return found


@dataclass(frozen=True)
class CaptureSettings:
    """A model's input capture, as the device reads it from its assignment."""

    rate: float
    max_bytes: int
    redaction: str = "none"

    def to_json(self) -> dict:
        return {"rate": self.rate, "maxBytes": self.max_bytes, "redaction": self.redaction}

    @classmethod
    def from_json(cls, body: Mapping | None) -> CaptureSettings | None:
        if not isinstance(body, Mapping) or not body.get("rate"):
            return None
        return cls(float(body["rate"]), int(body.get("maxBytes") or 0), str(body.get("redaction") or "none"))


@dataclass(frozen=True)
class Debug:
    """A log level the agent takes until a moment (RFC 3339), then drops by its own clock."""

    level: str
    until: str

    def to_json(self) -> dict:
        return {"level": self.level, "until": self.until}

    @classmethod
    def from_json(cls, body: Mapping | None) -> Debug | None:
        if not isinstance(body, Mapping) or not body.get("level") or not body.get("until"):
            return None
        return cls(str(body["level"]), str(body["until"]))


@dataclass(frozen=True)
class Trial:
    """A rollout's trial policy, as the device reads it from its assignment."""

    seconds: int | None = None
    """None: the device's own default."""
    requests: int | None = None
    max_error_rate: float | None = None

    def to_json(self) -> dict:
        body: dict = {} if self.seconds is None else {"seconds": self.seconds}
        if self.requests is not None:
            body["requests"] = self.requests
        if self.max_error_rate is not None:
            body["maxErrorRate"] = self.max_error_rate
        return body

    @classmethod
    def from_json(cls, body: Mapping | None) -> Trial | None:
        if not body:
            return None
        rate, seconds = body.get("maxErrorRate"), body.get("seconds")
        return cls(int(seconds) if seconds is not None else None, body.get("requests"),
                   float(rate) if rate is not None else None)  # fmt: skip


@dataclass(frozen=True)
class PlanProblem:
    device: str
    message: str
    model: str | None = None


@dataclass
class Plan:
    desired: dict[tuple[str, str], Desired] = field(default_factory=dict)
    """(device, model) -> what it should run."""
    problems: list[PlanProblem] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    """device -> hardware profile, for devices with exactly one."""
    groups: dict[tuple[str, str], int] = field(default_factory=dict)
    """(device, rollout) -> the index of the rollout's group the device belongs to (Sequential rollouts only)."""
    lab_busy: dict[str, int] = field(default_factory=dict)
    """rollout -> its lab devices that benchmark another rollout of the same model now (it waits for them)."""
    delivered: dict[str, set[str]] = field(default_factory=dict)
    """rollout -> the profiles of the fleet devices it targets (what its lab, or its build, must speak for)."""

    def for_rollout(self, rollout: str) -> list[Desired]:
        """The fleet devices a rollout targets (its lab devices are :meth:`lab_for`)."""
        return [d for d in self.desired.values() if d.rollout == rollout and not d.benchmark]

    def lab_for(self, rollout: str) -> list[Desired]:
        """The lab devices that benchmark a rollout's new version."""
        return [d for d in self.desired.values() if d.rollout == rollout and d.benchmark]


def bucket(rollout: str, device: str) -> int:
    """Stable bucket in [0, BUCKETS): a device is in a rollout at ``percent`` when bucket < percent * 100."""
    digest = hashlib.blake2b(f"{rollout}\x00{device}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class _Target:
    """One active rollout, flattened for the per-device loop (what does not depend on where it stands)."""

    name: str
    model: str
    version: str
    groups: tuple[LabelSelector, ...]
    recipes: frozenset[str]
    window: Any
    conditions: LabelSelector | None
    trial: Trial | None = None
    sequential: bool = False
    capture: CaptureSettings | None = None

    def selectors(self) -> list[LabelSelector]:
        return [*self.groups, *([self.conditions] if self.conditions is not None else [])]


class _Candidate(NamedTuple):
    """A device that a rollout targets and can serve (one profile, a recipe for it, no rival rollout). A tuple:
    a fleet has one per device and rollout, and tuples are built several times faster than frozen dataclasses."""

    device: str
    profile: str
    target: _Target
    bucket: int
    """The device's stable bucket, or ``BUCKETS`` (never inside) when its labels fail the rollout's conditions."""
    window: Window | None
    group: int = 0
    """Index of the first of the rollout's groups the device belongs to (what Sequential goes by)."""


@dataclass(frozen=True)
class Targeting:
    """Which rollout targets which device: the part of a plan that does not depend on where rollouts stand.

    Matching selectors against every device is the expensive part of planning; the position of each rollout
    only decides, per candidate, between its new and its stable version. A controller cycle computes the
    targeting once and derives the plan before and after its rollout decisions from it (:meth:`at`).
    """

    candidates: tuple[_Candidate, ...]
    problems: tuple[PlanProblem, ...]
    profiles: Mapping[str, str]
    steps: Mapping[str, int]
    """rollout -> its first step's percent, the position of a rollout nobody placed."""
    lab: tuple[_Candidate, ...] = ()
    """Lab devices, once per rollout that delivers to devices of their profile."""
    debug: Mapping[str, Debug] = field(default_factory=dict)
    """device -> the log level a DebugSession gives it (the session that ends last)."""

    def has_lab(self, rollout: str) -> bool:
        return any(c.target.name == rollout for c in self.lab)

    def at(
        self,
        positions: Mapping[str, RolloutPosition] | None = None,
        artifacts: Mapping[tuple[str, str, str], str] | None = None,
    ) -> Plan:
        """The plan with each rollout at ``positions`` (default: its first step, no stable version).

        ``artifacts``: (model, version, profile) -> artifact id of a finished build.
        """
        positions = positions or {}
        artifacts = artifacts or {}
        placed = {name: positions.get(name) or RolloutPosition(first) for name, first in self.steps.items()}
        held = {n for n, p in placed.items() if p.lab_hold and self.has_lab(n)}
        thresholds = {n: 0 if p.aborted or n in held else p.percent * (BUCKETS // 100) for n, p in placed.items()}
        result = Plan(problems=list(self.problems), profiles=dict(self.profiles))
        desired = result.desired
        # One benchmark per lab device and model at a time: a rollout waiting for its lab goes first (by name).
        lab = sorted((c for c in self.lab if not placed[c.target.name].aborted),
                     key=lambda c: (c.device, c.target.model, c.target.name not in held, c.target.name))  # fmt: skip
        for device, profile, target, _, _, _ in lab:
            if (device, target.model) in desired:
                result.lab_busy[target.name] = result.lab_busy.get(target.name, 0) + 1
                continue
            desired[(device, target.model)] = Desired(
                device, target.model, target.version, profile, target.name,
                artifacts.get((target.model, target.version, profile)), False, benchmark=True,
                debug=self.debug.get(device),
            )  # fmt: skip
        for device, profile, target, slot, window, group in self.candidates:
            result.delivered.setdefault(target.name, set()).add(profile)
            inside = slot < thresholds[target.name]
            if target.sequential:
                result.groups[(device, target.name)] = group
                if not placed[target.name].aborted and group != placed[target.name].group:
                    inside = group < placed[target.name].group and slot < BUCKETS  # earlier done, later waiting
            wanted = target.version if inside else placed[target.name].stable_version
            if wanted is None:
                continue  # not reached yet, and nothing ran before: leave the device alone
            desired[(device, target.model)] = Desired(
                device, target.model, wanted, profile, target.name, artifacts.get((target.model, wanted, profile)),
                inside, window, target.trial, debug=self.debug.get(device), capture=target.capture,
            )  # fmt: skip
        return result


def plan(
    tree: FleetTree,
    devices: Iterable[Device],
    positions: Mapping[str, RolloutPosition] | None = None,
    artifacts: Mapping[tuple[str, str, str], str] | None = None,
) -> Plan:
    """Desired state of every device for every model an active rollout delivers.

    ``positions``: rollout name -> where it stands (default: its first step, no stable version).
    ``artifacts``: (model, version, profile) -> artifact id of a finished build.
    """
    return targeting(tree, devices).at(positions, artifacts)


def targeting(tree: FleetTree, devices: Iterable[Device]) -> Targeting:
    """Match every device against the profiles and the active rollouts' groups and conditions, once."""
    devices = devices if isinstance(devices, list | tuple) else list(devices)
    targets: list[_Target] = []
    steps: dict[str, int] = {}
    for name, rollout in sorted(tree.rollouts.items()):
        if not rollout.active:
            continue
        spec = rollout.spec
        model = tree.models.get(spec.model)
        groups = tuple(tree.groups[g].spec.selector for g in spec.groups if g in tree.groups)
        recipes = frozenset(r.profile for r in model.spec.recipes) if model else frozenset()
        trial = None
        if spec.trial is not None or spec.analysis.max_error_rate is not None:
            seconds = int(spec.trial.duration.total_seconds()) if spec.trial is not None else None
            trial = Trial(seconds, spec.trial.requests if spec.trial else None, spec.analysis.max_error_rate)
        capture = model.spec.monitoring.capture if model else None
        settings = CaptureSettings(capture.rate, int(capture.max_bytes), capture.redaction) if capture else None
        targets.append(_Target(name, spec.model, spec.version, groups, recipes, spec.maintenance_window,
                               spec.conditions, trial, spec.group_strategy == "Sequential", settings))  # fmt: skip
        steps[name] = spec.steps[0].percent
    profiles = sorted(tree.profiles.items())
    labs = [g.spec.selector for _, g in sorted(tree.groups.items()) if g.spec.role == "lab"]
    # Every selector reads a few label keys; devices that agree on those keys get the same answers.
    keys = sorted(
        {k for _, p in profiles for k in _keys(p.spec.selector)}
        | {k for t in targets for selector in t.selectors() for k in _keys(selector)}
        | {k for selector in labs for k in _keys(selector)}
    )
    memo: dict[tuple[str | None, ...], tuple[list[str], list[_Target], set[str], bool, dict[str, int]]] = {}
    lab_devices: list[tuple[str, str]] = []
    claimed: dict[tuple[str, str], str] = {}
    candidates: list[_Candidate] = []
    problems: list[PlanProblem] = []
    device_profiles: dict[str, str] = {}

    for device in devices:
        labels = device.labels
        signature = tuple(map(labels.get, keys))
        entry = memo.get(signature)
        if entry is None:
            matched = [name for name, p in profiles if p.spec.selector.matches(labels)]
            targeting = [t for t in targets if any(g.matches(labels) for g in t.groups)]
            allowed = {t.name for t in targeting if t.conditions is None or t.conditions.matches(labels)}
            lab = any(selector.matches(labels) for selector in labs)
            groups = {t.name: next(i for i, selector in enumerate(t.groups) if selector.matches(labels))
                      for t in targeting}  # fmt: skip
            entry = memo[signature] = (matched, [] if lab else targeting, allowed, lab, groups)
        matched, targeting, allowed, lab, groups = entry
        if len(matched) != 1:
            if targeting or lab:
                what = "no device profile matches" if not matched else f"several profiles match ({', '.join(matched)})"
                problems.append(PlanProblem(device.name, f"{what} its labels"))
            continue
        profile = matched[0]
        arch, built_for = labels.get(ARCH_LABEL), tree.profiles[profile].spec.arch
        if arch is not None and arch != built_for:
            # A build for another CPU does not even load: say so before an artifact is sent to fail there.
            if targeting or lab:
                message = f"its {ARCH_LABEL} is {arch}, but profile {profile} builds for {built_for}"
                problems.append(PlanProblem(device.name, message))
            continue
        device_profiles[device.name] = profile
        if lab:
            lab_devices.append((device.name, profile))
        for target in targeting:
            key = (device.name, target.model)
            first = claimed.setdefault(key, target.name)
            if first != target.name:
                problems.append(
                    PlanProblem(device.name, f"rollouts {first} and {target.name} both target it", target.model)
                )
                continue
            if profile not in target.recipes:
                message = f"model {target.model} has no recipe for {profile}"
                problems.append(PlanProblem(device.name, message, target.model))
                continue
            window = window_for(target.window, labels) if target.window is not None else None
            slot = bucket(target.name, device.name) if target.name in allowed else BUCKETS
            candidates.append(_Candidate(device.name, profile, target, slot, window, groups[target.name]))
    # A lab device benchmarks the rollouts that deliver to devices of its profile.
    delivered = {(c.target.name, c.profile) for c in candidates}
    lab_candidates = [_Candidate(device, profile, target, BUCKETS, None) for device, profile in lab_devices
                      for target in targets if (target.name, profile) in delivered]  # fmt: skip
    return Targeting(tuple(candidates), tuple(problems), device_profiles, steps, tuple(lab_candidates),
                     debug_levels(tree, devices))  # fmt: skip


def debug_levels(tree: FleetTree, devices: Iterable[Device]) -> dict[str, Debug]:
    """device -> the DebugSession that names it and ends last (sessions are few: a person's)."""
    found: dict[str, Debug] = {}
    sessions = sorted((d.spec for d in tree.debug.values()), key=lambda s: s.until)
    if not sessions:
        return found
    for device in devices:
        for session in sessions:  # the one ending last wins
            if session.selector.matches(device.labels):
                found[device.name] = Debug(session.level, session.until.isoformat().replace("+00:00", "Z"))
    return found


ARCH_LABEL = "kubernetes.io/arch"
"""The Node label (K3s sets it) a device's CPU architecture is read from, against its profile's ``arch``."""


def _keys(selector: LabelSelector) -> set[str]:
    return selector.keys()
