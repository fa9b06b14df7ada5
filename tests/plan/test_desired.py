"""Desired state from specs and inventory: stable buckets, monotonic steps, order independence, and
plan problems reported per device instead of crashes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reconciler.api import FleetTree, SourceFile, load_fleet
from reconciler.gitops.files import read_fleet_dir
from reconciler.plan import Device, RolloutPosition, bucket, plan

FACTORY = {
    "acme.example/site-type": "factory",
    "topology.kubernetes.io/region": "us-east",
    "acme.example/network": "wifi",
}
CORTEX = {"edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64"}
CORAL = {"edgereconciler.io/hardware": "coral-edgetpu"}


@pytest.fixture(scope="module")
def tree() -> FleetTree:
    return load_fleet(read_fleet_dir(Path(__file__).resolve().parents[2] / "fleet-example"))


def factory_devices(n: int, hardware: dict[str, str] = CORTEX) -> list[Device]:
    return [Device(f"factory-{i:04d}", {**FACTORY, **hardware}) for i in range(n)]


def on_new_version(result, rollout: str) -> set[str]:
    return {d.device for d in result.for_rollout(rollout) if d.in_rollout}


def test_buckets_are_stable_and_spread(tree: FleetTree):
    assert bucket("r", "d1") == bucket("r", "d1")
    assert bucket("r", "d1") != bucket("other", "d1") or bucket("r", "d2") != bucket("other", "d2")
    devices = factory_devices(4000)
    result = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(25, "1.0.0")})
    share = len(on_new_version(result, "vibration-anomaly-2")) / len(devices)
    assert 0.22 < share < 0.28


def test_raising_the_percent_only_adds_devices(tree: FleetTree):
    devices = factory_devices(1000)
    previous: set[str] = set()
    for percent in (5, 10, 25, 50, 100):
        result = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(percent, "1.0.0")})
        current = on_new_version(result, "vibration-anomaly-2")
        assert previous <= current
        previous = current
    assert len(previous) == 1000


def test_the_plan_does_not_depend_on_inventory_order(tree: FleetTree):
    devices = factory_devices(500) + factory_devices(300, CORAL)[::-1]
    devices = [Device(f"{d.name}-{i}", d.labels) for i, d in enumerate(devices)]
    shuffled = devices[:]
    random.Random(3).shuffle(shuffled)
    positions = {"vibration-anomaly-2": RolloutPosition(50, "1.0.0")}
    assert plan(tree, devices, positions).desired == plan(tree, shuffled, positions).desired


def test_devices_outside_the_step_keep_the_stable_version_and_artifacts_are_attached(tree: FleetTree):
    devices = factory_devices(200) + factory_devices(100, CORAL)
    devices = [Device(f"{d.name}-{i}", d.labels) for i, d in enumerate(devices)]
    artifacts = {("vibration-anomaly", "2.0.0", "arm-cortex-a-cpu"): "a" * 64,
                 ("vibration-anomaly", "1.0.0", "coral-npu"): "b" * 64}  # fmt: skip
    result = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(10, "1.0.0")}, artifacts)
    assert len(result.desired) == 300
    for desired in result.desired.values():
        assert desired.version == ("2.0.0" if desired.in_rollout else "1.0.0")
        assert desired.artifact == artifacts.get((desired.model, desired.version, desired.profile))
    assert result.profiles["factory-0000-0"] == "arm-cortex-a-cpu"


def test_without_a_stable_version_devices_outside_the_step_get_nothing(tree: FleetTree):
    result = plan(tree, factory_devices(400), {"vibration-anomaly-2": RolloutPosition(10)})
    assert result.desired and all(d.in_rollout for d in result.desired.values())
    assert len(result.desired) < 80


def test_an_aborted_rollout_returns_everyone_to_the_stable_version(tree: FleetTree):
    result = plan(tree, factory_devices(300), {"vibration-anomaly-2": RolloutPosition(50, "1.0.0", aborted=True)})
    assert {d.version for d in result.desired.values()} == {"1.0.0"}
    assert len(result.desired) == 300


def test_devices_of_no_targeted_group_are_not_planned(tree: FleetTree):
    office = Device("office-1", {**CORTEX, "acme.example/site-type": "office"})
    decommissioned = Device("factory-x", {**FACTORY, **CORTEX, "acme.example/decommissioned": "2026"})
    result = plan(tree, [office, decommissioned], {"vibration-anomaly-2": RolloutPosition(100, "1.0.0")})
    assert result.desired == {} and result.problems == []


def test_profile_problems_are_reported_per_device(tree: FleetTree):
    unknown_hardware = Device("factory-odd", {**FACTORY, "edgereconciler.io/hardware": "abacus"})
    result = plan(tree, [unknown_hardware, *factory_devices(3)], {"vibration-anomaly-2": RolloutPosition(100)})
    assert [(p.device, p.message) for p in result.problems] == [("factory-odd", "no device profile matches its labels")]
    assert len(result.desired) == 3


def test_a_device_two_rollouts_claim_is_a_problem_not_a_crash(tree: FleetTree):
    text = (Path(__file__).resolve().parents[2] / "fleet-example" / "rollouts" / "vibration-anomaly-2.yaml").read_text()
    # A second rollout of the same model on an overlapping group, with labels that only overlap at run time.
    second = text.replace("name: vibration-anomaly-2", "name: vibration-anomaly-2-night").replace(
        "groups: [us-factories]", "groups: [night-shift]"
    )
    group = """apiVersion: edgereconciler.io/v1alpha1
