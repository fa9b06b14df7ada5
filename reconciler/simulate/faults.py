"""What can go wrong with a simulated device, and how its hardware behaves: one seeded draw per device.

Pure (no I/O). Each fault is a share of the fleet (``--offline 0.05``: five devices in a hundred take offline
periods); a device's traits are drawn from the scenario's seed and the device's name, so the same scenario with
the same seed gives every device the same faults whichever worker process runs it.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Faults:
    """Shares of the fleet (0..1) with each fault, and the size of each fault."""

    offline: float = 0.0
    """Devices that go offline for periods (no request leaves them, reports wait)."""
    offline_seconds: float = 90.0
    """Mean length of an offline period (exponential); the gaps between periods average four times that."""
    flaky: float = 0.0
    """Devices on flaky links: a download is cut part-way with probability ``cut_chance`` (resumed with Range)."""
    cut_chance: float = 0.5
    bandwidth: float = 0.0
    """Devices behind a bandwidth cap of ``bandwidth_bytes`` a second."""
    bandwidth_bytes: int = 200_000
    slow: float = 0.0
    """Slow devices: installing and testing take ``slow_factor`` times as long, inference too."""
    slow_factor: float = 5.0
    crash: float = 0.0
    """Devices that crash once mid-install (power cut): silent for ``restart_seconds``, then start over."""
    restart_seconds: float = 20.0
    skew: float = 0.0
    """Devices whose clock is off by up to ``skew_seconds`` either way (their telemetry timestamps say so)."""
    skew_seconds: float = 3600.0
    churn: float = 0.0
    """Devices that join after the start (up to ``churn_seconds`` late) or leave for good during the run,
    half each."""
    churn_seconds: float = 180.0

    def __post_init__(self) -> None:
        for name in SHARES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} is a share of the fleet between 0 and 1, not {value}")
        if not 0.0 <= self.cut_chance <= 1.0:
            raise ValueError(f"--cut-chance is a probability between 0 and 1, not {self.cut_chance}")
        for name in ("offline_seconds", "restart_seconds", "skew_seconds", "churn_seconds", "slow_factor"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a number >= 0")
        if self.bandwidth_bytes < 1_000:
            raise ValueError("--bandwidth-bytes must be at least 1000 bytes a second")

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SHARES = ("offline", "flaky", "bandwidth", "slow", "crash", "skew", "churn")


@dataclass(frozen=True)
class Hardware:
    """How a profile's devices behave where the simulator replaces the real work: inference latency (log-normal
    around ``latency_ms``), the time to install and to run the health check."""

    latency_ms: float
    latency_sigma: float = 0.25
    install_seconds: float = 1.0
    test_seconds: float = 2.0


HARDWARE = {
    "arm-cortex-a-cpu": Hardware(latency_ms=9.0, install_seconds=1.0, test_seconds=2.0),
    "coral-npu": Hardware(latency_ms=3.0, install_seconds=1.5, test_seconds=1.5),
}
"""The example fleet's profiles; any other profile behaves like a Cortex-A CPU."""


@dataclass(frozen=True)
class Defect:
    """A version whose health check fails on a share of the devices that install it (the defect a rollout's gates
    must catch before it spreads)."""

    version: str
    rate: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Defect:
        """``VERSION`` or ``VERSION=RATE``."""
        version, _, rate = text.partition("=")
        try:
            value = float(rate) if rate else 1.0
        except ValueError:
            raise ValueError(f"--defective {text}: the rate after '=' must be a number") from None
        if not version or not 0.0 <= value <= 1.0:
            raise ValueError(f"--defective {text}: give VERSION or VERSION=RATE with a rate between 0 and 1")
        return cls(version, value)


@dataclass(frozen=True)
class Traits:
    """One device's draw."""

    offline: bool = False
    flaky: bool = False
    bandwidth: int | None = None
    slow: bool = False
    crash: bool = False
    skew_seconds: float = 0.0
    joins_after: float = 0.0
    leaves_after: float | None = None
    draw: float = field(default=0.0)
    """A uniform number of the device's own (which devices a partly defective version fails on)."""

    def names(self) -> list[str]:
        """The faults this device has, for the results."""
        found = [name for name in ("offline", "flaky", "slow", "crash") if getattr(self, name)]
        found += ["bandwidth"] if self.bandwidth else []
        found += ["skew"] if self.skew_seconds else []
        found += ["joins-late"] if self.joins_after else []
        found += ["leaves"] if self.leaves_after is not None else []
        return found


def draw(device: str, faults: Faults, seed: int) -> Traits:
    """``device``'s traits under ``faults``, the same for the same name and seed."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{device}".encode()).digest()[:8], "big"))
    shares = {name: rng.random() for name in SHARES}
    churn = shares["churn"] < faults.churn
    joins = churn and rng.random() < 0.5
    return Traits(
        offline=shares["offline"] < faults.offline,
        flaky=shares["flaky"] < faults.flaky,
        bandwidth=faults.bandwidth_bytes if shares["bandwidth"] < faults.bandwidth else None,
        slow=shares["slow"] < faults.slow,
        crash=shares["crash"] < faults.crash,
        skew_seconds=rng.uniform(-1, 1) * faults.skew_seconds if shares["skew"] < faults.skew else 0.0,
        joins_after=rng.uniform(0.1, 1.0) * faults.churn_seconds if joins else 0.0,
        leaves_after=rng.uniform(0.2, 1.0) * faults.churn_seconds if churn and not joins else None,
        draw=rng.random(),
    )


def offline_periods(device: str, seed: int, mean: float, horizon: float) -> list[tuple[float, float]]:
    """(start, end) seconds after the device starts when it is offline, up to ``horizon``: periods of ``mean``
    seconds on average (exponential, at most four times the mean), separated by gaps of four times that."""
    if mean <= 0:
        return []
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{device}:offline".encode()).digest()[:8], "big"))
    periods, t = [], rng.uniform(0, 4 * mean)
    while t < horizon:
        length = min(rng.expovariate(1 / mean), 4 * mean)
        periods.append((t, t + length))
        t += length + rng.expovariate(1 / (4 * mean))
    return periods
