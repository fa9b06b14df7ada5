"""`edgectl validate` and `edgectl schema export` through the installed entry point, as a person runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from reconciler.api.schema import export_schemas

EDGECTL = Path(sys.executable).parent / "edgectl"
CORPUS = Path(__file__).resolve().parents[1] / "api" / "corpus"


def edgectl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGECTL), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_validate_example_fleet_prints_a_summary(fleet_example: Path):
    result = edgectl("validate", str(fleet_example))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{fleet_example}: 1 Fleet, 3 DeviceProfiles, 3 DeviceGroups, 2 Models (5 versions), 2 Rollouts: valid"
    )


def test_validate_defaults_to_the_current_directory(fleet_example: Path):
    result = edgectl("validate", cwd=fleet_example)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(".: 1 Fleet")


def test_validate_lists_every_error_and_exits_1(tmp_path: Path):
    shutil.copytree(CORPUS / "base", tmp_path / "base")
    for name in ("bad-name.yaml", "steps-not-increasing.yaml", "yaml-syntax.yaml"):
        shutil.copy(CORPUS / "invalid" / name, tmp_path / name)
    result = edgectl("validate", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "bad-name.yaml:4: DeviceGroup/EU_Stores: metadata.name: invalid name 'EU_Stores': use at most 63 lowercase "
        "letters, digits and '-', starting and ending with a letter or digit",
        "steps-not-increasing.yaml:11: Rollout/zigzag: spec.steps[2].percent: steps must increase strictly: "
        "50 follows 50",
        "yaml-syntax.yaml:5: invalid YAML: while parsing a block mapping did not find expected key",
        "3 error(s) in 3 file(s)",
    ]


def test_missing_path_is_one_clean_line(tmp_path: Path):
    result = edgectl("validate", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'nowhere'}: no such file or directory\n"


def test_schema_export_writes_what_the_models_define(tmp_path: Path):
    result = edgectl("schema", "export", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    written = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert written == export_schemas()


def test_a_file_is_checked_in_its_repo_and_json_output_names_every_field(tmp_path: Path):
    import json

    edgectl = Path(sys.executable).parent / "edgectl"
    example = Path(__file__).resolve().parents[2] / "fleet-example"
    repo = Path(shutil.copytree(example, tmp_path / "fleet", ignore=shutil.ignore_patterns("*.keras", "*.npz")))
    rollout = repo / "rollouts" / "vibration-anomaly-2.yaml"
    rollout.write_text(rollout.read_text().replace("model: vibration-anomaly", "model: vibration-anomalyy"))
    # The file alone resolves against its repo's documents: its own mistake is found, a good file passes.
    bad = subprocess.run([edgectl, "validate", rollout, "-o", "json"], capture_output=True, text=True)
    body = json.loads(bad.stdout)
    assert bad.returncode == 1 and body["valid"] is False and body["errorsElsewhere"] == 0
    assert body["errors"] == [{"file": "rollouts/vibration-anomaly-2.yaml", "line": 7, "kind": "Rollout",
                               "name": "vibration-anomaly-2", "field": "spec.model",
                               "message": "unknown Model 'vibration-anomalyy'"}]  # fmt: skip
    good = subprocess.run([edgectl, "validate", repo / "groups" / "groups.yaml"], capture_output=True, text=True)
    assert good.returncode == 0 and "valid; 1 error(s) in other files" in good.stdout
