"""Loader throughput: validate a generated fleet repo of many documents.

Prints the time of the full pipeline (event scan, C-loader parse, pydantic validation, cross-checks)
and, as the baseline in the same run, the time PyYAML's pure-Python safe_load takes to merely parse
the same bytes. Usage: python bench/load_fleet.py [MODELS] [--quick]   (each model brings 2 rollouts, 1 group;
default 1,000 models and best of 3 runs, --quick: 20 models and 1 run)
"""

from __future__ import annotations

import time

import yaml
from _check import parser, ratio, require

from reconciler.api import SourceFile, load_fleet

HEADER = "apiVersion: edgereconciler.io/v1alpha1\n"
PROFILES = "".join(
    f"""---
{HEADER}kind: DeviceProfile
metadata: {{name: p{i}}}
spec:
  selector: {{matchLabels: {{hw: p{i}}}}}
  runtime: onnxruntime
  format: onnx
  precisions: [int8, fp32]
  limits: {{maxModelSize: 16Mi, maxLatencyP95: 20ms}}
"""
    for i in range(3)
)


def model_files(n: int) -> list[SourceFile]:
    files = [SourceFile("profiles.yaml", PROFILES.encode())]
    for i in range(n):
        text = f"""{HEADER}kind: DeviceGroup
metadata: {{name: g{i}}}
spec:
  selector:
    matchLabels: {{site: s{i}}}
    matchExpressions: [{{key: region, operator: In, values: [eu, us]}}]
---
{HEADER}kind: Model
metadata: {{name: m{i}}}
spec:
  data: {{calibration: data/m{i}.npz}}
  versions:
    - {{version: "1.0.0", source: {{uri: m/{i}/1.onnx, sha256: {"a" * 64}}}}}
    - {{version: "2.0.0", source: {{uri: m/{i}/2.onnx, sha256: {"b" * 64}}}}}
  recipes:
    - profile: p{i % 3}
      passes: [{{quantize: {{mode: static}}}}]
---
{HEADER}kind: Rollout
metadata: {{name: r{i}}}
spec:
  model: m{i}
  version: "2.0.0"
  groups: [g{i}]
  steps: [{{percent: 5, pause: {{duration: 10m}}}}, {{percent: 50}}, {{percent: 100}}]
  analysis: {{maxFailureRate: 0.05, minDevicesReporting: 3}}
---
{HEADER}kind: Rollout
metadata: {{name: r{i}-old}}
spec: {{model: m{i}, version: "1.0.0", groups: [g{i}], steps: [{{percent: 100}}], suspend: true}}
"""
        files.append(SourceFile(f"models/m{i}.yaml", text.encode()))
    return files


def best_of(runs: int, fn):
    """The shortest of ``runs`` timings, and what the last call returned (for the caller to check)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("models", type=int, nargs="?", help="models (default 1,000; 20 with --quick)")
    args = arguments.parse_args()
    models = args.models if args.models is not None else 20 if args.quick else 1000
    runs = 1 if args.quick else 3
    files = model_files(models)
    documents = 3 + 4 * models
    size = sum(len(f.content or b"") for f in files)
    full, tree = best_of(runs, lambda: load_fleet(files))
    loaded = len(tree.profiles) + len(tree.groups) + len(tree.models) + len(tree.rollouts)
    require(models > 0, "no models: the fleet holds only its profiles")
    require(loaded == documents, f"load_fleet kept {loaded} of {documents} documents")
    baseline, parsed = best_of(runs, lambda: [doc for f in files for doc in yaml.safe_load_all(f.content)])
    require(len(parsed) == documents, f"the baseline parsed {len(parsed)} of {documents} documents")
    print(f"documents: {documents}  files: {len(files)}  bytes: {size}")
    print(f"load_fleet (scan + C parse + validate + cross-check): {full * 1000:.0f} ms  "
          f"({ratio(documents, full, 'documents/s'):.0f} documents/s)")  # fmt: skip
    print(f"baseline yaml.safe_load_all (pure-Python parse only):  {baseline * 1000:.0f} ms")
    print(f"ratio baseline / load_fleet: {ratio(baseline, full, 'baseline / load_fleet'):.2f}x")


if __name__ == "__main__":
    main()
