"""``edgectl plan`` on a pull request with a Kubernetes node list as the inventory, as a reviewer runs it.

fleet-example in a local Git repository (base ``main``, head ``pr``: a smaller canary step) and
``kubectl get nodes -o json`` of 1,000 and 5,000 Nodes shaped like K3s edge nodes (labels, annotations, status
with conditions and images: about 9 KB each). Prints the wall time of the whole ``edgectl plan`` process for
each, and as the baseline in the same run the time a pure-Python YAML parse of the same file takes (how the
inventory was read before: most of the minute ``plan`` took at 5,000 devices).

    python bench/plan_inventory.py            # 1,000 and 5,000 nodes
    python bench/plan_inventory.py --quick    # 200 nodes
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _check import parser, ratio, require

ROOT = Path(__file__).resolve().parents[1]
EDGECTL = Path(sys.executable).parent / "edgectl"


def node(i: int, rng: random.Random) -> dict:
    name = f"edge-{i:05d}"
    labels = {
        "acme.example/site-type": rng.choice(["factory", "store"]),
        "acme.example/network": rng.choice(["ethernet", "wifi", "cellular"]),
        "topology.kubernetes.io/region": rng.choice(["us-east", "eu-west"]),
        "edgereconciler.io/hardware": rng.choice(["cortex-a", "coral-edgetpu"]),
        "kubernetes.io/arch": "arm64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
    }  # fmt: skip
    condition = {
        "status": "False",
        "lastHeartbeatTime": "2026-01-01T00:00:00Z",
        "reason": "KubeletReady",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "message": "kubelet has sufficient memory available",
    }
    images = [{"names": [f"docker.io/library/image-{k}@sha256:{'a' * 64}", f"docker.io/library/image-{k}:v1"],
               "sizeBytes": 12_345_678} for k in range(15)]  # fmt: skip
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "uid": f"{i:036d}", "resourceVersion": str(i),
                     "annotations": {"k3s.io/node-args": json.dumps(["server"] * 20)}},
        "spec": {"podCIDR": "10.42.0.0/24", "providerID": f"k3s://{name}"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}],
                   "capacity": {"cpu": "4", "memory": "3900000Ki", "pods": "110"},
                   "conditions": [{**condition, "type": t} for t in ("MemoryPressure", "DiskPressure", "Ready")],
                   "images": images,
                   "nodeInfo": {"architecture": "arm64", "kubeletVersion": "v1.30.4+k3s1", "osImage": "Debian 12"}},
    }  # fmt: skip


def pull_request(work: Path) -> Path:
    repo = work / "fleet"
    shutil.copytree(ROOT / "fleet-example", repo, ignore=shutil.ignore_patterns("*.keras", "*.npz"))
    commit = ["-c", "user.name=bench", "-c", "user.email=bench@example", "commit", "-qam"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], [*commit, "base"], ["checkout", "-q", "-b", "pr"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    rollout = repo / "rollouts" / "vibration-anomaly-2.yaml"
    rollout.write_text(rollout.read_text().replace("- percent: 10\n", "- percent: 5\n"))
    subprocess.run(["git", *commit, "a smaller canary"], cwd=repo, check=True)
    return repo


def timed_plan(repo: Path, inventory: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([str(EDGECTL), "plan", "--repo", str(repo), "--base", "main", "--head", "pr", "-o", "json",
                           "--inventory", str(inventory)], capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - start
    require(done.returncode == 0, f"edgectl plan exited {done.returncode}: {done.stderr[-500:]}")
    body = json.loads(done.stdout)
    require(body["devices"] == len(json.loads(inventory.read_text())["items"]), "the plan read another inventory")
    require(any(r["targeted"] for r in body["rollouts"]), "no rollout targets any device: nothing was planned")
    return seconds


def main() -> None:
    args = parser(__doc__).parse_args()
    sizes = [200] if args.quick else [1_000, 5_000]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="plan-inventory-") as tmp:
        work = Path(tmp)
        repo = pull_request(work)
        for size in sizes:
            inventory = work / f"nodes-{size}.json"
            inventory.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                             "items": [node(i, rng) for i in range(size)]}, indent=4))  # fmt: skip
            timed_plan(repo, inventory)  # warm: the first run pays for the page cache and imports
            took = min(timed_plan(repo, inventory) for _ in range(3))
            start = time.perf_counter()
            yaml.load(inventory.read_text(), Loader=yaml.SafeLoader)
            parse = time.perf_counter() - start
            megabytes = inventory.stat().st_size / 2**20
            print(f"edgectl plan, kubectl node list of {size:,} nodes ({megabytes:.1f} MiB)")
            print(f"  plan (whole process)          {took:8.3f} s  (best of 3)")
            print(f"  pure-Python YAML parse alone  {parse:8.3f} s  (baseline: how the inventory was read)")
            print(f"  ratio                         {ratio(parse, took, 'YAML parse vs plan'):8.2f}x")


if __name__ == "__main__":
    main()
