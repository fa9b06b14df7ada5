"""What merging a pull request would do to the fleet: the review behind ``edgectl plan``.

Pure (no I/O): the base and head spec trees, the device inventory, where each rollout stands (from the
status files at the base, as the controller would continue), and what the build store holds come in; a
:class:`Review` comes out, which the CLI renders as Markdown for a PR comment, JSON or text.

It answers the questions a reviewer of a fleet change asks, in this order: which documents changed; how
many devices change what they run the moment this merges; for every rollout, how many devices run the new
and the stable version at each step, per group; which artifacts must be built and whether the cached builds
of the same model suggest the profile's limits will hold; and what looks risky (no canary, no gates, no
automatic rollback, a changed trust policy).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.api import FleetTree
from reconciler.api.types import format_duration

from .desired import Device, Plan, RolloutPosition, plan, targeting

ArtifactKey = tuple[str, str, str]


@dataclass(frozen=True)
class StepImpact:
    step: int
    percent: int
    on_new: int
    on_stable: int
    pause: str | None
    done_at: str | None = None
    """The step's successThreshold (e.g. 95%): done once that share is Healthy."""
    without: int = 0
    """Targeted devices given neither version at this step (no stable version to keep them on): with ``on_new``
    and ``on_stable`` they add up to the rollout's targeted devices."""


@dataclass
class RolloutReview:
    name: str
    model: str
    version: str
    base_version: str | None
    change: str
    """added, version, modified, unchanged (head rollouts), removed."""
    stable: str | None
    starts_at: int
    """The step the controller continues from after the merge (0 for a new version)."""
    groups: dict[str, int]
    """Group -> devices of that group the rollout targets."""
    targeted: int
    steps: list[StepImpact] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pacing: str | None = None
    """``maxConcurrent`` and ``rate`` in words: how fast devices take the new version within a step."""
    lab: int = 0
    """Lab devices that benchmark the version before its first step (they never run it)."""


@dataclass(frozen=True)
class ArtifactNeed:
    model: str
    version: str
    profile: str
    devices: int
    built: bool
    estimate: str
    """From this build or the cached build of another version of the model on the profile."""
    within_limits: bool | None
    """None: nothing to judge from."""


@dataclass(frozen=True)
class NewVersion:
    model: str
    version: str
    origin: str
    """Its lineage in a line (a federated training's rounds, devices and rows; a dataset; a commit)."""
    delivered: bool
    """A rollout of the head delivers it."""


@dataclass
class Review:
    documents: list[tuple[str, str]] = field(default_factory=list)
    """(Kind/name, added|modified|removed)."""
    transitions: Counter = field(default_factory=Counter)
    """(model, from version or None, to version or None) -> devices, right after the merge."""
    rollouts: list[RolloutReview] = field(default_factory=list)
    artifacts: list[ArtifactNeed] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    devices: int = 0
    versions: list[NewVersion] = field(default_factory=list)
    """Model versions the change adds, with where they came from."""

    @property
    def changes(self) -> bool:
        return bool(self.documents or self.transitions)


