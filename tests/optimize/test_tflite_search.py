"""The search on a TFLite CPU profile: a recipe asking for dynamic-range INT8 also gets full-integer INT8 (float
I/O, calibrated), and the smaller of the passing ones ships; an integer-only profile keeps int8-only alone."""

from __future__ import annotations

import shutil
from pathlib import Path

from reconciler.api import load_fleet
from reconciler.artifact.store import ArtifactStore
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize.pipeline import build_scope

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet-example"
PROFILE = """apiVersion: edgereconciler.io/v1alpha1
kind: DeviceProfile
metadata: {name: tflite-cpu}
spec:
  selector: {matchLabels: {hw: tflite-cpu}}
  runtime: tflite
  format: tflite
  precisions: [int8, fp32]
  threads: 2
"""


def test_a_dynamic_range_recipe_also_measures_full_integer_int8(tmp_path):
    repo = tmp_path / "fleet"
    (repo / "profiles").mkdir(parents=True)
    (repo / "profiles" / "tflite-cpu.yaml").write_text(PROFILE)
    shutil.copytree(EXAMPLE / "models" / "digits-cnn", repo / "models" / "digits-cnn")
    spec = (EXAMPLE / "models" / "digits-cnn.yaml").read_text()
    head, _, _ = spec.partition("  recipes:\n")
    recipes = "  recipes:\n    - profile: tflite-cpu\n      passes:\n        - convert: {to: tflite}\n" \
              "        - quantize: {mode: dynamic}\n  gates:\n    maxAccuracyDrop: 0.02\n"  # fmt: skip
    (repo / "models" / "digits-cnn.yaml").write_text(head + recipes)
    tree = load_fleet(read_fleet_dir(repo))
    [result] = build_scope(tree, repo, ArtifactStore(tmp_path / "store"), models=["digits-cnn"], versions=["1.0.0"])
    assert result.error is None, result.error
    variants = {v.name: v for v in result.variants}
    assert sorted(variants) == ["dynamic", "fp32", "int8"]
    assert all(v.measurement is not None for v in variants.values())
    passing = [v for v in variants.values() if v.passed and v.eligible]
    assert result.selected is min(passing, key=lambda v: (v.measurement.size_bytes, -v.measurement.accuracy))
    assert result.selected.precision == "int8"
