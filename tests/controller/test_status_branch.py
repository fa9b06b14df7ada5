"""Status on a branch of its own (Fleet ``spec.statusBranch``), on real Git and both backends: the fleet's branch
gets people's commits and rollback decisions only, the status branch every status file; an edit of the status
branch is restored and reported like any tamper; `edgectl get` and `describe` read the status branch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from reconciler.controller.loop import Controller, ControllerConfig

from ..git_server import GitServer, git
from .test_state import DEVICES, ROLLOUT, STATUS_FILE, annotate, on_new_version, person_commits

EDGECTL = Path(sys.executable).parent / "edgectl"
BRANCH = "edgereconciler/status"


def log(bare: Path, branch: str) -> list[str]:
    return git("log", "--format=%an|%s", branch, cwd=bare).splitlines()


def test_status_goes_to_its_branch_and_only_decisions_to_the_fleets(git_server: GitServer, tmp_path: Path, backend):
    url, work = git_server.create("fleet")  # the example keeps status on edgereconciler/status
    bare = git_server.base / "fleet.git"
    controller = Controller(ControllerConfig(url, tmp_path / "state"), backend)
    first = controller.cycle()
    assert first.stalled is None and first.status_commit is not None
    started = on_new_version(backend)
    assert 0 < len(started) < DEVICES
    assert [line.split("|")[0] for line in log(bare, "main")] == ["A Developer"]  # nothing of ours
    assert STATUS_FILE not in git("ls-tree", "-r", "--name-only", "main", cwd=bare)
    status = yaml.safe_load(git("show", f"{BRANCH}:{STATUS_FILE}", cwd=bare))
    assert (status["phase"], status["devices"]["onNewVersion"]) == ("Progressing", len(started))
    assert controller.cycle().status_commit is None  # nothing changed: no commit anywhere

    # Someone edits the status branch: no device moves, the file is restored and the tamper reported.
    tamper = tmp_path / "tamper"
    git("clone", "-q", "-b", BRANCH, str(bare), str(tamper))
    forged = yaml.safe_load((tamper / STATUS_FILE).read_text())
    (tamper / STATUS_FILE).write_text(yaml.safe_dump({**forged, "step": 3}))
    git("-c", "user.name=Mallory", "-c", "user.email=m@example", "commit", "-qam", "skip ahead", cwd=tamper)
    git("push", "-q", "origin", f"HEAD:{BRANCH}", cwd=tamper)
    restored = controller.cycle()
    assert restored.stalled is None and on_new_version(backend) == started
    assert yaml.safe_load(git("show", f"{BRANCH}:{STATUS_FILE}", cwd=bare)) == status
    report = yaml.safe_load(git("show", f"{BRANCH}:status/controller.yaml", cwd=bare))
    assert report["lastTamper"]["paths"] == [STATUS_FILE]

    # An abort: the rollback decision lands on the fleet's branch; the status on the status branch.
    person_commits(work, "Abort", annotate("edgereconciler.io/abort", "bad outputs"))
    aborted = controller.cycle()
    assert aborted.stalled is None and len(aborted.rollbacks) == 1 and on_new_version(backend) == set()
    mine = [line for line in log(bare, "main") if line.startswith("edge-reconciler|")]
    assert len(mine) == 1 and mine[0].startswith(f"edge-reconciler|rollback: {ROLLOUT}")
    assert yaml.safe_load(git("show", f"{BRANCH}:{STATUS_FILE}", cwd=bare))["phase"] == "Aborted"

    # The read-only commands read the status branch.
    shown = subprocess.run([str(EDGECTL), "get", "rollouts", "--repo", str(bare)], capture_output=True, text=True)
    assert shown.returncode == 0 and "Aborted" in shown.stdout, shown.stderr
    described = subprocess.run([str(EDGECTL), "describe", "rollout", ROLLOUT, "--repo", str(bare)],
                               capture_output=True, text=True).stdout  # fmt: skip
    assert "Phase:           Aborted" in described and f"rollback: {ROLLOUT}" in described
