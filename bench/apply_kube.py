"""Apply cost on the real Kubernetes API server, and the time from a Git commit to every assignment written.

Starts its own kube-apiserver + etcd (scripts/kube-test-env), or uses the one ``--kubeconfig`` names, registers
N Nodes (default 1,000; 20 with ``--quick``) that the example fleet's rollout targets, then:
- first apply of a rollout at 100 % (requests and seconds), against the baseline of the same number of
  sequential server-side applies sent one by one in the same run;
- a no-op reconcile (no write; with watches running, no request either);
- commit -> all assignments written: a bare fleet repo, a commit that takes the rollout straight to 100 %,
  then one controller cycle (fetch, load, plan, apply, status commit), timed end to end.

    python bench/apply_kube.py [NODES] [--quick] [--kubeconfig PATH]

Nodes and namespaces are named after a run id of its own, and on a server it did not start its Nodes are deleted
at the end: a test session sharing that server never sees them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from _check import fail, parser, ratio, require
from kubernetes import client

from reconciler.api import FleetTree, load_fleet
from reconciler.api.types import LabelSelector
from reconciler.cluster import kubernetes_backend
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.controller.reconcile import reconcile
from reconciler.gitops.files import read_fleet_dir
from reconciler.plan import Desired, Device, RolloutPosition, plan

ROOT = Path(__file__).resolve().parents[1]
ROLLOUT = "vibration-anomaly-2"
# What fleet-example asks of a device for ROLLOUT: the arm-cortex-a-cpu profile, the us-factories group, and
# the rollout's conditions (a fixed network link). check_labels says which one a change to the fleet broke.
LABELS = {"acme.example/site-type": "factory", "topology.kubernetes.io/region": "us-east",
          "edgereconciler.io/hardware": "cortex-a", "kubernetes.io/arch": "arm64",
          "acme.example/network": "ethernet"}  # fmt: skip
RUN_LABEL = "bench.edgereconciler.io/run"


def unmet(selector: LabelSelector, labels: dict[str, str]) -> list[str]:
    """The requirements of ``selector`` that ``labels`` fail, written as in the specs."""
    failed = [f"{key}={value}" for key, value in selector.match_labels.items() if labels.get(key) != value]
    failed += [f"{r.key} {r.operator} {r.values}" for r in selector.match_expressions if not r.matches(labels)]
    return failed


def check_labels(tree: FleetTree, labels: dict[str, str]) -> None:
    """Before any Node exists: a Node with ``labels`` must get ROLLOUT's version at 100 %, or every figure
    below would time an apply of nothing. Says which selector of the fleet the labels miss."""
    rollout = tree.rollouts[ROLLOUT]
    probe = plan(tree, [Device("probe", labels)], {ROLLOUT: RolloutPosition(100)})
    wanted = probe.desired.get(("probe", rollout.spec.model))
    if wanted is not None and wanted.in_rollout:
        return
    why = [p.message for p in probe.problems]
    groups = {g: unmet(tree.groups[g].spec.selector, labels) for g in rollout.spec.groups if g in tree.groups}
    if all(groups.values()):
        why += [f"group {g} needs {', '.join(missing)}" for g, missing in groups.items()]
    if rollout.spec.conditions is not None and (missing := unmet(rollout.spec.conditions, labels)):
        why.append(f"{ROLLOUT}'s conditions need {', '.join(missing)}")
    fail(f"Nodes labelled {labels} get nothing from {ROLLOUT} at 100 %: {'; '.join(why) or 'no reason found'}")


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
    arguments = parser(__doc__)
    arguments.add_argument("nodes", type=int, nargs="?", help="Nodes to register (default 1,000; 20 with --quick)")
    arguments.add_argument("--kubeconfig", type=Path, help="an API server already running (default: start one)")
    args = arguments.parse_args()
    nodes = args.nodes if args.nodes is not None else 20 if args.quick else 1000
    require(nodes > 0, "no Nodes: there would be nothing to apply")
    tree = load_fleet(read_fleet_dir(ROOT / "fleet-example"))
    check_labels(tree, LABELS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.kubeconfig is not None:
            run(tree, nodes, work, args.kubeconfig, cleanup=True)
            return
        kube = ROOT / "scripts" / "kube-test-env"
        kubeconfig = Path(subprocess.run([str(kube), "start", str(work / "kube")], check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1])  # fmt: skip
        try:
            run(tree, nodes, work, kubeconfig, cleanup=False)
        finally:
            subprocess.run([str(kube), "stop", str(work / "kube")], check=False)


def run(tree: FleetTree, nodes: int, work: Path, kubeconfig: Path, cleanup: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    backend = kubernetes_backend(kubeconfig, f"edge-bench-{tag}", f"{RUN_LABEL}={tag}")
    backend.install()
    core = client.CoreV1Api(backend.api)
    names = [f"edge-{tag}-{i:05d}" for i in range(nodes)]
    try:
        start = time.perf_counter()
        for name in names:
            labels = {**LABELS, RUN_LABEL: tag}
            core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels)))
        print(f"{nodes} Nodes registered in {time.perf_counter() - start:.1f} s")
        measure(tree, nodes, work, kubeconfig, backend, tag)
    finally:
        backend.stop_watches()
        if cleanup:
            for name in names:
                core.delete_node(name)


def measure(tree: FleetTree, nodes: int, work: Path, kubeconfig: Path, backend, tag: str) -> None:
    counts = count_requests(backend.api)

    backend.start_watches()
    require(len(backend.devices()) == nodes, f"the inventory lists {len(backend.devices())} of {nodes} Nodes")
    counts.clear()
    start = time.perf_counter()
    first = reconcile(tree, backend, {ROLLOUT: RolloutPosition(100)})
    first_s = time.perf_counter() - start
    first_requests = sum(counts.values())
    first_methods = dict(counts)
    require(first.applied == nodes, f"first apply wrote {first.applied} assignments for {nodes} Nodes at 100 % "
                                    f"(plan problems: {first.plan.problems[:3]})")  # fmt: skip
    counts.clear()
    start = time.perf_counter()
    noop = reconcile(tree, backend, {ROLLOUT: RolloutPosition(100)})
    noop_s = time.perf_counter() - start
    require(not noop.changes, f"the no-op reconcile changed {len(noop.changes.apply)} and deleted "
                              f"{len(noop.changes.delete)} assignments: it was not a no-op")  # fmt: skip

    # Baseline: the same number of applies, one at a time, on another namespace.
    sequential = kubernetes_backend(kubeconfig, f"edge-bench-{tag}-seq", f"{RUN_LABEL}={tag}")
    sequential.install()
    specs = [Desired(d.device, d.model, d.version, d.profile, d.rollout, None, True) for d in first.changes.apply]
    start = time.perf_counter()
    for spec in specs:
        sequential._apply_one(spec)
    sequential_s = time.perf_counter() - start
    require(sequential.writes == first.applied, f"the baseline wrote {sequential.writes} of {first.applied}")

    print(f"first apply      {first.applied:5d} assignments  {first_s:6.2f} s  {first_requests} requests "
          f"({first_methods or 'PATCH per assignment'})")  # fmt: skip
    print(f"sequential apply {len(specs):5d} assignments  {sequential_s:6.2f} s  (baseline, one at a time)")
    print(f"ratio sequential/first  {ratio(sequential_s, first_s, 'sequential/first'):.2f}x")
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
    steady = controller.cycle()  # steady state at the first step
    require(steady.stalled is None, f"the controller stalled on the example fleet: {steady.stalled}")
    git("-c", "user.email=b@b", "-c", "user.name=b", "pull", "-q", "--rebase", str(bare), "main", cwd=seed)
    rollout = seed / "rollouts" / "vibration-anomaly-2.yaml"
    steps = rollout.read_text()
    straight = steps.replace("percent: 10\n", "percent: 100\n").replace(
        "    - percent: 50\n      pause: {duration: 4h}\n    - percent: 100\n", "")  # fmt: skip
    require(straight != steps, f"{rollout.name} no longer has the steps this edit rewrites to one 100 % step")
    rollout.write_text(straight)
    git("-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qam", "Straight to 100%", cwd=seed)
    start = time.perf_counter()
    git("push", "-q", str(bare), "HEAD:main", cwd=seed)
    outcome = controller.cycle()
    commit_s = time.perf_counter() - start
    require(outcome.stalled is None, f"the controller stalled after the commit: {outcome.stalled}")
    require(outcome.applied > 0, f"the commit to 100 % wrote no assignment ({nodes} Nodes, {steady.applied} "
                                 f"written at the first step): nothing was timed")  # fmt: skip
    print(f"commit -> {outcome.applied} assignments written and status committed: {commit_s:.2f} s "
          f"(stalled: {outcome.stalled})")  # fmt: skip


if __name__ == "__main__":
    main()
