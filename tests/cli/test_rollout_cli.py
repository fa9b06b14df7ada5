"""`edgectl rollout pause|resume|promote|abort|retry`: each action is one commit that changes one annotation,
keeps the file's comments, and leaves the fleet valid; the controller's engine reads them back."""

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


def test_each_action_is_one_commit_on_one_annotation(tmp_path: Path, fleet_example: Path):
    work = checkout(tmp_path, fleet_example)
    rollout_file = work / "rollouts" / f"{NAME}.yaml"
    header = rollout_file.read_text().splitlines()[0]
    steps = [("pause", {"edgereconciler.io/paused": "true"}),
             ("resume", {}),
             ("promote", {"edgereconciler.io/promotions": "1"}),
             ("promote", {"edgereconciler.io/promotions": "2"}),
             ("abort", {"edgereconciler.io/promotions": "2", "edgereconciler.io/abort": "aborted by a person"}),
             ("retry", {"edgereconciler.io/promotions": "2", "edgereconciler.io/retries": "1"})]  # fmt: skip
    for action, expected in steps:
        result = edgectl("rollout", action, NAME, "--repo", work)
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
    assert len(git("log", "--format=%s", cwd=work).splitlines()) == 1 + len(steps)


def test_an_unknown_rollout_is_a_clear_error(tmp_path: Path, fleet_example: Path):
    work = checkout(tmp_path, fleet_example)
    result = edgectl("rollout", "pause", "nope", "--repo", work)
    assert result.returncode == 1 and "no Rollout named nope" in result.stderr
