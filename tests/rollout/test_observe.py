"""Observations the controller feeds the step machine: device phases counted the way the gates need them,
and telemetry compared per hardware profile."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.api import load_fleet
from reconciler.api.status import RolloutPhase, RolloutState
from reconciler.cluster import AssignmentStatus
from reconciler.controller.rollouts import observe
from reconciler.gitops.files import read_fleet_dir
from reconciler.plan import Device, RolloutPosition, plan
from reconciler.rollout.engine import Manual, decide

from ..plan.test_desired import LAB_GROUP

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
BASE = {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east", "acme.example/network": "wifi"}
CORTEX = {**BASE, "edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64"}
CORAL = {**BASE, "edgereconciler.io/hardware": "coral-edgetpu"}
BUCKETS = ["0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"]


def summary(device: str, version: str, bucket: int, requests: int = 100) -> dict:
    counts = [0] * len(BUCKETS)
    counts[bucket] = requests
    return {"kind": "TelemetrySummary", "device": device, "model": "vibration-anomaly", "version": version,
            "requests": requests, "errors": 0, "latencyMs": {"buckets": BUCKETS, "counts": counts},
            "predictions": [requests, 0, 0]}  # fmt: skip


def setup():
    tree = load_fleet(read_fleet_dir(Path(__file__).resolve().parents[2] / "fleet-example"))
    devices = [Device(f"arm-{i}", CORTEX) for i in range(4)] + [Device(f"tpu-{i}", CORAL) for i in range(4)]
    target = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(100, "1.0.0")})
    state = RolloutState(step=2, stable_version="1.0.0", step_started=(NOW - timedelta(minutes=5)).isoformat())
    return tree, target, state


def status(phase: str, version: str | None, seen: datetime = NOW) -> AssignmentStatus:
    return AssignmentStatus(phase, installed_version=version, last_seen=seen.isoformat())


def test_phases_are_counted_for_the_gates():
    tree, target, state = setup()
    statuses = {
        ("arm-0", "vibration-anomaly"): status("Healthy", "2.0.0"),
        ("arm-1", "vibration-anomaly"): status("RolledBack", "1.0.0", NOW - timedelta(hours=2)),  # failed, then quiet
        ("arm-2", "vibration-anomaly"): status("Healthy", "2.0.0", NOW - timedelta(hours=1)),  # offline
        ("arm-3", "vibration-anomaly"): status("Staged", "1.0.0"),  # waiting for its window
        ("tpu-0", "vibration-anomaly"): status("Downloading", "1.0.0"),
    }
    obs = observe(tree, "vibration-anomaly-2", state, target, statuses, [], NOW)
    assert (obs.targeted, obs.healthy, obs.failed, obs.unavailable) == (8, 1, 1, 1)
    assert obs.in_progress == 4 and obs.staged == 1  # Downloading and three never seen; Staged apart

    late = NOW + timedelta(hours=1)
    overdue = observe(tree, "vibration-anomaly-2", state, target, {
        ("tpu-0", "vibration-anomaly"): status("Downloading", "1.0.0", late),
        ("arm-3", "vibration-anomaly"): status("Staged", "1.0.0", late),
    }, [], late)  # fmt: skip
    assert overdue.failed == 1  # stuck in progress past progressDeadline; Staged never is
    assert overdue.unavailable == 6  # never seen for longer than offlineAfter


def test_a_failure_reported_for_an_older_spec_does_not_count():
    tree, target, state = setup()
    stale = AssignmentStatus("RolledBack", installed_version="1.0.0", last_seen=NOW.isoformat(), target_version="1.9.0")
    current = AssignmentStatus(
        "RolledBack", installed_version="1.0.0", last_seen=NOW.isoformat(), target_version="2.0.0"
    )
    assert (
        observe(tree, "vibration-anomaly-2", state, target, {("arm-0", "vibration-anomaly"): stale}, [], NOW).failed
        == 0
    )
    assert (
        observe(tree, "vibration-anomaly-2", state, target, {("arm-0", "vibration-anomaly"): current}, [], NOW).failed
        == 1
    )


def test_latency_is_compared_per_profile_and_the_worst_counts():
    tree, target, state = setup()
    summaries = [summary(f"arm-{i}", "1.0.0", 2) for i in range(4)] + [
        summary(f"tpu-{i}", "1.0.0", 5) for i in range(4)
    ]
    summaries += [summary(f"arm-{i}", "2.0.0", 3) for i in range(4)]  # Cortex-A: p95 0.5 -> 1.0 ms, +100 %
    summaries += [summary(f"tpu-{i}", "2.0.0", 5) for i in range(4)]  # Edge TPU unchanged
    obs = observe(tree, "vibration-anomaly-2", state, target, {}, summaries, NOW)
    assert obs.latency_regression == 100.0
    assert obs.telemetry_devices == 8 and obs.error_rate == 0.0
    assert obs.drift_psi is not None and obs.drift_psi < 0.01  # same predictions: no drift


def test_devices_whose_build_is_missing_wait_for_it_and_never_fail():
    tree = load_fleet(read_fleet_dir(Path(__file__).resolve().parents[2] / "fleet-example"))
    devices = [Device(f"arm-{i}", CORTEX) for i in range(4)] + [Device(f"tpu-{i}", CORAL) for i in range(4)]
    # Only the Cortex-A build of 2.0.0 exists; the Coral devices' build is not there yet.
    built = {("vibration-anomaly", v, "arm-cortex-a-cpu"): f"id-{v}" for v in ("1.0.0", "2.0.0")}
    built[("vibration-anomaly", "1.0.0", "coral-npu")] = "id-coral-1"
    target = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(100, "1.0.0")}, built)
    late = NOW + timedelta(hours=2)  # past progressDeadline and offlineAfter for anything in progress
    _, _, state = setup()
    statuses = {(f"tpu-{i}", "vibration-anomaly"): status("Retrying", "1.0.0", late) for i in range(4)}
    statuses |= {(f"arm-{i}", "vibration-anomaly"): status("Healthy", "2.0.0", late) for i in range(4)}
    obs = observe(tree, "vibration-anomaly-2", state, target, statuses, [], late, tracks_artifacts=True)
    assert (obs.missing_artifacts, obs.failed, obs.unavailable, obs.healthy) == (4, 0, 0, 4)
    outcome = decide(tree.rollouts["vibration-anomaly-2"].spec, replace(state, phase=RolloutPhase.PROGRESSING),
                     obs, late, Manual())  # fmt: skip
    assert (outcome.state.reason, outcome.decision) == ("WaitingForArtifacts", None)
    assert outcome.state.message == "4 device(s) of the step wait for a build of 2.0.0"

    # The build lands: the step is judged like any other (here its latency gate waits for telemetry).
    built[("vibration-anomaly", "2.0.0", "coral-npu")] = "id-coral-2"
    target = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(100, "1.0.0")}, built)
    statuses |= {(f"tpu-{i}", "vibration-anomaly"): status("Healthy", "2.0.0", late) for i in range(4)}
    obs = observe(tree, "vibration-anomaly-2", state, target, statuses, [], late, tracks_artifacts=True)
    assert (obs.missing_artifacts, obs.healthy) == (0, 8)
    done = decide(tree.rollouts["vibration-anomaly-2"].spec, replace(state, phase=RolloutPhase.PROGRESSING), obs,
                  late, Manual())  # fmt: skip
    assert done.state.reason == "Waiting" and "telemetry from 0" in done.state.message


def test_devices_waiting_their_turn_are_never_overdue_and_deadlines_run_from_the_last_admission():
    tree, target, state = setup()
    long_ago = (NOW - timedelta(hours=5)).isoformat()
    state = replace(state, step_started=long_ago, last_admitted=(NOW - timedelta(minutes=5)).isoformat())
    step = [d for d in target.for_rollout("vibration-anomaly-2") if d.in_rollout]
    admitted, waiting = step[:2], step[2:]
    current = {(d.device, d.model): d for d in admitted}
    current |= {(d.device, d.model): replace(d, version="1.0.0", in_rollout=False) for d in waiting}
    statuses = {(d.device, d.model): status("Downloading", "1.0.0") for d in step}
    obs = observe(tree, "vibration-anomaly-2", state, target, statuses, [], NOW, current=current)
    assert (obs.in_progress, obs.failed, obs.unavailable) == (len(step), 0, 0)
    # Without a recent admission the two in flight are overdue; the waiting ones still are not.
    stale = observe(tree, "vibration-anomaly-2", replace(state, last_admitted=long_ago), target, statuses, [], NOW,
                    current=current)  # fmt: skip
    assert (stale.failed, stale.in_progress) == (2, len(waiting))


def lab_setup(artifact: str | None = "a" * 64):
    from reconciler.api import SourceFile

    example = Path(__file__).resolve().parents[2] / "fleet-example"
    tree = load_fleet([*read_fleet_dir(example), SourceFile("groups/bench.yaml", LAB_GROUP)])
    devices = [Device(f"arm-{i}", CORTEX) for i in range(4)]
    devices += [Device(f"lab-{i}", {**CORTEX, "edgereconciler.io/lab": "true"}) for i in range(3)]
    key = ("vibration-anomaly", "2.0.0", "arm-cortex-a-cpu")
    target = plan(tree, devices, {"vibration-anomaly-2": RolloutPosition(5, "1.0.0", lab_hold=True)},
                  {key: artifact} if artifact else {})  # fmt: skip
    state = RolloutState(RolloutPhase.PROGRESSING, stable_version="1.0.0", lab="Waiting",
                         step_started=(NOW - timedelta(minutes=5)).isoformat())  # fmt: skip
    return tree, target, state


def benchmarked(seen: datetime = NOW, artifact: str = "a" * 64, **figures) -> AssignmentStatus:
    extra = {"labP50Ms": 1.0, "labP95Ms": 2.0, "labMemoryBytes": 10_000_000, "labArtifact": artifact, **figures}
    return AssignmentStatus("Benchmarked", target_version="2.0.0", last_seen=seen.isoformat(), extra=extra)


def test_lab_reports_count_only_for_the_assigned_artifact_with_usable_figures():
    from reconciler.controller.rollouts import observe_lab

    tree, target, state = lab_setup()
    statuses = {
        ("lab-0", "vibration-anomaly"): benchmarked(labP95Ms=float("nan")),  # forged or broken: no figure
        ("lab-1", "vibration-anomaly"): benchmarked(labMemoryBytes=10**400),  # past any float
        ("lab-2", "vibration-anomaly"): benchmarked(artifact="b" * 64),  # an older build's figures
    }
    lab = observe_lab(tree, "vibration-anomaly-2", state, target, statuses, NOW)
    assert lab.devices == 3 and lab.results == ()
    assert dict(lab.failures) == {"lab-0": "reported no usable labP95Ms", "lab-1": "reported no usable labMemoryBytes"}
    assert lab.pending == 1  # lab-2 measures the assigned artifact yet
    outcome = decide(tree.rollouts["vibration-anomaly-2"].spec, state, replace(observe(
        tree, "vibration-anomaly-2", state, target, statuses, [], NOW), lab=lab), NOW, Manual())  # fmt: skip
    assert outcome.state.reason == "LabFailed" and "labBenchmarks 2 > 0" in outcome.state.message


def test_a_lab_device_retrying_or_offline_is_no_verdict_and_one_stuck_measuring_fails():
    from reconciler.controller.rollouts import observe_lab

    tree, target, state = lab_setup()
    later = NOW + timedelta(hours=2)  # past progressDeadline (30m) counted from the lab stage's start
    statuses = {
        ("lab-0", "vibration-anomaly"): AssignmentStatus(
            "Retrying", target_version="2.0.0", last_seen=later.isoformat()
        ),
        ("lab-1", "vibration-anomaly"): AssignmentStatus(
            "Benchmarking", target_version="2.0.0", last_seen=later.isoformat()
        ),
        ("lab-2", "vibration-anomaly"): benchmarked(NOW),  # then went quiet: its figures stand
    }
    lab = observe_lab(tree, "vibration-anomaly-2", state, target, statuses, later)
    assert lab.unavailable == 1 and [d for d, _ in lab.failures] == ["lab-1"]
    assert [r.device for r in lab.results] == ["lab-2"] and lab.pending == 0


def test_a_lab_without_its_artifact_waits_and_restarts_its_deadline():
    from reconciler.controller.rollouts import observe_lab

    tree, target, state = lab_setup(artifact=None)
    lab = observe_lab(tree, "vibration-anomaly-2", state, target, {}, NOW, tracks_artifacts=True)
    assert lab.missing_artifacts == 3
    obs = replace(observe(tree, "vibration-anomaly-2", state, target, {}, [], NOW, True), lab=lab)
    outcome = decide(tree.rollouts["vibration-anomaly-2"].spec, state, obs, NOW, Manual())
    assert outcome.state.reason == "WaitingForArtifacts" and outcome.state.step_started == NOW.isoformat()
    assert outcome.state.lab == "Waiting"


def test_a_new_version_does_not_inherit_the_promotions_spent_on_the_last_one():
    """The promotions annotation only grows: two promotions of 1.0.0 must not pass 2.0.0's lab or first pause."""
    import yaml

    from reconciler.api import SourceFile
    from reconciler.api.status import RolloutStatus
    from reconciler.controller.rollouts import initial_state, manual_actions

    example = Path(__file__).resolve().parents[2] / "fleet-example"
    files = []
    for file in read_fleet_dir(example):
        if file.path.endswith("vibration-anomaly-2.yaml"):
            body = yaml.safe_load(file.content)
            body["metadata"]["annotations"] = {"edgereconciler.io/promotions": "2", "edgereconciler.io/retries": "1"}
            file = SourceFile(file.path, yaml.safe_dump(body).encode())
        files.append(file)
    tree = load_fleet(files)
    previous = RolloutStatus("vibration-anomaly-2", "vibration-anomaly", "1.0.0",
                             RolloutState(RolloutPhase.SUCCEEDED, promotions_seen=2, retries_seen=1))  # fmt: skip
    fresh = initial_state(tree, "vibration-anomaly-2", previous, {})
    assert (fresh.phase, fresh.stable_version, fresh.promotions_seen, fresh.retries_seen) == (
        RolloutPhase.PENDING, "1.0.0", 2, 1)  # fmt: skip
    manual = manual_actions(tree.rollouts["vibration-anomaly-2"])
    assert manual.promotions == fresh.promotions_seen  # nothing left over for the new version to spend
