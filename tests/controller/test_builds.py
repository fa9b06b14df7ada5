"""Merge is enough: a merged rollout whose artifacts do not exist waits while the controller builds them (real
`edgectl build-job` worker processes, the real build pipeline), the builder signs them with its own key, the
controller publishes them through TUF and real agents install them; a build whose gates refuse stops the
rollout with the build's report and no device moves; a restarted controller never starts a running build
again. The store is the session's build store, so the builds are cache hits of the real pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.artifact.jobs import BuildRequest, JobDirectory, JobState, holding
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.deviceapi.client import DeviceAPIBackend
from reconciler.signing import ReleaseSigner, TrustPolicy, generate_key

from ..device_fleet import FLEET, MODEL, PROFILE, Fleet
from ..git_server import GitServer, git
from ..rollout.test_end_to_end import LABELS

EDGECTL = Path(sys.executable).parent / "edgectl"
ROLLOUT = "vibration-anomaly-2"
ROLLOUT_YAML = """apiVersion: edgereconciler.io/v1alpha1
kind: Rollout
metadata:
  name: vibration-anomaly-2
spec:
  model: vibration-anomaly
  version: "2.0.0"
  groups: [us-factories]
  steps:
    - percent: 50
    - percent: 100
  analysis:
    maxFailureRate: 0.5
    minDevicesReporting: 1
