"""hwmon readings in the kernel's units: millidegrees, microwatts, millivolts times milliamperes; a board without
sensors reads as None, never as zero."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.agent.sensors import Reading, Sampler, read_sensors


def sensor(root: Path, device: str, **files: str) -> None:
    (root / device).mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (root / device / name).write_text(f"{value}\n")


def test_power_monitors_and_thermal_sensors_in_kernel_units(tmp_path: Path):
    sensor(tmp_path, "hwmon0", name="soc_thermal", temp1_input="48500", temp2_input="52250")
    sensor(tmp_path, "hwmon1", name="ina219", in0_input="12", in1_input="5000", curr1_input="600",
           power1_input="3010000")  # fmt: skip
    sensor(tmp_path, "hwmon2", name="ina3221", in1_input="5000", curr1_input="200", in2_input="1800",
           curr2_input="500", in4_input="3")  # fmt: skip
    reading = read_sensors(tmp_path)
    assert reading.temperature_c == 52.25
    # ina219 reports power itself (3.01 W); ina3221 per channel: 5 V * 0.2 A + 1.8 V * 0.5 A = 1.9 W.
    assert reading.power_w == pytest.approx(3.01 + 1.9)


def test_a_board_without_sensors_or_with_broken_files_reads_none(tmp_path: Path):
    assert read_sensors(tmp_path / "absent") == Reading(None, None)
    sensor(tmp_path, "hwmon0", name="fan", temp1_input="n/a", fan1_input="2400")
    assert read_sensors(tmp_path) == Reading(None, None)


def test_the_sampler_keeps_the_hottest_temperature_and_the_mean_power(tmp_path: Path):
    sensor(tmp_path, "hwmon0", temp1_input="40000", power1_input="1000000")
    with Sampler(tmp_path, interval=3600) as sampler:  # one reading at each end
        sensor(tmp_path, "hwmon0", temp1_input="70000", power1_input="3000000")
    assert sampler.summary() == Reading(70.0, 2.0)
