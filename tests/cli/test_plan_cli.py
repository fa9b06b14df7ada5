"""`edgectl plan` on a crafted pull request (base and head branches of a real Git repo, an inventory of 80
devices): the device counts per step are exactly the hashed buckets, the merge moves exactly the canary,
artifacts to build are judged from cached builds, risky settings are flagged, and exit codes say
"no changes" (0), "changes" (1) and "broken head" (2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reconciler.artifact.store import ArtifactStore
from reconciler.plan import bucket

EDGECTL = Path(sys.executable).parent / "edgectl"
ROLLOUT = "vibration-anomaly-2"


def edgectl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGECTL), *map(str, args)], capture_output=True, text=True, timeout=120)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.email=dev@acme.example", "-c", "user.name=Dev", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def inventory() -> list[dict]:
    devices = []
    for i in range(80):
        if i < 40:
            labels = {"edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64"}
        elif i < 55:
            labels = {"edgereconciler.io/hardware": "coral-edgetpu"}
        else:
            labels = {"edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64"}
        site = {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east"} if i < 70 else {
            "acme.example/site-type": "store", "topology.kubernetes.io/region": "eu-west"}  # fmt: skip
        network = {"acme.example/network": "cellular" if i % 10 == 9 else "ethernet"}
        devices.append({"name": f"dev-{i:02d}", "labels": {**labels, **site, **network}})
    return devices


def targeted() -> list[str]:
    """By the rules, independently of the planner: the US factory devices (the group)."""
    return [d["name"] for d in inventory() if d["labels"]["acme.example/site-type"] == "factory"]


def eligible() -> list[str]:
    """Those the rollout's conditions let switch (a fixed network); the others stay on the stable version."""
    cellular = {d["name"] for d in inventory() if d["labels"]["acme.example/network"] == "cellular"}
    return [name for name in targeted() if name not in cellular]


@pytest.fixture
def pull_request(tmp_path: Path, fleet_example: Path) -> Path:
    """main: 2.0.0 rolled out (status Succeeded). pr: Model 2.1.0 and the rollout moved to it."""
    work = Path(shutil.copytree(fleet_example, tmp_path / "fleet", ignore=shutil.ignore_patterns("*.keras", "*.npz")))
    status = {"rollout": ROLLOUT, "model": "vibration-anomaly", "version": "2.0.0", "phase": "Succeeded",
              "currentStep": 2, "stableVersion": "1.0.0"}  # fmt: skip
    (work / "status" / "rollouts").mkdir(parents=True)
    (work / "status" / "rollouts" / f"{ROLLOUT}.yaml").write_text(yaml.safe_dump(status))
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "fleet", cwd=work)
    git("checkout", "-qb", "pr", cwd=work)
    model = work / "models" / "vibration-anomaly.yaml"
    text = model.read_text()
    model.write_text(text.replace("  recipes:\n", '    - version: "2.1.0"\n      source:\n'
                                  "        uri: models/vibration-anomaly/2.0.0/model.keras\n"
                                  "        sha256: 48e718b98b16d3729e43981c9960916c20cfa53bb67437a3b48cd4a97cbc8456\n"
                                  "  recipes:\n", 1))  # fmt: skip
    rollout = work / "rollouts" / f"{ROLLOUT}.yaml"
    rollout.write_text(
        rollout.read_text()
        .replace('version: "2.0.0"', 'version: "2.1.0"')
        .replace("    - percent: 10\n", '    - percent: 10\n      successThreshold: "90%"\n')
        .replace("  maxUnavailable: 2\n", "  maxUnavailable: 2\n  maxConcurrent: 20\n"
                 "  rate: {perMinute: 5, growthFactor: 2, growEvery: 10}\n")
    )  # fmt: skip
    git("commit", "-qam", "vibration-anomaly 2.1.0", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inventory()))
    return work


