"""How many devices may take a rollout's new version at once (``maxConcurrent``): the rest of the step waits.

Pure (no I/O). Who calls it: the controller, after the step machine placed each rollout, on the plan it is about
to apply. A device is *in flight* from the moment it is assigned the new version until it reports a verdict on it
(Healthy on it, Failed or RolledBack for it); the step's other devices keep the assignment they have (or get
none) and are admitted in the order the rollout selected them (their hash bucket), as devices in flight finish.
The agents' reports are the only clock: nothing here depends on how long a download takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from reconciler.api.rollout import Rate
from reconciler.cluster import AssignmentStatus
from reconciler.plan import Desired, Plan, bucket

VERDICTS = ("Failed", "RolledBack")


@dataclass(frozen=True)
class Admission:
    plan: Plan
    """The plan with the devices not admitted left as they are."""
    in_flight: int
    admitted: int
    """Devices given the new version by this plan that did not have it."""
    waiting: frozenset[str]


def in_flight(desired: Desired, status: AssignmentStatus | None, gone: Callable[[AssignmentStatus], bool] | None = None
              ) -> bool:  # fmt: skip
    """Assigned the new version and no verdict on it yet. A device Staged for its window, or one ``gone`` says
    is offline or past its deadline, does not hold a place: it cannot be waited for."""
    if status is None:
        return True
    if status.phase == "Healthy" and status.installed_version == desired.version:
        return False
    if status.phase == "Staged" or (gone is not None and gone(status)):
        return False
    return not (status.phase in VERDICTS and status.target_version in (None, desired.version))


def admit(
    plan: Plan,
    rollout: str,
    limit: int | None,
    current: Mapping[tuple[str, str], Desired],
    statuses: Mapping[tuple[str, str], AssignmentStatus],
    allowance: int | None = None,
    gone: Callable[[AssignmentStatus], bool] | None = None,
    group: int | None = None,
) -> Admission:
    """``plan`` with at most ``limit`` of ``rollout``'s devices in flight on its new version (None: no limit), and
    at most ``allowance`` devices newly given it (the rate's share of this cycle; None: no rate). ``group``: with
    Sequential groups, the one being walked (the groups before it keep the new version and take no place)."""
    step = [d for d in plan.for_rollout(rollout)
            if d.in_rollout and (group is None or plan.groups.get((d.device, rollout)) == group)]  # fmt: skip
    started = [d for d in step if (held := current.get((d.device, d.model))) is not None and held.version == d.version]
    busy = sum(1 for d in started if in_flight(d, statuses.get((d.device, d.model)), gone))
    started_keys = {(d.device, d.model) for d in started}
    queue = sorted((d for d in step if (d.device, d.model) not in started_keys),
                   key=lambda d: bucket(rollout, d.device))  # fmt: skip
    free = len(queue) if limit is None else max(0, limit - busy)
    if allowance is not None:
        free = min(free, allowance)
    admitted, waiting = queue[:free], queue[free:]
    if not waiting:
        return Admission(plan, busy + len(admitted), len(admitted), frozenset())
    desired = dict(plan.desired)
    for held in waiting:
        key = (held.device, held.model)
        if key in current:
            desired[key] = current[key]  # keeps what it runs until its turn
        else:
            desired.pop(key)
    return Admission(Plan(desired, plan.problems, plan.profiles, plan.groups), busy + len(admitted), len(admitted),
                     frozenset(d.device for d in waiting))  # fmt: skip


def rate_allowance(rate: Rate, last_admitted: str | None, now: datetime, healthy: int, failed: int) -> int:
    """Devices that may start now: a minute's worth when none started in this step yet, else the rate times the
    minutes since the last start. The rate grows by its factor for every ``growEvery`` Healthy devices while the
    failure share of the verdicts stays within its limit (else it is back at ``perMinute``)."""
    per_minute = float(rate.per_minute)
    verdicts = healthy + failed
    if not verdicts or failed / verdicts <= rate.max_failure_rate:
        per_minute *= rate.growth_factor ** (healthy // rate.grow_every)
    if rate.max_per_minute is not None:
        per_minute = min(per_minute, float(rate.max_per_minute))
    if last_admitted is None:
        return max(1, int(per_minute))
    minutes = (now - datetime.fromisoformat(last_admitted)).total_seconds() / 60
    return int(per_minute * max(0.0, minutes))
