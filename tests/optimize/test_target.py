"""The target-ISA check: arm64 candidates run under QEMU (an arm64 Debian root filesystem and the aarch64 wheels
of this installation's runtimes) before one ships. A candidate whose outputs on the target leave the tolerance is
refused, naming the target; without QEMU the check is recorded as not run, never faked."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reconciler.api import load_fleet
from reconciler.artifact.runtime import from_lists
from reconciler.artifact.store import ArtifactStore
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize import target
from reconciler.optimize.pipeline import BuildInputs, build_profile
from reconciler.optimize.report import render_report

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet-example"
EDGECTL = Path(sys.executable).parent / "edgectl"


@pytest.fixture(scope="module")
def tree():
    return load_fleet(read_fleet_dir(EXAMPLE))


def jetson(tree) -> BuildInputs:
    """digits-cnn 1.0.0 for the Jetson profile: arm64, ONNX, float16; a quick build."""
    model = tree.models["digits-cnn"]
    return BuildInputs(
        EXAMPLE, model, model.version("1.0.0"), tree.profiles["jetson-gpu"], model.recipe_for("jetson-gpu")
    )


def test_the_golden_outputs_are_the_targets_and_the_manifest_says_where(tree, tmp_path):
    store = ArtifactStore(tmp_path / "store")
    result = build_profile(jetson(tree), store)
    assert result.error is None, result.error
    manifest = store.read_manifest(result.artifact.id)
    check = manifest["targetCheck"]
    assert (check["isa"], check["machine"], check["cpu"], check["emulated"], check["status"]) == (
        "arm64", "aarch64", "cortex-a53", True, "checked")  # fmt: skip
    assert check["runtime"] == "onnxruntime" and check["version"]
    assert "maxDifference" not in check  # measured against this host's outputs: in the benchmark, not the id
    figures = manifest["benchmark"]["target"]["variants"][result.selected.name]
    assert 0 <= figures["maxDifference"] <= manifest["golden"]["tolerance"]["atol"]
    # Run the shipped file on the target again: the golden outputs are what it gives there.
    slot = store.export(result.artifact.id, tmp_path / "artifact")
    golden = manifest["golden"]
    again = target.check_on_target("arm64", None, "onnx", {"shipped": slot / "model.onnx"},
                                   from_lists(golden["inputs"]), tmp_path)  # fmt: skip
    np.testing.assert_allclose(again.results["shipped"].outputs, golden["outputs"], atol=1e-5)
    assert all("emulated cortex-a53" in " ".join(v.notes) for v in result.variants)

    # edgectl get benchmarks: the build machine's figures and the emulated target's, side by side.
    shown = subprocess.run([str(EDGECTL), "get", "benchmarks", "--store", str(tmp_path / "store"), "-o", "json"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    items = {item["source"]: item for item in json.loads(shown.stdout)["items"]}
    assert sorted(items) == ["build machine", "emulated"]
    assert items["build machine"]["host"]["machine"] == platform.machine()
    emulated = items["emulated"]["target"]
    assert emulated["cpu"] == "cortex-a53" and emulated["status"] == "checked"
    chosen = result.selected.name
    assert emulated["variants"][chosen]["maxDifference"] == figures["maxDifference"]
    # The build report says where each figure comes from.
    page = render_report([result])
    assert "emulated arm64 cortex-a53 (onnxruntime" in page and "emulated time is not a device figure" in page


def test_outputs_that_leave_the_tolerance_on_the_target_refuse_the_build(tree, tmp_path, monkeypatch):
    monkeypatch.setenv(target.FAULT, "outputs")  # the guest adds 1 to every output: a forced mismatch
    result = build_profile(jetson(tree), ArtifactStore(tmp_path / "store"))
    assert result.artifact is None
    assert "output difference on arm64 (onnxruntime" in result.error and "emulated cortex-a53" in result.error
    for variant in result.variants:
        assert any(f.gate.startswith("output difference on arm64") for f in variant.failures), variant.name


def test_a_candidate_that_takes_the_target_runtime_down_is_refused_alone(tree, tmp_path, monkeypatch):
    monkeypatch.setenv(target.FAULT, "crash:fp32")  # the emulated runtime dies on fp32 only
    result = build_profile(jetson(tree), ArtifactStore(tmp_path / "store"))
    variants = {v.name: v for v in result.variants}
    assert "cannot run it: the emulated runtime exited with -9" in variants["fp32"].error
    assert variants["float16"].passed and result.selected is variants["float16"], result.error


def test_without_qemu_the_check_is_recorded_as_not_run(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(target.shutil, "which", lambda tool: None)
    store = ArtifactStore(tmp_path / "store")
    result = build_profile(jetson(tree), store)
    assert result.error is None, result.error
    check = store.read_manifest(result.artifact.id)["targetCheck"]
    assert check["status"] == "not run"
    assert check["reason"].startswith("qemu-aarch64") and check["reason"].endswith("not installed")
    assert "maxDifference" not in check
