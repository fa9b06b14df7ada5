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
