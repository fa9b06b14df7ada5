"""The device lab end to end: a real Git remote, the controller, real agents on fleet devices and on lab devices
(a DeviceGroup with ``role: lab``), artifacts from the build pipeline served through TUF.

Before the first step the lab devices download, verify and benchmark the new version without serving it; no fleet
device is given the version until they reported. A lab figure over its gate, or a benchmark that fails, stalls the
rollout with the figures and every fleet device stays on the previous version."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.agent.slots import ModelSlots
from reconciler.cli.main import main
from reconciler.controller.loop import Controller, ControllerConfig

from ..device_fleet import MODEL, Fleet, skew_golden
from ..git_server import GitServer, git
from .test_end_to_end import LABELS, ROLLOUT, ROLLOUT_YAML, fleet_repo, rollback_commits, status_of

LAB_LABELS = {**LABELS, "edgereconciler.io/lab": "true"}
LAB_GROUP = """apiVersion: edgereconciler.io/v1alpha1
kind: DeviceGroup
metadata:
  name: cortex-lab
spec:
  role: lab
  description: Representative Cortex-A boards on the bench.
  selector:
    matchLabels:
      edgereconciler.io/lab: "true"
"""
FLEET_DEVICES = [f"factory-{i:02d}" for i in range(6)]
LAB_DEVICES = ["lab-1", "lab-2"]


def lab_repo(git_server: GitServer, tmp_path: Path, rollout: str = ROLLOUT_YAML) -> str:
    url = fleet_repo(git_server, tmp_path)
    work = tmp_path / "work"
    git("clone", "-q", url, str(work), cwd=tmp_path)
    (work / "groups" / "cortex-lab.yaml").write_text(LAB_GROUP)
    (work / "rollouts" / f"{ROLLOUT}.yaml").write_text(rollout)
    git("add", "-A", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "a device lab", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return url


def hwmon(root: Path) -> Path:
    """A board's sysfs hwmon: an SoC thermal sensor and an INA3221 power monitor (volts and amperes per rail)."""
    soc, ina = root / "hwmon0", root / "hwmon1"
    soc.mkdir(parents=True)
    ina.mkdir()
    (soc / "name").write_text("cpu_thermal\n")
    (soc / "temp1_input").write_text("51234\n")
    (ina / "name").write_text("ina3221\n")
    for channel, (millivolts, milliamperes) in enumerate([(5000, 400), (3300, 100)], start=1):
        (ina / f"in{channel}_input").write_text(f"{millivolts}\n")
        (ina / f"curr{channel}_input").write_text(f"{milliamperes}\n")
    return root


def start(fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store, rollout: str = ROLLOUT_YAML):
    """The controller, the fleet's agents, and the lab's agents; lab-1 serves 1.0.0 beforehand."""
    url = lab_repo(git_server, tmp_path, rollout)
    for name in FLEET_DEVICES:
        fleet.backend.register_device(name, LABELS)
    for name in LAB_DEVICES:
        fleet.backend.register_device(name, LAB_LABELS)
    switches: list[str] = []
    agents = {name: fleet.agent(name) for name in FLEET_DEVICES}
    labs = {name: fleet.agent(name, on_switch=switches.append) for name in LAB_DEVICES}
    labs["lab-1"].config = replace(labs["lab-1"].config, hwmon=hwmon(tmp_path / "hwmon"))
    fleet.assign("lab-1", "1.0.0")  # what the board served before it joined the lab
    for _ in range(3):
        labs["lab-1"].cycle()
    assert ModelSlots(fleet.root / "devices" / "lab-1", MODEL).state().active_version == "1.0.0"
    switches.clear()
    controller = Controller(ControllerConfig(url, fleet.root / "controller-state", store=build_store.root),
                            fleet.backend)  # fmt: skip
    return controller, agents, labs, switches


def fleet_versions(fleet: Fleet) -> dict[str, str | None]:
    """What each fleet device was assigned, and what it runs."""
    fleet.backend.sync()
    assigned = {d: a.version for (d, _), a in fleet.backend.assignments().items() if d in FLEET_DEVICES}
    installed = {d: s.installed_version for (d, _), s in fleet.backend.statuses().items() if d in FLEET_DEVICES}
    return {"assigned": sorted(set(assigned.values())), "installed": sorted(set(installed.values()) - {None})}


