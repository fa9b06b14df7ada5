"""``Rollout``: which model version goes to which groups, in which steps, under which health gates.

Pure (no I/O). Steps are cumulative percentages of the targeted devices (like Argo Rollouts' weights);
device selection per step is a stable hash, so the spec only carries the numbers. Analysis thresholds
left out here get the defaults of the rollout engine, documented in docs/.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from .document import Document, Problem
from .types import Duration, Fraction, LabelKey, LabelSelector, Name, Quantity, QuotedStr, SpecModel

_PERCENT_RE = re.compile(r"^(100|[1-9]?[0-9])%$")


def _int_or_percent(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("int_or_percent", "must be a device count (e.g. 2) or a percentage (e.g. 10%)")
    if isinstance(value, int):
        if value < 0:
            raise PydanticCustomError("int_or_percent", "must not be negative")
        return value
    if not _PERCENT_RE.match(value):
        raise PydanticCustomError(
            "int_or_percent", "invalid value '{value}': use a count (2) or a percentage (10%)", {"value": value}
        )
    return value


def _percent_only(value: Any) -> Any:
    if not isinstance(value, str) or not _PERCENT_RE.match(value) or value == "0%":
        raise PydanticCustomError("percent", "must be a percentage from 1% to 100% (e.g. 95%)")
    return value


IntOrPercent = Annotated[
    int | str,
    BeforeValidator(_int_or_percent),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _PERCENT_RE.pattern}]}),
]
"""A device count or a percentage of the step's devices, as Kubernetes' maxUnavailable."""

Percent = Annotated[
    str, BeforeValidator(_percent_only), WithJsonSchema({"type": "string", "pattern": _PERCENT_RE.pattern})
]
"""A share of the step's devices, 1% to 100%."""


class Pause(SpecModel):
    """Wait after a step: for ``duration``, or until a person resumes when it is omitted (``pause: {}``)."""

    duration: Duration | None = None


class Step(SpecModel):
    """One step: the cumulative share of targeted devices that runs the new version."""

    percent: int = Field(ge=1, le=100)
    pause: Pause | None = None
    success_threshold: Percent | None = None
    """The step is done once this share of its devices is Healthy on the new version (e.g. 95%), gates passing:
    a few slow devices do not hold it. Unset: every device Healthy or within maxUnavailable."""


Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_CLOCK_RE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _check_clock(value: Any) -> Any:
    if isinstance(value, str) and not _CLOCK_RE.match(value):
        raise PydanticCustomError("clock", "must be a time of day as HH:MM (e.g. 02:30)")
    return value


ClockTime = Annotated[
    QuotedStr,
    BeforeValidator(_check_clock),
    WithJsonSchema({"type": "string", "pattern": _CLOCK_RE.pattern}),
]