kind: DeviceGroup
metadata: {name: night-shift}
spec: {selector: {matchLabels: {acme.example/shift: night}}}
"""
    base = read_fleet_dir(Path(__file__).resolve().parents[2] / "fleet-example")
    tree2 = load_fleet(
        [*base, SourceFile("rollouts/night.yaml", second.encode()), SourceFile("g.yaml", group.encode())]
    )
    both = Device("factory-both", {**FACTORY, **CORTEX, "acme.example/shift": "night"})
    result = plan(tree2, [both], {})  # first steps, nothing ran before: a conflict all the same
    assert result.desired == {}
    assert [p.device for p in result.problems] == ["factory-both"]
    result = plan(tree2, [both], {r: RolloutPosition(100) for r in tree2.rollouts})
    assert len(result.desired) == 1
    [problem] = result.problems
    assert problem.device == "factory-both" and "both target it" in problem.message


def test_maintenance_windows_in_the_devices_time_zone(tree: FleetTree):
    from datetime import UTC, datetime

    from reconciler.plan.window import Window

    weeknights = Window(("Mon", "Tue", "Wed", "Thu", "Fri"), "22:00", "05:00", "Europe/Berlin")
    at = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    assert weeknights.is_open(at(2026, 12, 3, 22, 30))  # Thu 23:30 in Berlin
    assert weeknights.is_open(at(2026, 12, 4, 3, 0))  # Fri 04:00, the morning after Thursday night
    assert not weeknights.is_open(at(2026, 12, 4, 4, 30))  # Fri 05:30: closed
    assert weeknights.is_open(at(2026, 12, 5, 2, 0))  # Sat 03:00: Friday night's window
    assert not weeknights.is_open(at(2026, 12, 6, 2, 0))  # Sun 03:00: Saturday night is not in the window
    # The plan gives each device the window in its own zone (timezone label), else the rollout's default.
    devices = [Device("berlin", {**FACTORY, **CORTEX}),
               Device("tokyo", {**FACTORY, **CORTEX, "edgereconciler.io/timezone": "Asia/Tokyo"})]  # fmt: skip
    text = (Path(__file__).resolve().parents[2] / "fleet-example" / "rollouts" / "vibration-anomaly-2.yaml").read_text()
    windowed = text.replace(
        "  maxUnavailable: 2\n",
        '  maxUnavailable: 2\n  maintenanceWindow: {start: "22:00", end: "05:00", timezone: Europe/Berlin}\n',
    )
    base = [
        f
        for f in read_fleet_dir(Path(__file__).resolve().parents[2] / "fleet-example")
        if "vibration-anomaly-2" not in f.path
    ]
    tree2 = load_fleet([*base, SourceFile("rollouts/v.yaml", windowed.encode())])
    result = plan(tree2, devices, {"vibration-anomaly-2": RolloutPosition(100)})
    assert result.desired[("berlin", "vibration-anomaly")].window.timezone == "Europe/Berlin"
    assert result.desired[("tokyo", "vibration-anomaly")].window.timezone == "Asia/Tokyo"


def test_devices_outside_the_rollouts_conditions_stay_on_the_stable_version(tree: FleetTree):
    cellular = [Device(f"lte-{i}", {**FACTORY, **CORTEX, "acme.example/network": "lte"}) for i in range(50)]
    result = plan(tree, cellular + factory_devices(50), {"vibration-anomaly-2": RolloutPosition(100, "1.0.0")})
    assert {d.version for (name, _), d in result.desired.items() if name.startswith("lte-")} == {"1.0.0"}
    assert {d.version for (name, _), d in result.desired.items() if name.startswith("factory-")} == {"2.0.0"}


def test_a_device_of_another_cpu_than_its_profile_builds_for_is_a_problem(tree: FleetTree):
    # The Coral profile selects by its accelerator only: an amd64 host with a Coral matches it.
    wrong = Device("factory-amd", {**FACTORY, **CORAL, "kubernetes.io/arch": "amd64"})
    result = plan(tree, [*factory_devices(3), wrong], {"vibration-anomaly-2": RolloutPosition(100, "1.0.0")})
    assert {d.device for d in result.for_rollout("vibration-anomaly-2")} == {f"factory-{i:04d}" for i in range(3)}
    [problem] = result.problems
    assert problem.device == "factory-amd"
    assert problem.message == "its kubernetes.io/arch is amd64, but profile coral-npu builds for arm64"
    assert "factory-amd" not in result.profiles


LAB_GROUP = b"""apiVersion: edgereconciler.io/v1alpha1
kind: DeviceGroup
metadata: {name: bench}
spec:
  role: lab
  selector:
    matchLabels: {edgereconciler.io/lab: "true"}