def test_the_rollout_waits_for_its_lab_then_walks_and_the_lab_never_serves_it(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    # A limit no machine's speed decides: the gate's figures are checked, not this machine's timing.
    rollout = ROLLOUT_YAML.replace("    minDevicesReporting: 1\n", "    minDevicesReporting: 1\n    lab:\n"
                                   "      maxLatencyP95: 10s\n")  # fmt: skip
    controller, agents, labs, switches = start(fleet, git_server, tmp_path, build_store, rollout)
    for _ in range(2):  # the fleet's agents work, the lab's do not yet: nobody gets 2.0.0
        controller.cycle()
        for agent in agents.values():
            agent.cycle()
        status = status_of(git_server)
        assert (status["phase"], status["reason"]) == ("Progressing", "WaitingForLab"), status
        assert "2.0.0" not in fleet_versions(fleet)["assigned"] + fleet_versions(fleet)["installed"]
    lab_assignments = {d: a for (d, _), a in fleet.backend.assignments().items() if d in LAB_DEVICES}
    assert {(a.version, a.benchmark) for a in lab_assignments.values()} == {("2.0.0", True)}

    for agent in labs.values():
        agent.cycle()
    reports = {d: s for (d, _), s in fleet.backend.statuses().items() if d in LAB_DEVICES}
    assert {s.phase for s in reports.values()} == {"Benchmarked"}, reports
    figures = reports["lab-1"].extra
    assert 0 < figures["labP50Ms"] <= figures["labP95Ms"] and figures["labRuns"] == 200
    assert figures["labTemperatureC"] == 51.2 and figures["labPowerW"] == pytest.approx(2.33)  # 5 V * 0.4 A + 3.3 * 0.1
    assert "labPowerW" not in reports["lab-2"].extra  # no sensors on that board: not measured, never 0
    assert reports["lab-1"].installed_version == "1.0.0" and reports["lab-2"].installed_version is None

    for _ in range(20):  # the lab stage, then three steps of a controller cycle and an agent cycle or two each
        controller.cycle()
        status = status_of(git_server)
        if status["phase"] == "Succeeded":
            break
        for agent in [*agents.values(), *labs.values()]:
            agent.cycle()
    assert status["phase"] == "Succeeded", status
    passed = next(h["message"] for h in status["history"] if h["message"].startswith("lab passed"))
    assert "2 lab device(s) benchmarked 2.0.0: labLatencyP95Ms[arm-cortex-a-cpu]" in passed and "<= 10000" in passed
    assert fleet_versions(fleet) == {"assigned": ["2.0.0"], "installed": ["2.0.0"]}
    # Benchmark mode never switched what a lab device serves, before, during or after.
    assert switches == []
    assert ModelSlots(fleet.root / "devices" / "lab-1", MODEL).state().active_version == "1.0.0"
    assert ModelSlots(fleet.root / "devices" / "lab-2", MODEL).state().active_version is None
    assert rollback_commits(git_server) == []

    # edgectl get benchmarks: the lab's figures next to the build machine's and the emulated target's, kept in
    # the store with the artifact (after the lab's assignments are gone too).
    artifact = next(a.artifact for (d, _), a in fleet.backend.assignments().items() if d == "lab-1")
    fleet.backend.delete([(d, MODEL) for d in LAB_DEVICES])
    shown = CliRunner().invoke(main, ["get", "benchmarks", artifact[:12], "--store", str(build_store.root),
                                      "-o", "json"])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    items = json.loads(shown.output)["items"]
    lab_items = {i["device"]: i for i in items if i["source"] == "lab"}
    assert sorted(lab_items) == LAB_DEVICES and {i["source"] for i in items} >= {"build machine", "lab"}
    assert lab_items["lab-1"]["figures"]["labTemperatureC"] == 51.2 and lab_items["lab-1"]["phase"] == "Benchmarked"
    table = CliRunner().invoke(main, ["get", "benchmarks", artifact[:12], "--store", str(build_store.root)])
    assert "2.33 W, 51.2 °C" in table.output and "no power or temperature sensor" in table.output


@pytest.mark.parametrize("failure", ["latency gate", "golden outputs"])
def test_a_lab_failure_stalls_the_rollout_before_any_fleet_device_gets_the_version(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store, failure: str
):
    rollout = ROLLOUT_YAML
    if failure == "latency gate":  # nothing runs a model in a microsecond
        rollout = rollout.replace("    minDevicesReporting: 1\n", "    minDevicesReporting: 1\n    lab:\n"
                                  "      maxLatencyP95: 0.001ms\n")  # fmt: skip
        fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    else:  # the lab board reproduces other outputs than the build recorded
        fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2, edit=skew_golden))
    controller, agents, labs, _ = start(fleet, git_server, tmp_path, build_store, rollout)
    for _ in range(4):
        controller.cycle()
        for agent in [*agents.values(), *labs.values()]:
            agent.cycle()
    status = status_of(git_server)
    assert (status["phase"], status["reason"]) == ("Paused", "LabFailed"), status
    if failure == "latency gate":
        assert "labLatencyP95Ms[arm-cortex-a-cpu]" in status["message"] and "> 0.001 " in status["message"]
        gate = next(g for g in status["gates"] if g["name"] == "labLatencyP95Ms[arm-cortex-a-cpu]")
        assert gate["verdict"] == "Fail" and gate["value"] > gate["threshold"]
    else:
        assert "labBenchmarks 2 > 0" in status["message"] and "golden outputs differ" in status["message"]
    assert [h["decision"] for h in status["history"]].count("Pause") == 1
    assert fleet_versions(fleet) == {"assigned": ["1.0.0"], "installed": ["1.0.0"]}
    assert rollback_commits(git_server) == []
    assert yaml.safe_load(git("show", "main:status/rollouts/vibration-anomaly-2.yaml",
                              cwd=git_server.base / "fleet.git"))["lab"] == "Failed"  # fmt: skip
