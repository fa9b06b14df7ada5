"""Apply cost on the real Kubernetes API server, and the time from a Git commit to every assignment written.

Starts its own kube-apiserver + etcd (scripts/kube-test-env), registers N Nodes (default 1,000), then:
- first apply of a rollout at 100 % (requests and seconds), against the baseline of the same number of
  sequential server-side applies sent one by one in the same run;
- a no-op reconcile (requests must be 0 with watches running);
- commit -> all assignments written: a bare fleet repo, a commit that changes the rollout's version,
  then one controller cycle (fetch, load, plan, apply, status commit), timed end to end.

    python bench/apply_kube.py [NODES]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from kubernetes import client

from reconciler.cluster import kubernetes_backend
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.controller.reconcile import reconcile
from reconciler.gitops.files import read_fleet_dir
from reconciler.plan import Desired, RolloutPosition
from reconciler.api import load_fleet

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east",
          "edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64"}  # fmt: skip


def count_requests(api: client.ApiClient) -> Counter[str]:
    counts: Counter[str] = Counter()
    pool = api.rest_client.pool_manager
    original = pool.request

    def request(method, url, *args, **kwargs):
        counts[method.upper()] += 1
        return original(method, url, *args, **kwargs)

    pool.request = request
    return counts


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def main() -> None:
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        kube = ROOT / "scripts" / "kube-test-env"
        kubeconfig = Path(subprocess.run([str(kube), "start", str(work / "kube")], check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1])  # fmt: skip
        try:
            run(nodes, work, kubeconfig)
        finally:
            subprocess.run([str(kube), "stop", str(work / "kube")], check=False)


def run(nodes: int, work: Path, kubeconfig: Path) -> None:
    backend = kubernetes_backend(kubeconfig, "edge-bench", "bench=1")
    backend.install()
    core = client.CoreV1Api(backend.api)
    start = time.perf_counter()
    for i in range(nodes):
        labels = {**LABELS, "bench": "1"}
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=f"edge-{i:05d}", labels=labels)))
    print(f"{nodes} Nodes registered in {time.perf_counter() - start:.1f} s")
    tree = load_fleet(read_fleet_dir(ROOT / "fleet-example"))
    counts = count_requests(backend.api)

    backend.start_watches()
    counts.clear()
    start = time.perf_counter()
    first = reconcile(tree, backend, {"vibration-anomaly-2": RolloutPosition(100)})
    first_s = time.perf_counter() - start
    first_requests = sum(counts.values())
    counts.clear()
    start = time.perf_counter()
    noop = reconcile(tree, backend, {"vibration-anomaly-2": RolloutPosition(100)})
    noop_s = time.perf_counter() - start

    # Baseline: the same number of applies, one at a time, on another namespace.
    sequential = kubernetes_backend(kubeconfig, "edge-bench-seq", "bench=1")
    sequential.install()
    specs = [Desired(d.device, d.model, d.version, d.profile, d.rollout, None, True) for d in first.changes.apply]
    start = time.perf_counter()
    for spec in specs:
        sequential._apply_one(spec)
    sequential_s = time.perf_counter() - start

    print(f"first apply      {first.applied:5d} assignments  {first_s:6.2f} s  {first_requests} requests "
          f"({dict(counts) or 'PATCH per assignment'})")  # fmt: skip
    print(f"sequential apply {len(specs):5d} assignments  {sequential_s:6.2f} s  (baseline, one at a time)")
    print(f"ratio sequential/first  {sequential_s / first_s:.2f}x")
    print(f"no-op reconcile  {noop.applied:5d} writes       {noop_s:6.3f} s  {sum(counts.values())} requests")

    # Commit -> all assignments written, through Git and one controller cycle.
    bare = work / "fleet.git"
    seed = work / "seed"
    shutil.copytree(ROOT / "fleet-example", seed, ignore=shutil.ignore_patterns("*.keras", "*.npz"))
    git("init", "-q", "-b", "main", cwd=seed)
    git("-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "fleet", "--allow-empty", cwd=seed)
    git("add", "-A", cwd=seed)
    git("-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "fleet", cwd=seed)
    git("clone", "-q", "--bare", str(seed), str(bare), cwd=work)
    controller = Controller(ControllerConfig(str(bare), work / "state"), backend)
    controller.cycle()  # steady state at the first step
    git("-c", "user.email=b@b", "-c", "user.name=b", "pull", "-q", "--rebase", str(bare), "main", cwd=seed)
    rollout = seed / "rollouts" / "vibration-anomaly-2.yaml"
    rollout.write_text(rollout.read_text().replace("percent: 10\n", "percent: 100\n").replace(
        "    - percent: 50\n      pause: {duration: 4h}\n    - percent: 100\n", ""))  # fmt: skip
    git("-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qam", "Straight to 100%", cwd=seed)
    start = time.perf_counter()
    git("push", "-q", str(bare), "HEAD:main", cwd=seed)
    outcome = controller.cycle()
    commit_s = time.perf_counter() - start
    print(f"commit -> {outcome.applied} assignments written and status committed: {commit_s:.2f} s "
          f"(stalled: {outcome.stalled})")  # fmt: skip
    backend.stop_watches()


if __name__ == "__main__":
    main()