def review(
    base: FleetTree | None,
    head: FleetTree,
    devices: Iterable[Device],
    base_positions: Mapping[str, RolloutPosition],
    head_positions: Mapping[str, RolloutPosition],
    head_steps: Mapping[str, int],
    base_versions: Mapping[str, str],
    builds: Mapping[ArtifactKey, Mapping[str, Any]],
) -> Review:
    """``head_steps``: rollout -> the step the controller continues from; ``base_versions``: rollout -> the
    version its status file reports; ``builds``: (model, version, profile) -> the cached build's benchmark."""
    devices = list(devices)
    result = Review(devices=len(devices))
    result.documents = _documents(base, head)
    result.versions = _new_versions(base, head)
    before = plan(base, devices, base_positions) if base is not None else Plan()
    # The head is planned at every step of every rollout: match selectors once, place rollouts many times.
    head_targets = targeting(head, devices)
    after = head_targets.at(head_positions)
    for key in sorted(set(before.desired) | set(after.desired)):
        old, new = before.desired.get(key), after.desired.get(key)
        if (old is not None and old.benchmark) or (new is not None and new.benchmark):
            continue  # a lab device measures the version: it runs what it ran
        old_version, new_version = (old.version if old else None), (new.version if new else None)
        if old_version != new_version:
            result.transitions[(key[1], old_version, new_version)] += 1
    result.problems = sorted({f"{p.device}: {p.message}" for p in after.problems})
    result.warnings += _transition_warnings(result.transitions)
    needs: Counter[ArtifactKey] = Counter()
    labels = {d.name: d.labels for d in devices}
    for name, rollout in sorted(head.rollouts.items()):
        spec = rollout.spec
        position = head_positions.get(name, RolloutPosition(spec.steps[0].percent))
        base_rollout = base.rollouts.get(name) if base is not None else None
        change = _change(base_rollout, rollout)
        item = RolloutReview(name, spec.model, spec.version, base_versions.get(name) or (
            base_rollout.spec.version if base_rollout else None), change, position.stable_version,
            head_steps.get(name, 0), {}, 0)  # fmt: skip
        # Targeted: every device the rollout reaches at 100 %, whatever step it stands at now.
        mine = head_targets.at({**head_positions, name: RolloutPosition(100, position.stable_version)}).for_rollout(
            name
        )
        item.targeted = len(mine)
        item.lab = len(after.lab_for(name))
        for group in spec.groups:
            if group in head.groups:
                selector = head.groups[group].spec.selector
                item.groups[group] = sum(1 for d in mine if selector.matches(labels.get(d.device, {})))
        if rollout.active:
            # Sequential: the steps of the group the rollout walks now, then every device at the end (artifacts).
            walks = [RolloutPosition(step.percent, position.stable_version, group=position.group)
                     for step in spec.steps]  # fmt: skip
            if spec.group_strategy == "Sequential" and len(spec.groups) > 1:
                walks.append(RolloutPosition(100, position.stable_version, group=len(spec.groups) - 1))
            for index, walk in enumerate(walks):
                at_step = head_targets.at({**head_positions, name: walk}).for_rollout(name)
                if index >= len(spec.steps):  # the end of the last group: only what it needs
                    _count_needs(needs, at_step, after.profiles)
                    continue
                step = spec.steps[index]
                new = sum(1 for d in at_step if d.in_rollout)
                pause = None
                if step.pause is not None:
                    pause = "until promoted" if step.pause.duration is None else format_duration(step.pause.duration)
                item.steps.append(StepImpact(index, step.percent, new, len(at_step) - new, pause,
                                             step.success_threshold, item.targeted - len(at_step)))  # fmt: skip
                _count_needs(needs, at_step, after.profiles)
        item.warnings = _rollout_warnings(head, name, item)
        item.pacing = _pacing(spec)
        result.rollouts.append(item)
    if base is not None:
        for name in sorted(set(base.rollouts) - set(head.rollouts)):
            old = base.rollouts[name].spec
            result.rollouts.append(RolloutReview(name, old.model, old.version, old.version, "removed", None, 0, {}, 0))
    result.artifacts = [_artifact(head, key, count, builds) for key, count in sorted(needs.items())]
    if base is not None and base.fleet.spec.trust != head.fleet.spec.trust:
        result.warnings.append("the trust policy (Fleet spec.trust) changes: review who may release which models")
    return result


def _transition_warnings(transitions: Mapping[tuple[str, str | None, str | None], int]) -> list[str]:
    """What a reviewer must not miss among the changes on merge: devices that lose a model they run, and
    devices sent back to an older version."""
    lost: Counter[str] = Counter()
    back: Counter[tuple[str, str, str]] = Counter()
    for (model, old, new), count in transitions.items():
        if old is not None and new is None:
            lost[model] += count
        elif old is not None and new is not None and version_key(new) < version_key(old):
            back[(model, old, new)] += count
    warnings = [f"{n} device(s) lose {model}: nothing of it is assigned to them after the merge (they stop "
                f"serving it)" for model, n in sorted(lost.items())]  # fmt: skip
    for (model, old, new), n in sorted(back.items()):
        warnings.append(f"{n} device(s) move back from {model} {old} to {new}")
    return warnings


def version_key(version: str) -> tuple:
    """Dotted versions compare by their numbers (1.10.0 after 1.9.0); anything else as text, after numbers."""
    parts = version.split(".")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _count_needs(needs: Counter[ArtifactKey], at_step: list, profiles: Mapping[str, str]) -> None:
    """An artifact is needed by as many devices as run it at the busiest step."""
    running = Counter((d.model, d.version, profiles[d.device]) for d in at_step if d.device in profiles)
    for key, count in running.items():
        needs[key] = max(needs[key], count)


def _new_versions(base: FleetTree | None, head: FleetTree) -> list[NewVersion]:
    found = []
    for name, model in sorted(head.models.items()):
        old = base.models.get(name) if base is not None else None
        for version in model.spec.versions:
            if old is not None and old.version(version.version) is not None:
                continue
            lineage, federated = version.lineage, version.lineage.federated
            if federated is not None:
                measured = lineage.metrics.get("federatedAccuracy")
                secure = "on" if federated.secure_aggregation else "off"
                origin = (f"federated training {federated.training} from {federated.base_version}: {federated.rounds} "
                          f"round(s), {federated.participants} device(s), {federated.samples} labeled rows on them, "
                          f"secure aggregation {secure}")  # fmt: skip
                if measured is not None:
                    origin += f"; accuracy {measured:.3f} as the devices measured it"
            else:
                parts = (lineage.dataset and f"dataset {lineage.dataset}", lineage.git_commit and
                         f"commit {lineage.git_commit}")  # fmt: skip
                origin = ", ".join(part for part in parts if part)
            rollouts = head.rollouts.values()
            delivered = any(r.spec.model == name and r.spec.version == version.version for r in rollouts)
            found.append(NewVersion(name, version.version, origin or "no lineage", delivered))
    return found


