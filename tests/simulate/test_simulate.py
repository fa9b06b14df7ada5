"""The fleet simulator: its fault draws and figures (pure), and a 1,000-device scenario through ``edgectl simulate``:
a real controller and device API, devices over mutual TLS, a rollout to Succeeded and a defective release that must
abort before it reaches 5 % of the fleet."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cluster import LocalBackend, kubernetes_backend
from reconciler.simulate import results
from reconciler.simulate.faults import SHARES, Defect, Faults, draw, offline_periods
from reconciler.simulate.scenario import NODE_LABEL

EDGECTL = Path(sys.executable).parent / "edgectl"
_runs = itertools.count()


def test_fault_draws_are_reproducible_and_near_their_shares():
    faults = Faults(offline=0.05, flaky=0.1, crash=0.02, churn=0.04, skew=0.1, slow=0.3, bandwidth=0.2)
    names = [f"sim-{i:06d}" for i in range(10_000)]
    traits = [draw(name, faults, seed=7) for name in names]
    assert traits == [draw(name, faults, seed=7) for name in names]
    assert traits != [draw(name, faults, seed=8) for name in names]
    for share in SHARES:
        expected = getattr(faults, share)
        if share == "churn":
            found = sum(1 for t in traits if t.joins_after or t.leaves_after is not None) / len(traits)
        elif share == "skew":
            found = sum(1 for t in traits if t.skew_seconds) / len(traits)
        elif share == "bandwidth":
            found = sum(1 for t in traits if t.bandwidth) / len(traits)
        else:
            found = sum(1 for t in traits if getattr(t, share)) / len(traits)
        assert abs(found - expected) < 0.015, (share, found, expected)
    assert all(abs(t.skew_seconds) <= faults.skew_seconds for t in traits)
    assert all(0 < t.joins_after <= faults.churn_seconds for t in traits if t.joins_after)


def test_offline_periods_stay_within_the_horizon_and_do_not_overlap():
    periods = offline_periods("sim-000001", seed=0, mean=60, horizon=7200)
    assert periods and all(start < end <= start + 240 for start, end in periods)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(periods))
    assert periods[-1][0] < 7200
    assert offline_periods("sim-000001", seed=0, mean=0, horizon=7200) == []


@pytest.mark.parametrize(("kwargs", "named"), [({"offline": 1.5}, "--offline"), ({"churn": -0.1}, "--churn"),
                                                ({"cut_chance": 2}, "--cut-chance"),
                                                ({"bandwidth_bytes": 10}, "--bandwidth-bytes")])  # fmt: skip
def test_fault_settings_out_of_range_are_refused_by_name(kwargs, named):
    with pytest.raises(ValueError, match=named):
        Faults(**kwargs)


def test_defect_parse():
    assert Defect.parse("2.1.0") == Defect("2.1.0", 1.0)
    assert Defect.parse("2.1.0=0.3") == Defect("2.1.0", 0.3)
    for bad in ("2.1.0=x", "=0.5", "2.1.0=1.5"):
        with pytest.raises(ValueError, match="--defective"):
            Defect.parse(bad)


def test_convergence_figures_from_events():
    events = [(100.0 + i, f"d{i}", "m", "2.0.0", "Healthy") for i in range(10)]
    events += [(101.0, "d0", "m", "2.0.0", "Healthy"), (50.0, "d9", "m", "2.0.0", "Healthy")]
    events += [(105.0, "x", "m", "1.0.0", "Healthy"), (106.0, "y", "m", "2.0.0", "Trial")]
    converged = results.converged_at(events, "2.0.0", since=100.0)
    assert converged["d0"] == 0.0 and converged["d9"] == 9.0 and "x" not in converged and "y" not in converged
    assert results.time_to_share(converged, 10, (50, 90, 99)) == {"50": 4.0, "90": 8.0, "99": 9.0}
    assert results.time_to_share(converged, 20, (50, 90)) == {"50": 9.0, "90": None}
    assert results.exposed(events, "1.0.0", since=0) == {"x"}
    line = results.timeline(events, 100.0, 110.0, 5.0, "2.0.0")
    assert line["healthy-new"] == [2, 7, 10] and line["healthy-old"] == [0, 1, 1] and line["trial"] == [0, 0, 1]


def test_comparison_flags_a_regression_beyond_the_noise_only():
    history = [{"cycle": 1.0}, {"cycle": 1.1}, {"cycle": 0.9}, {"cycle": 1.05}]
    assert results.compare({"cycle": 1.12}, history) == []
    assert results.compare({"cycle": 0.5}, history) == []  # faster is never a regression
    [found] = results.compare({"cycle": 2.0}, history)
    assert found.startswith("cycle: 2 is") and "standard deviations" in found
    assert results.compare({"cycle": 1.2}, [{"cycle": 1.0}]) == []
    assert "above the last run" in results.compare({"cycle": 1.3}, [{"cycle": 1.0}])[0]
    assert results.compare({"new": 5.0}, history) == []  # nothing to compare with
    flat = [{"p": 2.0}] * 5  # identical runs: a 5 % floor, so a small wobble is not a regression
    assert results.compare({"p": 2.2}, flat) == [] and results.compare({"p": 2.5}, flat)


def test_simulate_refuses_bad_options_before_starting_anything(tmp_path: Path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    for args, message in ((["--offline", "2"], "--offline"), (["--steps", "30,20"], "--steps"),
                          (["--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "--device-api-processes", "2"],
                           "--device-api-processes is for --backend local")):  # fmt: skip
        done = subprocess.run([str(EDGECTL), "simulate", *args, "--workdir", str(tmp_path / "w")],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert not (tmp_path / "w").exists()


@pytest.mark.timeout(1800)
def test_a_thousand_devices_converge_and_a_defect_aborts_early(tmp_path: Path, fleet_example: Path):
    """1,000 devices, 5 % offline at times, 10 % on flaky links, 1 % crashing mid-install, some joining late or
    leaving, skewed clocks: the three-step rollout succeeds and 99 % converge; the defective release is given to
    the first step only (under 5 % of the fleet) and aborted by the failure gate; nothing is refused or logged as
    an error on either side."""
    workdir, plot = tmp_path / "sim", tmp_path / "phases.png"
    command = [str(EDGECTL), "simulate", "--devices", "1000", "--offline", "0.05", "--flaky", "0.1", "--crash",
               "0.01", "--churn", "0.01", "--skew", "0.02", "--bandwidth", "0.02", "--slow", "0.02", "--poll", "10",
               "--pause", "15", "--trial", "10", "--interval", "3", "--timeout", "420", "--seed", "0", "--plot",
               str(plot), "--workdir", str(workdir), "--fleet-example", str(fleet_example)]  # fmt: skip
    # Bounded inside: each of enrolment, the rollout and the defect waits at most --timeout, so the run ends (and
    # stops its processes) before this timeout would kill it.
    done = subprocess.run(command, capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)

    assert result["enrolled"] == 1000
    rollout = result["rollout"]
    assert rollout["phase"] == "Succeeded"
    assert [d["decision"] for d in rollout["decisions"]] == ["Start", "Promote", "Promote", "Succeed"]
    assert rollout["converged"]["99"] is not None
    assert rollout["converged"]["50"] <= rollout["converged"]["90"] <= rollout["converged"]["99"]
    defect = result["defect"]
    assert defect["phase"] == "Aborted"
    assert defect["decisions"][-1]["decision"] == "Abort" and "failureRate" in defect["decisions"][-1]["message"]
    assert defect["exposed"] > 0 and defect["exposedShare"] < 0.05
    assert defect["failed"] >= 1

    # The faults happened (seed 0 draws 6 crashing, 47 offline and 101 flaky devices), and nothing was lost to them.
    transfers = result["transfers"]
    assert transfers["cuts"] > 0 and transfers["resumed"] > 0 and transfers["crashes"] > 0
    assert result["devicesWithFault"]["offline"] > 20 and result["devicesWithFault"]["flaky"] > 50
    assert result["verification"]["fullChecks"] >= 4  # per artifact and worker at least
    assert result["controller"]["errorCount"] == 0, result["controller"]["errors"]
    assert result["deviceErrorCount"] == 0, result["deviceErrors"]
    assert result["deviceApi"]["refused"] == {}
    assert result["reportsLost"] == 0 and result["workersLost"] == 0
    assert result["telemetry"]["stored"] > 0 and result["telemetry"]["notStored"] == {}
    assert result["controller"]["cycles"] > 10 and result["controller"]["cycleSeconds"]["p99"] is not None
    assert result["deviceApi"]["p99Ms"] is not None and result["statusCommits"] > 0
    assert result["bytesServed"]["byKind"]["artifact"] > 0
    # Two device API processes served the fleet, and the controller's count has every byte either one sent.
    assert result["deviceApiProcesses"] == 2 and result["controller"]["deviceApiHelpersRssBytes"] > 0
    assert result["bytesServed"]["byKind"]["artifact"] >= result["bytesServed"]["downloadedByDevices"]

    # The controller's own record agrees: the devices that stayed report Healthy on 2.0.0.
    backend = LocalBackend(workdir / "controller")
    try:
        statuses = backend.statuses()
    finally:
        backend.close()
    healthy = sum(1 for s in statuses.values() if s.phase == "Healthy" and s.installed_version == "2.0.0")
    assert healthy >= 0.95 * 1000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(900)
def test_on_kubernetes_the_devices_are_nodes_and_the_run_leaves_nothing_behind(
    tmp_path: Path, fleet_example: Path, kubeconfig: Path
):
    """The Kubernetes backend: each simulated device is a Node on a real kube-apiserver (nothing else puts them in the
    controller's inventory: their tokens carry no labels), assignments and statuses are ModelAssignments, the device
    registry is custom objects. The rollout converges and the defect aborts there too; at the end the Nodes and the
    namespace's objects are gone. A namespace in use is refused before anything is made or removed."""
    namespace = f"simulate-{next(_runs)}"
    command = [str(EDGECTL), "simulate", "--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "-n", namespace,
               "--devices", "40", "--steps", "10,50", "--poll", "3", "--pause", "5", "--trial",
               "3", "--interval", "2", "--timeout", "300", "--fleet-example", str(fleet_example)]  # fmt: skip
    done = subprocess.run([*command, "--workdir", str(tmp_path / "run")], capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert (result["backend"], result["enrolled"], result["deviceApiProcesses"]) == ("kubernetes", 40, 1)
    assert result["rollout"]["phase"] == "Succeeded" and result["rollout"]["converged"]["99"] is not None
    assert result["defect"]["phase"] == "Aborted" and result["defect"]["exposed"] < 40
    assert result["reportsLost"] == 0 and result["controller"]["errorCount"] == 0, result["controller"]["errors"]
    assert result["deviceErrorCount"] == 0, result["deviceErrors"]

    backend = kubernetes_backend(kubeconfig, namespace, f"{NODE_LABEL}={namespace}")
    backend.sync()
    assert backend.devices() == [] and set(backend.namespace_objects().values()) == {0}

    # In use (a Node carries the run's label): refused, and that Node is left alone.
    backend.create_nodes({f"{namespace}-someone-else": {NODE_LABEL: namespace}})
    refused = subprocess.run([*command, "--workdir", str(tmp_path / "again")], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert refused.returncode == 1 and f"namespace {namespace} is in use (1 nodes" in refused.stderr
    backend.sync()
    assert [d.name for d in backend.devices()] == [f"{namespace}-someone-else"]
    backend.delete_nodes(f"{NODE_LABEL}={namespace}")
