"""Where a rollout stands is the controller's record in its backend, not a file anyone can push: an edited,
deleted or force-pushed-away status file changes no device's assignment, is restored and reported; an abort
returns the devices even while Git refuses the rollback commit, and the commit lands once Git takes it.
On real Git (git daemon) and on both backends (SQLite, and a real Kubernetes API server)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from reconciler.cluster import AssignmentStatus, LocalBackend
from reconciler.controller.loop import Controller, ControllerConfig

from ..git_server import GitServer, git
from .test_controller import FACTORY

ROLLOUT = "vibration-anomaly-2"
STATUS_FILE = f"status/rollouts/{ROLLOUT}.yaml"
DEVICES = 40


def on_new_version(backend) -> set[str]:
    return {device for (device, _), spec in backend.assignments().items() if spec.version == "2.0.0"}


def at_head(git_server: GitServer, path: str) -> dict | None:
    bare = git_server.base / "fleet.git"
    if path not in git("ls-tree", "-r", "--name-only", "main", cwd=bare).splitlines():
        return None
    return yaml.safe_load(git("show", f"main:{path}", cwd=bare))


def person_commits(work: Path, message: str, change) -> None:
    git("pull", "-q", "--rebase", "origin", "main", cwd=work)
    change(work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)


def annotate(key: str, value: str):
    """A change that sets an annotation on the rollout (a person's action: abort, pause)."""

    def change(folder: Path) -> None:
        path = folder / "rollouts" / f"{ROLLOUT}.yaml"
        body = yaml.safe_load(path.read_text())
        body["metadata"].setdefault("annotations", {})[key] = value
        path.write_text(yaml.safe_dump(body, sort_keys=False))

    return change


def forge_last_step(work: Path) -> None:
    path = work / STATUS_FILE
    body = yaml.safe_load(path.read_text())
    body.update(step=3, phase="Progressing")
    path.write_text(yaml.safe_dump(body))


def delete_status(work: Path) -> None:
    (work / STATUS_FILE).unlink()


def force_push_before_status(work: Path) -> None:
    """History rewritten: the branch back to the person's first commit, the controller's status commits gone."""
    git("fetch", "-q", "origin", cwd=work)
    first = git("rev-list", "--max-parents=0", "origin/main", cwd=work)
    git("push", "-q", "-f", "origin", f"{first}:main", cwd=work)


EVERY_ROLLOUT = ["status/rollouts/digits-cnn-1-1.yaml", STATUS_FILE]


@pytest.mark.parametrize(
    ("tamper", "reported"),
    [
        pytest.param(lambda w: person_commits(w, "Skip to the last step", forge_last_step), [STATUS_FILE],
                     id="forged-edit"),
        pytest.param(lambda w: person_commits(w, "Remove status", delete_status), [STATUS_FILE], id="deleted"),
    ],
)  # fmt: skip
def test_a_status_file_changed_by_someone_else_moves_no_device_and_is_restored(
    git_server: GitServer, tmp_path: Path, backend, tamper, reported: list[str]
):
    url, work = git_server.create("fleet", status_branch="main")
    controller = Controller(ControllerConfig(url, tmp_path / "state"), backend)
    first = controller.cycle()
    assert first.stalled is None
    started = on_new_version(backend)
    assert 0 < len(started) < DEVICES  # step 1: the hashed 10 %
    rendered = at_head(git_server, STATUS_FILE)
    assert rendered["step"] == 1

    tamper(work)
    after = controller.cycle()
    assert after.stalled is None and after.applied == 0
    assert on_new_version(backend) == started  # nobody promoted, nobody sent back
    assert at_head(git_server, STATUS_FILE) == rendered  # restored from the controller's record
    report = at_head(git_server, "status/controller.yaml")["lastTamper"]
    assert (report["reason"], report["paths"]) == ("StatusTampered", reported)
    tampered = controller.metrics.registry.get_sample_value("edge_reconciler_status_tampered_total")
    assert tampered == len(reported)
    # Restored once: the next cycle finds its own file and reports nothing new.
    again = controller.cycle()
    assert again.status_commit is None and on_new_version(backend) == started
    assert controller.metrics.registry.get_sample_value("edge_reconciler_status_tampered_total") == tampered


def test_an_abort_returns_the_devices_while_git_refuses_the_rollback_commit(
    git_server: GitServer, tmp_path: Path, backend
):
    url, work = git_server.create("fleet", status_branch="main")
    controller = Controller(ControllerConfig(url, tmp_path / "state"), backend)
    assert controller.cycle().stalled is None
    assert on_new_version(backend)

    person_commits(
        work, "Abort the vibration rollout", annotate("edgereconciler.io/abort", "field reports of bad output")
    )
    git_server.hook("fleet", "pre-receive", "#!/bin/sh\necho 'pushes are frozen' >&2\nexit 1\n")
    held = controller.cycle()
    assert held.stalled is not None and "pre-receive hook declined" in held.stalled
    assert on_new_version(backend) == set()  # every device is back on the stable version already
    record = backend.rollouts()[ROLLOUT]
    assert (record.status.phase, record.synced) == ("Aborted", False)
    assert record.pending.startswith(f"rollback: {ROLLOUT}")
    # The decision is an event on the rollout whether or not Git took the commit (kubectl get events shows it).
    decided = {(e.reason, e.type) for e in backend.events("Rollout", ROLLOUT)}  # the same second: either order
    assert decided == {("Start", "Normal"), ("Abort", "Warning")}

    git_server.hook("fleet", "pre-receive", "#!/bin/sh\nexit 0\n")
    landed = controller.cycle()
    assert landed.stalled is None and len(landed.rollbacks) == 1
    subjects = git("log", "--format=%s", "main", cwd=git_server.base / "fleet.git").splitlines()
    assert subjects[1].startswith(f"rollback: {ROLLOUT}") and subjects[0].startswith("status:")
    assert at_head(git_server, STATUS_FILE)["phase"] == "Aborted"
    record = backend.rollouts()[ROLLOUT]
    assert record.synced and record.pending is None
    assert controller.cycle().status_commit is None and on_new_version(backend) == set()


@pytest.mark.parametrize("accept", ["flag", "annotation"])
def test_a_force_push_past_the_applied_commit_stalls_until_a_person_accepts_it(
    git_server: GitServer, tmp_path: Path, backend, accept: str
):
    url, work = git_server.create("fleet", status_branch="main")
    controller = Controller(ControllerConfig(url, tmp_path / "state"), backend)
    assert controller.cycle().stalled is None
    started = on_new_version(backend)
    person_commits(work, "Notes", lambda folder: (folder / "notes.yaml").write_text("# reviewed\n"))
    assert controller.cycle().stalled is None
    applied = controller.source.applied()
    assert applied == git("rev-parse", "HEAD", cwd=work)  # the person's commit, verified and applied
    force_push_before_status(work)  # that commit and the status commits gone from the branch
    held = controller.cycle()
    assert held.stalled.startswith("HistoryRewritten") and applied[:12] in held.stalled
    assert on_new_version(backend) == started and held.applied == 0
    assert controller.cycle().stalled.startswith("HistoryRewritten")  # until a person says so

    if accept == "flag":
        controller = Controller(ControllerConfig(url, tmp_path / "state", accept_rewrite=True), backend)
    else:

        def annotate(folder: Path) -> None:
            fleet = folder / "fleet.yaml"
            fleet.write_text(
                fleet.read_text().replace(
                    "  name: acme-edge\n",
                    f'  name: acme-edge\n  annotations:\n    edgereconciler.io/accept-rewrite: "{applied[:12]}"\n',
                )
            )

        git("reset", "-q", "--hard", "origin/main", cwd=work)
        person_commits(work, "Accept the rewrite", annotate)
    going = controller.cycle()
    assert going.stalled is None and on_new_version(backend) == started
    # The rewrite dropped every status file: restored from the controller's record, and reported.
    assert at_head(git_server, STATUS_FILE)["step"] == 1
    assert at_head(git_server, "status/controller.yaml")["lastTamper"]["paths"] == EVERY_ROLLOUT
    assert controller.cycle().stalled is None  # the new head is what was applied last


def test_max_concurrent_lets_devices_take_the_new_version_only_as_others_report_a_verdict(
    git_server: GitServer, tmp_path: Path, backend
):
    url, work = git_server.create("fleet", status_branch="main")

    def one_step_three_at_a_time(folder: Path) -> None:
        path = folder / "rollouts" / f"{ROLLOUT}.yaml"
        body = yaml.safe_load(path.read_text())
        body["spec"].update(steps=[{"percent": 100}], maxConcurrent=3, maxUnavailable=0)
        body["spec"]["analysis"] = {"maxFailureRate": 0.5}
        path.write_text(yaml.safe_dump(body, sort_keys=False))

    person_commits(work, "One step, three devices at a time", one_step_three_at_a_time)
    controller = Controller(ControllerConfig(url, tmp_path / "state"), backend)

    def report(devices: set[str], phase: str) -> None:
        installed = "2.0.0" if phase == "Healthy" else "1.0.0"
        for device in devices:
            status = AssignmentStatus(phase, installed_version=installed, target_version="2.0.0")
            backend.report_status(device, "vibration-anomaly", status)

    assert controller.cycle().stalled is None
    first = on_new_version(backend)
    assert len(first) == 3  # the whole fleet is in the step; three take it at once
    assert controller.cycle().applied == 0 and on_new_version(backend) == first  # nobody reported: nobody more

    report(first, "Healthy")
    controller.cycle()
    second = on_new_version(backend) - first
    assert len(second) == 3
    failed, *busy = sorted(second)
    report({failed}, "Failed")  # a verdict too: its place goes to the next device
    report(set(busy), "Downloading")
    controller.cycle()
    assert len(on_new_version(backend)) == 7
    status = backend.rollouts()[ROLLOUT].status
    assert status.phase == "Progressing" and status.state.last_admitted is not None

    person_commits(work, "Pause", annotate("edgereconciler.io/paused", "true"))
    report(on_new_version(backend) - first - {failed}, "Healthy")  # places free up, but a paused rollout holds
    controller.cycle()
    assert backend.rollouts()[ROLLOUT].status.phase == "Paused" and len(on_new_version(backend)) == 7


def test_a_rate_starts_devices_per_minute_and_grows_while_they_succeed(git_server: GitServer, tmp_path: Path, backend):
    url, work = git_server.create("fleet", status_branch="main")

    def paced(folder: Path) -> None:
        path = folder / "rollouts" / f"{ROLLOUT}.yaml"
        body = yaml.safe_load(path.read_text())
        body["spec"].update(steps=[{"percent": 100}], maxUnavailable=0,
                            rate={"perMinute": 2, "growthFactor": 2, "growEvery": 2})  # fmt: skip
        body["spec"]["analysis"] = {"maxFailureRate": 0.5}
        path.write_text(yaml.safe_dump(body, sort_keys=False))

    person_commits(work, "Two devices a minute, doubling", paced)
    now = {"t": datetime(2026, 12, 4, 12, 0, tzinfo=UTC)}
    controller = Controller(ControllerConfig(url, tmp_path / "state"), backend, clock=lambda: now["t"])

    def report(devices, phase: str) -> None:
        for device in devices:
            installed = "2.0.0" if phase == "Healthy" else "1.0.0"
            status = AssignmentStatus(phase, installed_version=installed, target_version="2.0.0")
            backend.report_status(device, "vibration-anomaly", status)

    controller.cycle()
    first = on_new_version(backend)
    assert len(first) == 2  # a minute's worth at once
    controller.cycle()
    assert on_new_version(backend) == first  # the same minute: nobody more

    report(first, "Healthy")  # two succeeded: the rate doubles to 4 a minute
    now["t"] += timedelta(minutes=1)
    controller.cycle()
    second = on_new_version(backend) - first
    assert len(second) == 4

    report(sorted(second)[:2], "Healthy")
    report(sorted(second)[2:], "Failed")  # 2 of 6 verdicts failed, over the 5 % the rate grows under
    now["t"] += timedelta(minutes=1)
    controller.cycle()
    assert len(on_new_version(backend)) == 8  # back to 2 a minute


def test_sequential_groups_walk_every_step_one_group_after_the_other(git_server: GitServer, tmp_path: Path, backend):
    url, work = git_server.create("fleet", status_branch="main")

    def canary_first(folder: Path) -> None:
        path = folder / "rollouts" / f"{ROLLOUT}.yaml"
        body = yaml.safe_load(path.read_text())
        body["spec"].update(groups=["canary-lab", "us-factories"], groupStrategy="Sequential", maxUnavailable=0,
                            steps=[{"percent": 50}, {"percent": 100}])  # fmt: skip
        body["spec"]["analysis"] = {"maxFailureRate": 0.5}
        path.write_text(yaml.safe_dump(body, sort_keys=False))

    person_commits(work, "The lab first, then the factories", canary_first)
    backend.sync()
    names = sorted(d.name for d in backend.devices())
    lab = set(names[:10])
    for name in lab:  # in the canary ring too: the first group of the rollout that matches is the device's
        if isinstance(backend, LocalBackend):
            backend.register_device(name, {**FACTORY, "edgereconciler.io/ring": "canary"})
        else:
            client.CoreV1Api(backend.api).patch_node(
                name, {"metadata": {"labels": {"edgereconciler.io/ring": "canary"}}}
            )
    controller = Controller(ControllerConfig(url, tmp_path / "state"), backend)

    def cycle_and_settle() -> set[str]:
        assert controller.cycle().stalled is None
        on_new = on_new_version(backend)
        for device in on_new:
            status = AssignmentStatus("Healthy", installed_version="2.0.0", target_version="2.0.0")
            backend.report_status(device, "vibration-anomaly", status)
        return on_new

    first = cycle_and_settle()
    assert first and first < lab and len(first) < len(lab)  # half of the lab, no factory line yet
    assert cycle_and_settle() == lab  # the lab at 100 %; the factories still wait
    third = cycle_and_settle()
    assert lab < third and 0 < len(third - lab) < len(names) - len(lab)  # the factories' first step
    state = backend.rollouts()[ROLLOUT].status.state
    assert (state.group, state.step) == (1, 0)
    assert cycle_and_settle() == set(names)
    assert cycle_and_settle() == set(names) and backend.rollouts()[ROLLOUT].status.phase == "Succeeded"


def test_a_rollout_whose_build_is_missing_waits_for_it_then_proceeds(git_server: GitServer, tmp_path: Path, backend):
    """The store has the stable version's build only: the step's devices wait (never failed, the rollout never
    aborted) and move once the build lands in the store."""
    from reconciler.artifact.store import ArtifactStore

    store = ArtifactStore(tmp_path / "store")

    def build(version: str) -> str:
        manifest = f'{{"model": "vibration-anomaly", "version": "{version}", "profile": "arm-cortex-a-cpu"}}'
        artifact = hashlib.sha256(manifest.encode()).hexdigest()
        store.add_artifact(artifact, {"manifest.json": manifest.encode()}, "manifest.json")
        return artifact

    stable = build("1.0.0")
    url, _ = git_server.create("fleet", status_branch="main")
    controller = Controller(ControllerConfig(url, tmp_path / "state", store=tmp_path / "store"), backend)
    for _ in range(2):
        outcome = controller.cycle()
        assert outcome.stalled is None
        waiting = on_new_version(backend)
        assert 0 < len(waiting) < DEVICES  # the step's hashed share: told the version, with nothing to fetch yet
        artifacts = {(spec.version, spec.artifact) for spec in backend.assignments().values()}
        assert artifacts == {("1.0.0", stable), ("2.0.0", None)}
        state = backend.rollouts()[ROLLOUT].status.state
        assert (state.phase, state.reason, state.step, state.failures) == ("Progressing", "WaitingForArtifacts", 0, 0)
        assert "Abort" not in outcome.decisions.values()

    new = build("2.0.0")
    controller.cycle()
    assert on_new_version(backend) == waiting
    assert {backend.assignments()[(d, "vibration-anomaly")].artifact for d in waiting} == {new}
    state = backend.rollouts()[ROLLOUT].status.state
    assert state.phase == "Progressing" and state.reason != "WaitingForArtifacts"
