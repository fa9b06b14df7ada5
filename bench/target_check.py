"""The arm64 target check: what it costs, cold and cached, and how far the emulated target's outputs are from the
build machine's for the example models.

    python bench/target_check.py [--quick]

Prints:
- the environment (arm64 root filesystem from Debian + aarch64 wheels from PyPI) made cold in an empty cache, then
  asked for again (cached), in seconds and megabytes (--quick: the machine's cache, made there when missing);
- one check of the vibration-anomaly fp32 model (one guest process, the golden rows) under emulation, against the
  same rows on the build machine: the emulation's cost as a ratio;
- every arm64 build of fleet-example (--quick: vibration-anomaly 1.0.0 for arm-cortex-a-cpu) from an empty store:
  per candidate, the largest difference between the emulated target's outputs and the build machine's, and the
  builds' wall time.

Needs qemu-user and mmdebstrap (``scripts/bootstrap --build``), the Debian mirror and PyPI for the cold run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _check import parser, ratio, require

FLEET = Path(__file__).resolve().parents[1] / "fleet-example"


def _size_mb(path: Path) -> float:
    done = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[0])


def main() -> None:
    args = parser(__doc__).parse_args()
    import json

    import numpy as np

    from reconciler.api import load_fleet
    from reconciler.artifact.runtime import ModelRunner, from_lists, row_count
    from reconciler.artifact.store import ArtifactStore
    from reconciler.gitops.files import read_fleet_dir
    from reconciler.optimize import target
    from reconciler.optimize.pipeline import build_scope

    reason = target.unavailable()
    require(reason is None, f"the target check cannot run here: {reason}")
    scratch = Path(tempfile.mkdtemp(prefix="target-bench-"))
    previous = os.environ.get("EDGE_RECONCILER_TARGETS")
    if not args.quick:
        os.environ["EDGE_RECONCILER_TARGETS"] = str(scratch / "targets")
    try:
        started = time.perf_counter()
        environment = target.ensure_environment()
        cold = time.perf_counter() - started
        started = time.perf_counter()
        target.ensure_environment()
        cached = time.perf_counter() - started
        first_call = "made" if not args.quick else "first call"
        print(f"environment: {first_call} {cold:.1f} s ({_size_mb(environment):.0f} MB), cached {cached * 1000:.1f} ms")

        tree = load_fleet(read_fleet_dir(FLEET))
        arm = sorted(n for n, p in tree.profiles.items() if target.is_arm(p.spec.arch))
        models = ["vibration-anomaly"] if args.quick else sorted(tree.models)
        versions, profiles = (["1.0.0"], ["arm-cortex-a-cpu"]) if args.quick else (None, arm)
        store = ArtifactStore(scratch / "store")
        started = time.perf_counter()
        results = list(build_scope(tree, FLEET, store, models=models, versions=versions, profiles=profiles))
        built = time.perf_counter() - started
        require(any(r.artifact for r in results), "no arm64 artifact was built")
        print(f"\narm64 builds of {', '.join(models)} ({len(results)} builds, {built:.1f} s in all):")
        print(f"{'model':<20}{'version':<9}{'profile':<18}{'candidate':<22}{'max |target - x86|':>20}")
        first = None
        for result in results:
            if result.artifact is None:
                print(f"{result.model:<20}{result.version:<9}{result.profile:<18}refused: {result.error[:80]}")
                continue
            manifest = json.loads(store.read_blob(result.artifact.manifest))
            checked = manifest["benchmark"].get("target") or {}
            for name, figures in sorted((checked.get("variants") or {}).items()):
                chosen = " (shipped)" if result.selected and name == result.selected.name else ""
                difference = figures.get("maxDifference")
                shown = f"{difference:.3g}" if difference is not None else figures.get("error", "not run")[:40]
                print(f"{result.model:<20}{result.version:<9}{result.profile:<18}{name + chosen:<22}{shown:>20}")
            if first is None and manifest["format"] == "onnx":
                first = (result, manifest)
        require(first is not None, "no ONNX artifact to time one check on")

        result, manifest = first
        folder = store.export(result.artifact.id, scratch / "artifact")
        rows = from_lists(manifest["golden"]["inputs"])
        started = time.perf_counter()
        check = target.check_on_target("arm64", None, "onnx", {"shipped": folder / "model.onnx"}, rows, scratch)
        emulated = time.perf_counter() - started
        require(check.status == "checked" and check.results["shipped"].error is None, "the check did not run")
        started = time.perf_counter()
        host = ModelRunner(folder / "model.onnx", "onnx", 1).run(rows)
        on_host = time.perf_counter() - started
        difference = float(np.max(np.abs(check.results["shipped"].outputs - host)))
        print(
            f"\none check ({result.model} {result.version}, {result.selected.name}, {row_count(rows)} rows): "
            f"{emulated:.2f} s emulated (guest start, runtime import, session, rows) vs {on_host * 1000:.1f} ms on "
            f"the build machine: x{ratio(emulated, on_host, 'host run'):.0f}; outputs within {difference:.3g}"
        )
    finally:
        if previous is None:
            os.environ.pop("EDGE_RECONCILER_TARGETS", None)
        else:
            os.environ["EDGE_RECONCILER_TARGETS"] = previous
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
