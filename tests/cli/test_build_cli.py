"""`edgectl build` through the installed entry point: JSON matrix, cache hits, refusals and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EDGECTL = Path(sys.executable).parent / "edgectl"


def edgectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGECTL), *args], capture_output=True, text=True, timeout=600)


def test_build_prints_a_json_matrix_then_hits_the_cache(fleet_example: Path, tmp_path: Path):
    scope = ["--repo", str(fleet_example), "--model", "vibration-anomaly", "--version", "2.0.0",
             "--profile", "coral-npu", "--store", str(tmp_path / "store")]  # fmt: skip
    first = edgectl("build", *scope, "-o", "json")
    assert first.returncode == 0, first.stderr
    [result] = json.loads(first.stdout)
    assert (result["model"], result["version"], result["profile"], result["cached"]) == (
        "vibration-anomaly", "2.0.0", "coral-npu", False,
    )  # fmt: skip
    assert [v["name"] for v in result["variants"]] == ["fp32", "int8-only"]
    assert [v["selected"] for v in result["variants"]] == [False, True]
    assert (tmp_path / "store" / "artifacts" / f"{result['artifact']}.json").exists()

    second = edgectl("build", *scope)
    assert second.returncode == 0, second.stderr
    assert "selected (cached)" in second.stdout
    assert "int8-only" in second.stdout and "Build matrix" in second.stdout


def test_a_refused_build_exits_1_and_says_why(fleet_example: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(fleet_example), str(repo)], check=True)
    (repo / "models" / "vibration-anomaly" / "2.0.0" / "model.keras").write_bytes(b"not a model")
    result = edgectl("build", "--repo", str(repo), "--model", "vibration-anomaly", "--version", "2.0.0",
                     "--profile", "coral-npu", "--store", str(tmp_path / "store"), "-o", "json")  # fmt: skip
    assert result.returncode == 1
    [outcome] = json.loads(result.stdout)
    assert outcome["error"].startswith("vibration-anomaly@2.0.0 for coral-npu, source: source "
                                       "models/vibration-anomaly/2.0.0/model.keras has sha256 ")  # fmt: skip
    assert outcome["artifact"] is None


def test_unknown_names_are_usage_errors(fleet_example: Path, tmp_path: Path):
    result = edgectl("build", "--repo", str(fleet_example), "--model", "nope", "--store", str(tmp_path))
    assert result.returncode == 2
    assert "unknown model nope (known: digits-cnn, vibration-anomaly)" in result.stderr
