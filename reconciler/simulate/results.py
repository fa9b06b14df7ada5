"""From what the workers recorded to the figures a scenario prints: convergence times, latency percentiles, the
phase timeline the plot draws, and the comparison of a run with earlier ones (``bench/scale.py``).

Pure (no I/O).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

Event = tuple[float, str, str, str, str]
"""(time, device, model, version, phase)."""
IN_PROGRESS = ("Downloading", "Verifying", "Installing", "Testing")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def converged_at(events: Iterable[Event], version: str, since: float) -> dict[str, float]:
    """device -> seconds after ``since`` when it first reported Healthy on ``version``."""
    first: dict[str, float] = {}
    for at, device, _model, reported, phase in events:
        if phase == "Healthy" and reported == version and at >= since and device not in first:
            first[device] = at - since
    return first


def time_to_share(converged: Mapping[str, float], population: int, shares: Sequence[int]) -> dict[str, float | None]:
    """share (percent) -> seconds until that share of ``population`` devices converged; None: never reached."""
    times = sorted(converged.values())
    answer: dict[str, float | None] = {}
    for share in shares:
        needed = max(1, math.ceil(share / 100 * population))
        answer[str(share)] = round(times[needed - 1], 1) if needed <= len(times) else None
    return answer


def exposed(events: Iterable[Event], version: str, since: float) -> set[str]:
    """Devices that were given ``version`` (reported any phase for it) after ``since``."""
    return {device for at, device, _m, reported, _p in events if reported == version and at >= since}


def timeline(events: Sequence[Event], start: float, end: float, step: float, new: str) -> dict[str, list[int]]:
    """Devices per state at each ``step`` seconds from ``start``: Healthy on ``new``, Healthy on another version,
    in progress (downloading to testing), Trial, Retrying, Failed. A device is in the state it reported last."""
    states = ("healthy-new", "healthy-old", "in-progress", "trial", "retrying", "failed")
    counts: dict[str, list[int]] = {state: [] for state in states}
    ordered = sorted(events)
    last: dict[str, str] = {}
    index = 0
    t = start
    while t <= end + 1e-9:
        while index < len(ordered) and ordered[index][0] <= t:
            _, device, _m, version, phase = ordered[index]
            last[device] = _state(phase, version, new)
            index += 1
        tally = Counter(last.values())
        for state in states:
            counts[state].append(tally.get(state, 0))
        t += step
    return counts


def _state(phase: str, version: str, new: str) -> str:
    if phase == "Healthy":
        return "healthy-new" if version == new else "healthy-old"
    if phase in IN_PROGRESS:
        return "in-progress"
    return {"Trial": "trial", "Retrying": "retrying", "Failed": "failed", "RolledBack": "failed"}.get(phase, "other")


def compare(current: Mapping[str, float], history: Sequence[Mapping[str, float]], limit: float = 3.0,
            tolerance: float = 0.25) -> list[str]:  # fmt: skip
    """Figures of ``current`` that regressed against earlier runs (lower is better for every figure): beyond
    ``limit`` standard deviations of the history when it has three runs or more, else more than ``tolerance``
    (a share) above the last run. The noise floor is 5 % of the mean, so identical earlier runs do not make
    every wobble a regression."""
    found = []
    for name, value in current.items():
        earlier = [run[name] for run in history if isinstance(run.get(name), int | float)]
        if value is None or not earlier:
            continue
        if len(earlier) >= 3:
            mean = statistics.fmean(earlier)
            spread = max(statistics.stdev(earlier), 0.05 * abs(mean), 1e-9)
            score = (value - mean) / spread
            if score > limit:
                found.append(f"{name}: {value:g} is {score:.1f} standard deviations above the mean {mean:g} "
                             f"of {len(earlier)} runs")  # fmt: skip
        elif value > earlier[-1] * (1 + tolerance) and value - earlier[-1] > 1e-9:
            found.append(f"{name}: {value:g} is {value / earlier[-1] - 1:.0%} above the last run's {earlier[-1]:g}")
    return found