class MaintenanceWindow(SpecModel):
    """When devices may switch versions, in each device's local time."""

    days: list[Weekday] = Field(default_factory=lambda: ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
    start: ClockTime
    """Start of the window, HH:MM local time."""
    end: ClockTime
    """End of the window, HH:MM local time; earlier than start means the window crosses midnight."""
    timezone: QuotedStr = "UTC"
    """IANA time zone for devices without the timezone label."""
    timezone_label: LabelKey = "edgereconciler.io/timezone"
    """Node label that holds a device's own IANA time zone."""


class LabGates(SpecModel):
    """Gates on the lab devices' benchmark of the new version, judged before the first step; a figure over its limit
    stalls the rollout (Paused, LabFailed) with the figures, before any device of the fleet gets the version."""

    max_latency_p95: Duration | None = None
    """p95 latency of one inference on a lab device. Unset: the profile's ``limits.maxLatencyP95``."""
    max_memory: Quantity | None = None
    """Memory the model took on a lab device (peak resident). Unset: the profile's ``limits.maxMemory``."""
    max_temperature: float | None = Field(default=None, gt=0)
    """Highest temperature in degrees Celsius a lab device's hwmon sensors read during the benchmark."""
    max_power: float | None = Field(default=None, gt=0)
    """Mean power in watts a lab device's power sensors (INA2xx, hwmon power) read during the benchmark."""


class Analysis(SpecModel):
    """Health gates evaluated at every step; omitted thresholds take the engine's defaults."""

    max_failure_rate: Fraction | None = None
    """Devices that failed download/verify/install/health check, over devices in the step."""
    max_error_rate: Fraction | None = None
    """Inference errors over requests, from telemetry."""
    max_latency_regression: float | None = Field(default=None, ge=0)
    """Allowed rise of p95 latency against the previous version on the same profile, in percent."""
    max_drift_ks: float | None = Field(default=None, gt=0, le=1, alias="maxDriftKS")
    """Largest Kolmogorov-Smirnov distance of the new version's outputs (score, margin, or a regressor's output)
    from the previous version's, over ``window``, read from the devices' merged sketches. Only a distance past the
    threshold for its sample sizes counts (the model's ``monitoring.drift.falseAlarmRate``): few reports never
    fail the gate on noise. The successor of ``maxDriftPSI``."""
    max_drift_psi: float | None = Field(default=None, ge=0, alias="maxDriftPSI")
    """Largest population stability index of predicted classes against the previous version (counts on fixed
    bins, blind to sample size: prefer ``maxDriftKS``)."""
    min_devices_reporting: int | None = Field(default=None, ge=1)
    """Fewer reports than this make a gate Inconclusive, which holds the step."""
    failure_limit: int | None = Field(default=None, ge=0)
    """Consecutive failed evaluations tolerated before aborting (0: abort on the first)."""
    lab: LabGates = Field(default_factory=LabGates)
    """Gates whose figures come from the lab devices (DeviceGroups with ``role: lab``), not from the fleet's
    telemetry. Without a lab device for a profile, the build's figures (build machine, emulated target) stand."""
    window: Duration = timedelta(hours=1)
    """How far back the telemetry gates read (error rate, latency, drift; both versions alike): whole hours of
    the controller's telemetry store, so one hour reads the current hour and the one before."""


class Rate(SpecModel):
    """How fast devices are given the new version (as AWS IoT Jobs' exponential rollout rate): ``perMinute`` at
    first, multiplied by ``growthFactor`` for every ``growEvery`` devices Healthy on it, while the share of
    failures among the devices with a verdict stays at or under ``maxFailureRate``."""

    per_minute: int = Field(ge=1)
    growth_factor: float = Field(default=1.0, ge=1.0)
    grow_every: int = Field(default=10, ge=1)
    max_per_minute: int | None = Field(default=None, ge=1)
    max_failure_rate: Fraction = 0.05


class RollbackPolicy(SpecModel):
    """What happens when a gate fails."""

    automatic: bool = True
    """True: return every device of the rollout to its previous version and record it as a commit. False: hold
    the rollout (Paused, HeldAfterGateFailed) for a person to abort it or promote past the failed gate."""


class TrialPolicy(SpecModel):
    """After a device switches to the new version it keeps it on trial: a runtime crash, or an error rate over
    ``analysis.maxErrorRate``, rolls it back to the previous version by itself. Then it marks the version good."""

    duration: Duration = timedelta(minutes=10)
    requests: int | None = Field(default=None, ge=1)
    """Ends the trial early once this many requests were served within the limits."""


class RolloutSpec(SpecModel):
    """Desired state: ``model`` at ``version`` on ``groups``, reached through ``steps``."""

    model: Name
    version: QuotedStr
    groups: list[Name] = Field(min_length=1)
    """DeviceGroups targeted, in order (the order matters with groupStrategy Sequential)."""
    group_strategy: Literal["Together", "Sequential"] = "Together"
    """Together: each step covers every group; Sequential: each group walks all steps before the next."""
    steps: list[Step] = Field(min_length=1)
    """Cumulative percentages, strictly increasing, ending at 100."""
    max_unavailable: IntOrPercent = "10%"
    """Devices per step allowed to be offline or failed without blocking progress."""
    rate: Rate | None = None
    """Devices started per minute (counted per step, paced by the controller's cycles)."""
    max_concurrent: IntOrPercent | None = None
    """Devices taking the new version at once (assigned it, no verdict yet), of the rollout's targeted devices;
    the step's others wait their turn on what they run. Unset: the whole step at once."""
    progress_deadline: Duration = timedelta(minutes=30)
    """A device in progress for longer than this counts as failed."""
    offline_after: Duration = timedelta(minutes=15)
    """A device not seen for this long counts as unavailable."""
    maintenance_window: MaintenanceWindow | None = None
    trial: TrialPolicy | None = None
    """None: each device's own default (``edgectl agent --trial-period``, 10 minutes)."""
    conditions: LabelSelector | None = None
    """Devices switch only while their labels satisfy this selector (e.g. network=wifi)."""
    analysis: Analysis = Field(default_factory=Analysis)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    suspend: bool = False
    """A suspended rollout changes no device; it does not count as active."""


class Rollout(Document):
    """Delivery of one model version to device groups in percentage steps, with health gates."""

    KIND: ClassVar[str] = "Rollout"
    kind: Literal["Rollout"]
    spec: RolloutSpec

    @property
    def active(self) -> bool:
        return not self.spec.suspend

    def problems(self) -> list[Problem]:
        spec = self.spec
        found: list[Problem] = []
        for i in range(1, len(spec.steps)):
            previous, current = spec.steps[i - 1].percent, spec.steps[i].percent
            if current <= previous:
                found.append(
                    (("spec", "steps", i, "percent"), f"steps must increase strictly: {current} follows {previous}")
                )
        if spec.steps and spec.steps[-1].percent != 100:
            last = len(spec.steps) - 1
            found.append(
                (("spec", "steps", last, "percent"), f"the last step must reach 100, not {spec.steps[-1].percent}")
            )
        seen: set[str] = set()
        for i, group in enumerate(spec.groups):
            if group in seen:
                found.append((("spec", "groups", i), f"group {group} is listed twice"))
            seen.add(group)
        if spec.conditions:
            found += [(("spec", "conditions", *loc), msg) for loc, msg in spec.conditions.problems()]
        return found
