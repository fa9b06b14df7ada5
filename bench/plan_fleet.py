"""Planning throughput: desired state for a large simulated fleet.

100,000 devices (labels: hardware class, region, site, ring, a unique hostname), 20 groups, 10 rollouts of
10 models, 3 device profiles. Prints the plan time and, as the baseline in the same run, the time of one
naive pass that evaluates every group selector of every rollout on every device without memoization.

    python bench/plan_fleet.py [DEVICES] [--quick]      # --quick: 1,000 devices
"""

from __future__ import annotations

import random
import time

from _check import parser, ratio, require

from reconciler.api import SourceFile, load_fleet
from reconciler.plan import Device, RolloutPosition, plan

HEADER = "apiVersion: edgereconciler.io/v1alpha1\n"
REGIONS = ["eu-west", "eu-central", "us-east", "us-west", "ap-south"]


def fleet_files() -> list[SourceFile]:
    docs = []
    for i, (runtime, fmt) in enumerate([("onnxruntime", "onnx"), ("onnxruntime", "onnx"), ("tflite", "tflite")]):
        docs.append(f"""{HEADER}kind: DeviceProfile
metadata: {{name: p{i}}}
spec: {{selector: {{matchLabels: {{hw: p{i}}}}}, runtime: {runtime}, format: {fmt}, precisions: [fp32]}}
""")
    for g in range(20):
        docs.append(f"""{HEADER}kind: DeviceGroup
metadata: {{name: g{g}}}
spec:
  selector:
    matchLabels: {{site: s{g % 10}}}
    matchExpressions: [{{key: region, operator: In, values: [{REGIONS[g % 5]}, {REGIONS[(g + 1) % 5]}]}}]
""")
    for m in range(10):
        recipes = "".join(f"\n    - profile: p{p}" for p in range(3))
        docs.append(f"""{HEADER}kind: Model
metadata: {{name: m{m}}}
spec:
  versions:
    - {{version: "1.0.0", source: {{uri: m/{m}/1.keras, sha256: {"a" * 64}}}}}
    - {{version: "2.0.0", source: {{uri: m/{m}/2.keras, sha256: {"b" * 64}}}}}
  recipes:{recipes}
""")
        docs.append(f"""{HEADER}kind: Rollout
metadata: {{name: r{m}}}
spec: {{model: m{m}, version: "2.0.0", groups: [g{2 * m}, g{2 * m + 1}], steps: [{{percent: 5}}, {{percent: 100}}]}}
""")
    return [SourceFile(f"doc{i}.yaml", text.encode()) for i, text in enumerate(docs)]


def devices(n: int) -> list[Device]:
    rng = random.Random(1)
    return [
        Device(
            f"edge-{i:06d}",
            {
                "hw": f"p{rng.randrange(3)}",
                "region": rng.choice(REGIONS),
                "site": f"s{rng.randrange(10)}",
                "ring": rng.choice(["canary", "main"]),
                "kubernetes.io/hostname": f"edge-{i:06d}",
            },
        )
        for i in range(n)
    ]


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("devices", type=int, nargs="?", help="fleet size (default 100,000; 1,000 with --quick)")
    args = arguments.parse_args()
    count = args.devices if args.devices is not None else 1_000 if args.quick else 100_000
    tree = load_fleet(fleet_files())
    fleet = devices(count)
    positions = {name: RolloutPosition(50, "1.0.0") for name in tree.rollouts}

    start = time.perf_counter()
    result = plan(tree, fleet, positions)
    plan_s = time.perf_counter() - start

    start = time.perf_counter()
    selectors = [tree.groups[g].spec.selector for r in tree.rollouts.values() for g in r.spec.groups]
    naive = sum(1 for d in fleet for s in selectors if s.matches(d.labels))
    naive_s = time.perf_counter() - start

    inside = sum(1 for d in result.desired.values() if d.in_rollout)
    require(result.desired, f"the plan for {count} devices holds no assignment (no device matched a group)")
    require(inside, f"no device of {count} is on the new version at 50 %: the rollouts' percent was not applied")
    require(naive, f"the naive pass found no group match on {count} devices: the baseline evaluated nothing")
    require(not result.problems, f"{len(result.problems)} plan problems, first: {result.problems[:1]}")
    print(f"{count} devices, {len(tree.groups)} groups, {len(tree.rollouts)} rollouts, {len(tree.profiles)} profiles")
    planned = f"{len(result.desired)} assignments, {inside} on the new version"
    print(f"  plan                        {plan_s:.3f} s  ({planned})")
    print(f"  naive selector pass         {naive_s:.3f} s  ({naive} group matches)")
    print(f"  ratio naive/plan            {ratio(naive_s, plan_s, 'naive/plan'):.2f}x")


if __name__ == "__main__":
    main()