"""
DEVICES = [f"factory-{i:02d}" for i in range(4)]


def builder_fleet(git_server: GitServer, tmp_path: Path, max_size: str | None = None) -> tuple[str, Path, Path]:
    """The example fleet with its models and data, the Cortex-A recipe only, in builder mode; no rollout yet.
    Returns (URL, working clone, the builder's private key)."""
    seed = tmp_path / "seed"
    shutil.copytree(FLEET, seed, ignore=shutil.ignore_patterns("status"))
    for rollout in (seed / "rollouts").glob("*.yaml"):
        rollout.unlink()
    model_file = seed / "models" / f"{MODEL}.yaml"
    model = yaml.safe_load(model_file.read_text())
    model["spec"]["recipes"] = [r for r in model["spec"]["recipes"] if r["profile"] == PROFILE]
    if max_size:
        model["spec"]["gates"]["maxSize"] = max_size
    model_file.write_text(yaml.safe_dump(model, sort_keys=False))
    builder = generate_key(tmp_path / "builder" / "ci-builder")
    (seed / "keys").mkdir()
    shutil.copy(builder.public, seed / "keys" / "ci-builder.pub")
    fleet = yaml.safe_load((seed / "fleet.yaml").read_text())
    fleet["spec"]["statusBranch"] = "main"
    fleet["spec"]["trust"] = {"mode": "offline-key", "release": "builder",
                              "builder": {"name": "ci-builder", "publicKey": "keys/ci-builder.pub",
                                          "models": [MODEL], "maxCounter": 10}}  # fmt: skip
    (seed / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    url, work = git_server.create("fleet", seed=None)
    git("rm", "-q", "README.md", cwd=work)
    shutil.copytree(seed, work, dirs_exist_ok=True)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "fleet with models and data", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return url, work, builder.private


def merge_rollout(work: Path) -> None:
    (work / "rollouts" / f"{ROLLOUT}.yaml").write_text(ROLLOUT_YAML)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "vibration-anomaly 2.0.0 to the US factories", cwd=work)
    git("pull", "-q", "--rebase", "origin", "main", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)


def controller_of(fleet: Fleet, url: str, builder_key: Path, build_store) -> Controller:
    """On the fleet's own TUF repository (state directory = the fleet's root) and store."""
    config = ControllerConfig(url, fleet.root, store=build_store.root, releases=fleet.root / "releases",
                              tuf_keys=fleet.root / "keys", builder_key=builder_key, interval=1.0)  # fmt: skip
    return Controller(config, fleet.backend)


def agent_of(fleet: Fleet, device: str, builder_public: Path) -> Agent:
    client = fleet.client(device)
    policy = TrustPolicy((ReleaseSigner("ci-builder", public_key=builder_public, models=(MODEL,), max_counter=10),))
    config = AgentConfig(device, PROFILE, fleet.root / "devices" / device, client.repository_url, policy,
                         fleet.pinned_root, heartbeat_seconds=1.0, trial_period=timedelta(0))  # fmt: skip
    return Agent(config, DeviceAPIBackend(client), http=lambda: client.pool)


def status_of(git_server: GitServer) -> dict:
    return yaml.safe_load(git("show", f"main:status/rollouts/{ROLLOUT}.yaml", cwd=git_server.base / "fleet.git"))


def test_a_merged_rollout_is_built_signed_published_and_installed(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    for name in DEVICES:
        fleet.backend.register_device(name, LABELS)
    url, work, builder_key = builder_fleet(git_server, tmp_path)
    merge_rollout(work)
    controller = controller_of(fleet, url, builder_key, build_store)
    first = controller.cycle()
    assert first.stalled is None and first.builds is not None
    # The rollout's version, and the stable version the devices outside its steps keep; one worker at a time.
    wanted = [(j.request.model, j.request.version, j.request.profile) for j in first.builds.jobs]
    assert wanted == [(MODEL, "1.0.0", PROFILE), (MODEL, "2.0.0", PROFILE)]
    started = list(first.builds.started)
    assert started == [f"{MODEL} 1.0.0 for {PROFILE}"]
    status = status_of(git_server)
    assert status["reason"] == "WaitingForArtifacts" and "(0/1 built)" in status["message"], status
    assert not [a for a in fleet.backend.assignments().values() if a.version == "2.0.0" and a.artifact]

    # The controller is replaced while the build runs: the new one finds it running and starts nothing.
    controller = controller_of(fleet, url, builder_key, build_store)
    agents = {name: agent_of(fleet, name, work / "keys" / "ci-builder.pub") for name in DEVICES}
    deadline = time.monotonic() + 600  # stops a hung test; times nothing
    while time.monotonic() < deadline:
        outcome = controller.cycle()
        started += outcome.builds.started
        assert len(started) == len(set(started)), f"a build was started twice: {started}"
        status = status_of(git_server)
        if status["phase"] == "Succeeded":
            break
        for agent in agents.values():
            agent.cycle()
        controller.wake.wait(0.5)
    assert status["phase"] == "Succeeded", status
    jobs = JobDirectory(fleet.root / "builds").all()
    assert len(jobs) == 2 and all(j.state is JobState.SUCCEEDED and j.attempts == 1 for j in jobs)
    released = fleet.root / "releases" / "built" / f"{MODEL}-2.0.0-{PROFILE}"
    assert (released / "release.json").exists() and str(released) in {j.result.released for j in jobs}
    assert {fleet.backend.statuses()[(n, MODEL)].installed_version for n in DEVICES} == {"2.0.0"}
    assert all("building from fleet commit" in (j.directory / "log").read_text() for j in jobs)
    listed = subprocess.run([str(EDGECTL), "get", "builds", "--state-dir", str(fleet.root), "-o", "json"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    items = json.loads(listed)["items"]
    assert [(i["request"]["version"], i["state"], i["attempts"]) for i in items] == [
        ("1.0.0", "Succeeded", 1), ("2.0.0", "Succeeded", 1)]  # fmt: skip


def test_a_refused_build_stops_the_rollout_with_its_report_and_no_device_moves(
    fleet: Fleet, git_server: GitServer, tmp_path: Path, build_store
):
    for name in DEVICES:
        fleet.backend.register_device(name, LABELS)
    url, work, builder_key = builder_fleet(git_server, tmp_path, max_size="1Ki")
    merge_rollout(work)
    controller = controller_of(fleet, url, builder_key, build_store)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        controller.cycle()
        status = status_of(git_server)
        if status["reason"] == "BuildRefused":
            break
        controller.wake.wait(0.5)
    assert status["reason"] == "BuildRefused", status
    assert f"build of {MODEL} 2.0.0 for {PROFILE} refused" in status["message"] and "size" in status["message"]
    assert not list((fleet.root / "releases").glob("**/release.sig"))
    assert not [a for a in fleet.backend.assignments().values() if a.version == "2.0.0" and a.artifact]
    assert controller.cycle().builds.started == []  # refused is a result: fixed by a commit, not by retrying
    [event] = [e for e in fleet.backend.events("Rollout", ROLLOUT) if e.reason == "BuildRefused"]
    assert event.type == "Warning" and event.count == 1 and "refused" in event.message


def test_a_worker_builds_only_under_the_jobs_lock(tmp_path: Path):
    from reconciler.optimize.job import run_job

    jobs = JobDirectory(tmp_path / "builds")
    request = BuildRequest(MODEL, "2.0.0", PROFILE, "0" * 40, "a" * 64)
    assert jobs.create(request, datetime.now(UTC)) and not jobs.create(request, datetime.now(UTC))
    directory = jobs.path(request.key)
    with holding(directory) as mine:
        assert mine
        assert jobs.read(request.key).state is JobState.RUNNING
        said: list[str] = []
        assert run_job(directory, tmp_path / "no-git", None, say=said.append) is None  # type: ignore[arg-type]
        assert "another worker is building it" in said[0]
    assert jobs.read(request.key).state is JobState.QUEUED
