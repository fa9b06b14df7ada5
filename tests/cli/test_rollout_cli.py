"""`edgectl rollout pause|resume|promote|abort|retry --via-git`: each action is one commit that changes one
annotation, keeps the file's comments, and leaves the fleet valid; the controller's engine reads them back. An
action its rollout's phase makes no sense for, or a checkout on another branch than the fleet's, is refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from reconciler.api import load_fleet
from reconciler.controller.rollouts import manual_actions
from reconciler.gitops.files import read_fleet_dir

EDGECTL = Path(sys.executable).parent / "edgectl"
NAME = "digits-cnn-1-1"


def edgectl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGECTL), *map(str, args)], capture_output=True, text=True, timeout=120)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def checkout(tmp_path: Path, fleet_example: Path) -> Path:
    work = Path(shutil.copytree(fleet_example, tmp_path / "fleet", ignore=shutil.ignore_patterns("*.keras", "*.npz")))
    git("init", "-q", "-b", "main", cwd=work)
    git("-c", "user.email=dev@acme.example", "-c", "user.name=Dev", "add", "-A", cwd=work)
    git("-c", "user.email=dev@acme.example", "-c", "user.name=Dev", "commit", "-qm", "fleet", cwd=work)
    git("config", "user.email", "ops@acme.example", cwd=work)
    git("config", "user.name", "Ops Person", cwd=work)
    return work


def set_phase(work: Path, phase: str) -> None:
    """The rollout's status file as the controller would have committed it (pulled into the checkout)."""
    status = work / "status" / "rollouts" / f"{NAME}.yaml"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text(yaml.safe_dump({"apiVersion": "edgereconciler.io/v1alpha1", "kind": "RolloutStatus",
                                      "rollout": NAME, "model": "digits-cnn", "version": "1.1.0", "phase": phase,
                                      "currentStep": 0}))  # fmt: skip
    git("-c", "user.email=bot@acme.example", "-c", "user.name=edge-reconciler", "add", "-A", cwd=work)
    git("-c", "user.email=bot@acme.example", "-c", "user.name=edge-reconciler", "commit", "-qm", f"status: {phase}",
        cwd=work)  # fmt: skip


def test_each_action_is_one_commit_on_one_annotation(tmp_path: Path, fleet_example: Path):
    work = checkout(tmp_path, fleet_example)
    set_phase(work, "Progressing")
    rollout_file = work / "rollouts" / f"{NAME}.yaml"
    header = rollout_file.read_text().splitlines()[0]
    steps = [("pause", {"edgereconciler.io/paused": "true"}),
             ("resume", {}),
             ("promote", {"edgereconciler.io/promotions": "1"}),
             ("promote", {"edgereconciler.io/promotions": "2"}),
             ("abort", {"edgereconciler.io/promotions": "2", "edgereconciler.io/abort": "aborted by a person"}),
             ("retry", {"edgereconciler.io/promotions": "2", "edgereconciler.io/retries": "1"})]  # fmt: skip
    for action, expected in steps:
        if action == "retry":
            set_phase(work, "Aborted")  # the controller took the abort
        result = edgectl("rollout", action, NAME, "--via-git", "--repo", work)
        assert result.returncode == 0, result.stderr
        assert git("status", "--porcelain", cwd=work) == ""
        assert git("log", "-1", "--format=%an|%s", cwd=work).startswith(f"Ops Person|rollout {NAME}: {action}")
        assert git("show", "--name-only", "--format=", "HEAD", cwd=work) == f"rollouts/{NAME}.yaml"
        document = yaml.safe_load(rollout_file.read_text())
        assert document["metadata"].get("annotations", {}) == expected, action
        assert rollout_file.read_text().splitlines()[0] == header  # comments stay
        tree = load_fleet(read_fleet_dir(work))  # still a valid fleet
    manual = manual_actions(tree.rollouts[NAME])
    assert (manual.paused, manual.promotions, manual.retries, manual.abort) == (False, 2, 1, None)
    assert len(git("log", "--format=%s", cwd=work).splitlines()) == 3 + len(steps)


def test_actions_that_make_no_sense_now_and_other_branches_are_refused(tmp_path: Path, fleet_example: Path):
    work = checkout(tmp_path, fleet_example)
    commits = git("rev-list", "--count", "HEAD", cwd=work)
    for action, words in (("promote", "has not started this version yet (Pending)"),
                          ("retry", "only an Aborted rollout is retried; it is Pending"),
                          ("resume", "it is not paused")):  # fmt: skip
        refused = edgectl("rollout", action, NAME, "--via-git", "--repo", work)
        assert refused.returncode == 1 and words in refused.stderr, (action, refused.stderr)
    set_phase(work, "Succeeded")
    done = edgectl("rollout", "abort", NAME, "--via-git", "--repo", work)
    assert done.returncode == 1 and "the rollout is Succeeded" in done.stderr
    set_phase(work, "Progressing")
    git("switch", "-q", "-c", "feature", cwd=work)
    elsewhere = edgectl("rollout", "pause", NAME, "--via-git", "--repo", work)
    assert elsewhere.returncode == 1 and "not on the fleet's branch main" in elsewhere.stderr
    assert git("rev-list", "--count", "HEAD", cwd=work) == str(int(commits) + 2)  # the two status commits only
    nowhere = edgectl("rollout", "pause", NAME, "--repo", work)  # neither a controller nor --via-git
    assert nowhere.returncode == 2 and "--controller URL" in nowhere.stderr


def test_an_unknown_rollout_is_a_clear_error(tmp_path: Path, fleet_example: Path):
    work = checkout(tmp_path, fleet_example)
    result = edgectl("rollout", "pause", "nope", "--via-git", "--repo", work)
    assert result.returncode == 1 and 'rollout "nope" not found' in result.stderr