def test_plan_counts_devices_per_step_exactly(pull_request: Path, tmp_path: Path, build_store: ArtifactStore,
                                              built: dict[str, Path]):  # fmt: skip
    result = edgectl("plan", "--repo", pull_request, "--base", "main", "--head", "pr", "-o", "json",
                     "--inventory", tmp_path / "inventory.yaml", "--store", build_store.root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    names, switching = targeted(), eligible()
    assert (len(names), len(switching)) == (70, 63)
    rollout = next(r for r in body["rollouts"] if r["name"] == ROLLOUT)
    assert (rollout["change"], rollout["base_version"], rollout["version"], rollout["stable"]) == (
        "version", "2.0.0", "2.1.0", "2.0.0")  # fmt: skip
    assert rollout["targeted"] == 70 and rollout["groups"] == {"us-factories": 70}
    for step, percent in zip(rollout["steps"], (10, 50, 100), strict=True):
        expected = sum(1 for n in switching if bucket(ROLLOUT, n) < percent * 100)
        assert (step["percent"], step["on_new"], step["on_stable"]) == (percent, expected, 70 - expected)
    assert [step["done_at"] for step in rollout["steps"]] == ["90%", None, None]  # successThreshold
    assert rollout["pacing"] == "at most 20 device(s) taking it at once; 5 started a minute, x2 for every 10 Healthy"
    canary = sum(1 for n in switching if bucket(ROLLOUT, n) < 1000)
    assert 0 < canary < 63
    # The canary moves to 2.1.0; the devices the conditions held on 1.0.0 now get 2.0.0, the new stable version.
    assert body["transitions"] == [
        {"model": "vibration-anomaly", "from": "1.0.0", "to": "2.0.0", "devices": 70 - 63},
        {"model": "vibration-anomaly", "from": "2.0.0", "to": "2.1.0", "devices": canary},
    ]
    assert {d["document"] for d in body["documents"]} == {f"Rollout/{ROLLOUT}", "Model/vibration-anomaly"}
    needs = {(a["version"], a["profile"]): a for a in body["artifacts"]}
    # Needed by as many devices as run it at the busiest step: every switching device of the profile at 100 %.
    coral = {n for n in switching if 40 <= int(n[-2:]) < 55}
    assert needs[("2.1.0", "arm-cortex-a-cpu")]["devices"] == len(switching) - len(coral)
    assert needs[("2.1.0", "coral-npu")]["devices"] == len(coral)
    cortex = needs[("2.1.0", "arm-cortex-a-cpu")]
    assert not cortex["built"] and cortex["within_limits"] is True and "estimate from 2.0.0" in cortex["estimate"]
    assert needs[("2.0.0", "arm-cortex-a-cpu")]["built"]
    # digits-cnn reaches the 10 EU store devices; its groups go one after the other, and the first (canary-lab)
    # has no device here: its steps move nobody yet, and the plan says so.
    digits = next(r for r in body["rollouts"] if r["name"] == "digits-cnn-1-1")
    assert digits["targeted"] == sum(1 for n in inventory() if n["labels"]["acme.example/site-type"] == "store")
    assert digits["groups"] == {"canary-lab": 0, "eu-stores": 10}
    assert [step["on_new"] for step in digits["steps"]] == [0, 0, 0, 0]
    assert "the first step (5%) selects no device: the canary is empty" in digits["warnings"]
    assert any(w.startswith("groups one after the other") for w in digits["warnings"])


def test_markdown_and_exit_codes(pull_request: Path, tmp_path: Path):
    args = ("plan", "--repo", pull_request, "--base", "main", "--inventory", tmp_path / "inventory.yaml")
    changed = edgectl(*args, "--head", "pr", "-o", "markdown", "--exit-code")
    assert changed.returncode == 1, changed.stderr
    assert changed.stdout.startswith("### edge-reconciler plan: `main` ← `pr`")
    assert f"#### Rollout `{ROLLOUT}`: vibration-anomaly 2.0.0 → **2.1.0** (version)" in changed.stdout
    assert "| 1 ← | 10% |" in changed.stdout
    same = edgectl(*args, "--head", "main", "--exit-code")
    assert same.returncode == 0 and "No spec changes." in same.stdout and "0 device assignment(s)" in same.stdout

    # A rollout straight to 100 % without gates is flagged.
    git("checkout", "-q", "pr", cwd=pull_request)
    rollout = pull_request / "rollouts" / f"{ROLLOUT}.yaml"
    body = yaml.safe_load(rollout.read_text())
    body["spec"]["steps"] = [{"percent": 100}]
    body["spec"].pop("analysis")
    rollout.write_text(yaml.safe_dump(body))
    risky = edgectl(*args, "-o", "text")  # the working tree as the head
    assert "warning: goes to 100% in one step: no canary step" in risky.stdout
    assert "warning: no telemetry gates" in risky.stdout

    rollout.write_text(rollout.read_text().replace("percent: 100", "percent: 150"))
    broken = edgectl(*args, "-o", "markdown", "--exit-code")
    assert broken.returncode == 2
    assert "**The head does not validate: 1 error(s).**" in broken.stdout
    assert f"rollouts/{ROLLOUT}.yaml" in broken.stderr and "percent" in broken.stderr


def test_a_kubectl_node_list_lost_and_moved_back_devices_and_counts_that_add_up(pull_request: Path, tmp_path: Path):
    """The inventory as `kubectl get nodes -o json` gives it; a head that sends the rollout back to an older
    version with no stable one: the plan warns that devices move back and lose the model, every step's counts add
    up to the targeted devices, and problems past the shown ones are counted, not dropped."""
    nodes = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": d["name"], "labels": d["labels"]},
                "status": {"images": [{"names": [f"image-{k}"], "sizeBytes": 1} for k in range(5)]},
            }
            for d in inventory()
        ],
    }
    factory = {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east",
               "acme.example/network": "ethernet"}  # fmt: skip
    nodes["items"] += [{"metadata": {"name": f"odd-{i:02d}", "labels": factory}}
                       for i in range(25)]  # no profile matches: 25 problems  # fmt: skip
    (tmp_path / "nodes.json").write_text(json.dumps(nodes, indent=2))
    git("checkout", "-q", "pr", cwd=pull_request)
    rollout = pull_request / "rollouts" / f"{ROLLOUT}.yaml"
    rollout.write_text(rollout.read_text().replace('version: "2.1.0"', 'version: "1.0.0"'))
    args = ("plan", "--repo", pull_request, "--base", "main", "--inventory", tmp_path / "nodes.json")
    body = json.loads(edgectl(*args, "-o", "json").stdout)
    assert body["devices"] == 105 and len(body["problems"]) == 25
    back = next(t for t in body["transitions"] if t["from"] == "2.0.0")
    assert back["to"] == "1.0.0" and back["devices"] > 0
    assert f"{back['devices']} device(s) move back from vibration-anomaly 2.0.0 to 1.0.0" in body["warnings"]
    for item in body["rollouts"]:
        for step in item["steps"]:
            assert step["on_new"] + step["on_stable"] + step["without"] == item["targeted"], (item["name"], step)
    text = edgectl(*args).stdout
    assert "... and 5 more problem(s) (-o json lists every one)" in text
    assert text.count("\nproblem: ") == 20
    markdown = edgectl(*args, "-o", "markdown").stdout
    assert "<summary>Devices the plan cannot serve: 25</summary>" in markdown

    rollout.unlink()  # the rollout removed: every device it reached loses the model
    removed = json.loads(edgectl(*args, "-o", "json").stdout)
    lost = sum(t["devices"] for t in removed["transitions"] if t["to"] is None)
    assert lost == 70  # the odd devices never had it: no profile matches them
    assert any(w.startswith(f"{lost} device(s) lose vibration-anomaly") for w in removed["warnings"])