"""
LAB = {"edgereconciler.io/lab": "true"}


@pytest.fixture(scope="module")
def lab_tree() -> FleetTree:
    example = Path(__file__).resolve().parents[2] / "fleet-example"
    return load_fleet([*read_fleet_dir(example), SourceFile("groups/bench.yaml", LAB_GROUP)])


def test_a_lab_device_benchmarks_the_new_version_and_is_never_rolled_out_to(lab_tree: FleetTree):
    # A board of the lab that also carries a factory's labels: the lab wins.
    devices = [*factory_devices(50), Device("bench-1", {**FACTORY, **CORTEX, **LAB})]
    result = plan(lab_tree, devices, {"vibration-anomaly-2": RolloutPosition(100, "1.0.0")})
    [benchmark] = result.lab_for("vibration-anomaly-2")
    assert (benchmark.device, benchmark.version, benchmark.benchmark, benchmark.in_rollout) == (
        "bench-1", "2.0.0", True, False)  # fmt: skip
    assert "bench-1" not in {d.device for d in result.for_rollout("vibration-anomaly-2")}
    assert len(on_new_version(result, "vibration-anomaly-2")) == 50


def test_while_the_lab_holds_a_rollout_no_fleet_device_is_in_it(lab_tree: FleetTree, tree: FleetTree):
    devices = [*factory_devices(200), Device("bench-1", {**CORTEX, **LAB})]
    held = {"vibration-anomaly-2": RolloutPosition(25, "1.0.0", lab_hold=True)}
    result = plan(lab_tree, devices, held)
    assert on_new_version(result, "vibration-anomaly-2") == set()
    assert {d.version for d in result.for_rollout("vibration-anomaly-2")} == {"1.0.0"}
    assert [d.version for d in result.lab_for("vibration-anomaly-2")] == ["2.0.0"]
    # Without a lab device of a profile the rollout delivers to, there is nothing to wait for.
    coral_lab = [*factory_devices(200), Device("bench-2", {**CORAL, **LAB})]
    unheld = plan(lab_tree, coral_lab, held)
    assert unheld.lab_for("vibration-anomaly-2") == [] and len(on_new_version(unheld, "vibration-anomaly-2")) > 20
    assert on_new_version(plan(tree, factory_devices(200), held), "vibration-anomaly-2")


def test_an_aborted_rollout_leaves_its_lab_alone(lab_tree: FleetTree):
    devices = [*factory_devices(10), Device("bench-1", {**CORTEX, **LAB})]
    result = plan(lab_tree, devices, {"vibration-anomaly-2": RolloutPosition(25, "1.0.0", aborted=True)})
    assert result.lab_for("vibration-anomaly-2") == [] and ("bench-1", "vibration-anomaly") not in result.desired


def test_a_pull_request_review_counts_the_lab_apart_from_the_fleet(lab_tree: FleetTree):
    from reconciler.plan.review import review

    devices = [*factory_devices(40), Device("bench-1", {**CORTEX, **LAB})]
    position = {"vibration-anomaly-2": RolloutPosition(5, "1.0.0", lab_hold=True)}
    result = review(None, lab_tree, devices, {}, position, {}, {}, {})
    [item] = [r for r in result.rollouts if r.name == "vibration-anomaly-2"]
    assert item.lab == 1 and item.targeted == 40
    # The lab device measures 2.0.0 but runs what it ran: no assignment of it changes on merge.
    assert sum(n for (model, _, new), n in result.transitions.items() if model == "vibration-anomaly") == 40


def test_one_benchmark_per_lab_device_and_model_the_rollout_waiting_for_its_lab_first():
    two = b"""apiVersion: edgereconciler.io/v1alpha1
kind: DeviceGroup
metadata: {name: line-b}
spec:
  selector:
    matchLabels: {acme.example/line: b}
---
apiVersion: edgereconciler.io/v1alpha1
kind: Rollout
metadata: {name: a-line-b}
spec:
  model: vibration-anomaly
  version: "1.0.0"
  groups: [line-b]
  steps: [{percent: 100}]
"""
    example = Path(__file__).resolve().parents[2] / "fleet-example"
    tree = load_fleet([*read_fleet_dir(example), SourceFile("groups/bench.yaml", LAB_GROUP),
                       SourceFile("rollouts/line-b.yaml", two)])  # fmt: skip
    devices = [*factory_devices(20), Device("line-b-1", {**CORTEX, "acme.example/line": "b"}),
               Device("bench-1", {**CORTEX, **LAB})]  # fmt: skip
    # Neither waits: the first by name; the other is told its lab device is busy.
    free = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(5, "1.0.0")})
    assert [d.rollout for d in free.lab_for("a-line-b")] == ["a-line-b"] and free.lab_busy == {"vibration-anomaly-2": 1}
    # The one held for its lab gets the device.
    held = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(5, "1.0.0", lab_hold=True)})
    assert [d.version for d in held.lab_for("vibration-anomaly-2")] == ["2.0.0"] and held.lab_busy == {"a-line-b": 1}