def _documents(base: FleetTree | None, head: FleetTree) -> list[tuple[str, str]]:
    def index(tree: FleetTree | None) -> dict[str, Any]:
        if tree is None:
            return {}
        found: dict[str, Any] = {}
        for kind, items in (("DeviceProfile", tree.profiles), ("DeviceGroup", tree.groups), ("Model", tree.models),
                            ("Rollout", tree.rollouts), ("FederatedTraining", tree.trainings)):  # fmt: skip
            for name, document in items.items():
                found[f"{kind}/{name}"] = document.model_dump(mode="json", exclude={"source"})
        found[f"Fleet/{tree.fleet.metadata.name}"] = tree.fleet.model_dump(mode="json", exclude={"source"})
        return found

    old, new = index(base), index(head)
    changed = [(key, "added") for key in new if key not in old]
    changed += [(key, "removed") for key in old if key not in new]
    changed += [(key, "modified") for key in new if key in old and old[key] != new[key]]
    return sorted(changed)


def _change(base, head) -> str:
    if base is None:
        return "added"
    if base.spec.version != head.spec.version or base.spec.model != head.spec.model:
        return "version"
    if base.model_dump(mode="json", exclude={"source"}) != head.model_dump(mode="json", exclude={"source"}):
        return "modified"
    return "unchanged"


def _pacing(spec) -> str | None:
    parts = []
    if spec.max_concurrent is not None:
        parts.append(f"at most {spec.max_concurrent} device(s) taking it at once")
    if spec.rate is not None:
        rate = spec.rate
        grows = f", x{rate.growth_factor:g} for every {rate.grow_every} Healthy" if rate.growth_factor > 1 else ""
        cap = f" up to {rate.max_per_minute}" if rate.max_per_minute else ""
        parts.append(f"{rate.per_minute} started a minute{grows}{cap}")
    return "; ".join(parts) or None


def _rollout_warnings(tree: FleetTree, name: str, item: RolloutReview) -> list[str]:
    spec = tree.rollouts[name].spec
    warnings = []
    if spec.steps[0].percent == 100:
        warnings.append("goes to 100% in one step: no canary step")
    elif spec.steps[0].percent > 25:
        warnings.append(f"the first step already reaches {spec.steps[0].percent}% of the targeted devices")
    analysis = spec.analysis
    if all(
        v is None
        for v in (
            analysis.max_error_rate,
            analysis.max_latency_regression,
            analysis.max_drift_psi,
            analysis.max_drift_ks,
        )
    ):
        warnings.append("no telemetry gates (error rate, latency regression, drift): only device health checks "
                        "can stop it")  # fmt: skip
    if spec.group_strategy == "Sequential" and len(spec.groups) > 1:
        warnings.append("groups one after the other: the steps shown are those of the group it walks now; each "
                        "next group walks them once the one before succeeded")  # fmt: skip
    if not spec.rollback.automatic:
        warnings.append("automatic rollback is off: a failing gate holds the rollout for a person (abort or promote)")
    if item.targeted == 0 and tree.rollouts[name].active:
        warnings.append("selects no devices of the inventory")
    if spec.steps[0].percent < 100 and item.steps and item.steps[0].on_new == 0 and item.targeted:
        warnings.append(f"the first step ({spec.steps[0].percent}%) selects no device: the canary is empty")
    return warnings


def _artifact(tree: FleetTree, key: ArtifactKey, devices: int, builds: Mapping[ArtifactKey, Mapping]) -> ArtifactNeed:
    model, version, profile = key
    built = key in builds
    reference = builds.get(key)
    source = version
    if reference is None:  # the cached build of the nearest other version of this model for this profile
        others = sorted((k for k in builds if k[0] == model and k[2] == profile), key=lambda k: k[1])
        if others:
            reference, source = builds[others[-1]], others[-1][1]
    if reference is None or profile not in tree.profiles:
        return ArtifactNeed(model, version, profile, devices, built, "no cached build to judge from", None)
    limits = tree.profiles[profile].spec.limits
    size, latency = reference.get("sizeBytes"), reference.get("latencyP95Ms")
    over = []
    if limits.max_model_size is not None and size is not None and size > limits.max_model_size:
        over.append(f"size {size} B > {limits.max_model_size} B")
    limit_ms = limits.max_latency_p95.total_seconds() * 1000 if limits.max_latency_p95 is not None else None
    if limit_ms is not None and latency is not None and latency > limit_ms:
        over.append(f"p95 {latency:.2g} ms > {limit_ms:.0f} ms")
    shown = []
    if size is not None:
        shown.append(f"{size / 1024:.0f} KiB")
    if latency is not None:
        shown.append(f"p95 {latency:.2g} ms" + (f" of {limit_ms:.0f} ms" if limit_ms else ""))
    basis = "built" if built else f"estimate from {source}"
    text = f"{basis}: {', '.join(shown)}" + (f"; over the limit: {'; '.join(over)}" if over else "")
    return ArtifactNeed(model, version, profile, devices, built, text, not over)
