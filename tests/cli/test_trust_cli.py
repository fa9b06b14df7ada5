"""`edgectl keys generate | export | sign | verify` through the installed entry point, on an artifact the
real build pipeline made, with the trust policy of a fleet repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EDGECTL = Path(sys.executable).parent / "edgectl"


def edgectl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGECTL), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store holding one real artifact of fleet-example (vibration-anomaly 2.0.0 for arm-cortex-a-cpu)."""
    store = tmp_path_factory.mktemp("store")
    fleet = Path(__file__).resolve().parents[2] / "fleet-example"
    result = edgectl("build", "--repo", fleet, "--model", "vibration-anomaly", "--version", "2.0.0",
                     "--profile", "arm-cortex-a-cpu", "--store", store, "-o", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return store, json.loads(result.stdout)[0]["artifact"]


def test_generate_export_sign_verify(built: tuple[Path, str], tmp_path: Path):
    store, artifact = built
    generated = edgectl("keys", "generate", tmp_path / "keys" / "owner")
    assert generated.returncode == 0, generated.stderr
    assert "BEGIN" not in generated.stdout  # key ids and paths only, never key material
    assert os.stat(tmp_path / "keys" / "owner.key").st_mode & 0o777 == 0o600

    folder = tmp_path / "artifact"
    assert edgectl("export", artifact, folder, "--store", store).returncode == 0
    signed = edgectl("sign", folder, "--key", tmp_path / "keys" / "owner.key", "--counter", "4")
    assert signed.returncode == 0, signed.stderr
    assert "vibration-anomaly@2.0.0 for arm-cortex-a-cpu (counter 4)" in signed.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "release.json", "release.sig"]

    ok = edgectl("verify", folder, "--public-key", tmp_path / "keys" / "owner.pub", "--profile", "arm-cortex-a-cpu")
    assert ok.returncode == 0, ok.stderr
    assert "released by owner (counter 4)" in ok.stdout

    wrong_profile = edgectl("verify", folder, "--public-key", tmp_path / "keys" / "owner.pub", "--profile", "coral-npu")
    assert wrong_profile.returncode == 1
    assert wrong_profile.stderr.startswith("refused (WrongProfile):")

    revoked = edgectl("verify", folder, "--public-key", tmp_path / "keys" / "owner.pub", "--minimum-counter", "5")
    assert (revoked.returncode, revoked.stderr.split(":")[0]) == (1, "refused (Revoked)")

    model = folder / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 0xFF]))
    tampered = edgectl("verify", folder, "--public-key", tmp_path / "keys" / "owner.pub")
    assert tampered.returncode == 1
    assert "refused (Tampered)" in tampered.stderr and "model.onnx" in tampered.stderr


def test_verify_with_a_fleet_repos_policy(built: tuple[Path, str], tmp_path: Path, fleet_example: Path):
    store, artifact = built
    repo = Path(shutil.copytree(fleet_example, tmp_path / "fleet", ignore=shutil.ignore_patterns("*.npz", "*.keras")))
    (repo / "keys").mkdir()
    assert edgectl("keys", "generate", tmp_path / "owner").returncode == 0
    assert edgectl("keys", "generate", tmp_path / "vision").returncode == 0
    shutil.copy(tmp_path / "owner.pub", repo / "keys" / "owner.pub")
    shutil.copy(tmp_path / "vision.pub", repo / "keys" / "vision.pub")
    fleet = yaml.safe_load((repo / "fleet.yaml").read_text())
    fleet["spec"]["trust"]["releaseSigners"] = [
        {"name": "iot-team", "publicKey": "keys/owner.pub", "models": ["vibration-*"]},
        {"name": "vision-team", "publicKey": "keys/vision.pub", "models": ["digits-*"]},
    ]
    (repo / "fleet.yaml").write_text(yaml.safe_dump(fleet))

    folder = tmp_path / "artifact"
    edgectl("export", artifact, folder, "--store", store)
    assert edgectl("sign", folder, "--key", tmp_path / "vision.key", "--counter", "1").returncode == 0
    refused = edgectl("verify", folder, "--repo", repo)
    assert refused.returncode == 1
    assert "refused (UntrustedSigner)" in refused.stderr and "iot-team" in refused.stderr

    assert edgectl("sign", folder, "--key", tmp_path / "owner.key", "--counter", "1").returncode == 0
    verified = edgectl("verify", folder, "--repo", repo)
    assert verified.returncode == 0, verified.stderr
    assert "released by iot-team" in verified.stdout


def test_sign_refuses_a_readable_key_and_leaves_the_folder_as_it_was(built: tuple[Path, str], tmp_path: Path):
    store, artifact = built
    folder = tmp_path / "artifact"
    edgectl("export", artifact, folder, "--store", store)
    edgectl("keys", "generate", tmp_path / "owner")
    os.chmod(tmp_path / "owner.key", 0o644)
    result = edgectl("sign", folder, "--key", tmp_path / "owner.key", "--counter", "1")
    assert result.returncode == 1
    assert "chmod 600" in result.stderr and "BEGIN" not in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx"]
    usage = edgectl("sign", folder, "--counter", "1")
    assert usage.returncode == 2 and "exactly one of --key" in usage.stderr
