"""Power and temperature of the device, from the Linux hwmon sysfs interface, sampled while a benchmark runs.

Who calls it: the agent in benchmark mode (a lab device), around the measured inferences. The units are the
kernel's (Documentation/hwmon/sysfs-interface): ``temp*_input`` in millidegrees Celsius, ``power*_input`` in
microwatts, ``in*_input`` in millivolts and ``curr*_input`` in milliamperes. A power monitor that reports no power
(INA3221: bus voltage and current per channel) is read as voltage times current of each channel. A device without
sensors reads as None: its figures are "not measured", never zero.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

HWMON = Path("/sys/class/hwmon")
_INPUT = re.compile(r"^(temp|power|in|curr)(\d+)_input$")


@dataclass(frozen=True)
class Reading:
    temperature_c: float | None = None
    """The hottest sensor."""
    power_w: float | None = None
    """All power monitors together."""


def read_sensors(root: Path = HWMON) -> Reading:
    """One reading of every hwmon device under ``root``; files that vanish or do not parse are skipped."""
    temperatures: list[float] = []
    power = None
    for device in sorted(root.glob("hwmon*")) if root.is_dir() else []:
        values: dict[tuple[str, int], float] = {}
        try:
            files = list(device.iterdir())
        except OSError:  # unplugged, or its driver unloaded, between the listing and now
            continue
        for file in files:
            match = _INPUT.match(file.name)
            if match is None:
                continue
            try:
                values[(match[1], int(match[2]))] = float(file.read_text().strip())
            except (OSError, ValueError):
                continue
        temperatures += [v / 1000 for (kind, _), v in values.items() if kind == "temp"]
        watts = [v / 1e6 for (kind, _), v in values.items() if kind == "power"]
        if not watts:  # voltage and current of each channel that has both
            watts = [values[("in", n)] * v / 1e6 for (kind, n), v in values.items()
                     if kind == "curr" and ("in", n) in values]  # fmt: skip
        if watts:
            power = (power or 0.0) + sum(watts)
    return Reading(max(temperatures) if temperatures else None, power)


class Sampler:
    """Reads the sensors every ``interval`` seconds while the ``with`` block runs (and once at each end): the
    hottest temperature and the mean power over the block."""

    def __init__(self, root: Path = HWMON, interval: float = 0.2) -> None:
        self.root, self.interval = root, interval
        self.readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.readings.append(read_sensors(self.root))
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.readings.append(read_sensors(self.root))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.readings.append(read_sensors(self.root))

    def summary(self) -> Reading:
        temperatures = [r.temperature_c for r in self.readings if r.temperature_c is not None]
        power = [r.power_w for r in self.readings if r.power_w is not None]
        return Reading(max(temperatures) if temperatures else None, sum(power) / len(power) if power else None)
