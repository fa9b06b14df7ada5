"""kubectl habits through the real entry point: `edgectl version` (client, and the controller from its status),
shell completion, `$KUBECONFIG` and `--context`, and no Python traceback for any user error: every command run
with bad paths, bad names and bad flags exits non-zero with a sentence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import release
from reconciler.cluster import LocalBackend
from reconciler.controller.loop import Controller, ControllerConfig

EDGECTL = Path(sys.executable).parent / "edgectl"


def edgectl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGECTL), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_version_shows_the_client_and_the_controller_that_wrote_the_status(fleet_bare_repo: Path, tmp_path: Path):
    assert release() != "unknown"
    plain = edgectl("version")
    assert plain.returncode == 0 and plain.stdout == f"Client Version: {release()}\n"
    before = edgectl("version", "--repo", fleet_bare_repo)
    assert "Controller Version: unknown (no status from a controller)" in before.stdout
    Controller(ControllerConfig(str(fleet_bare_repo), tmp_path / "state"), LocalBackend(tmp_path / "state")).cycle()
    after = edgectl("version", "--repo", fleet_bare_repo, "-o", "json")
    assert after.returncode == 0 and f'"controller": "{release()}"' in after.stdout


def test_completion_scripts_complete_commands():
    for shell in ("bash", "zsh", "fish"):
        script = edgectl("completion", shell)
        assert script.returncode == 0 and "_EDGECTL_COMPLETE" in script.stdout, shell
    env = {**os.environ, "COMP_WORDS": "edgectl desc", "COMP_CWORD": "1", "_EDGECTL_COMPLETE": "bash_complete"}
    answer = subprocess.run([str(EDGECTL)], capture_output=True, text=True, env=env, timeout=60)
    assert answer.stdout.strip() == "plain,describe"


def bad_invocations(tmp: Path) -> list[list[str | Path]]:
    missing, plain = tmp / "missing", tmp / "plain"
    plain.mkdir(exist_ok=True)
    (plain / "notes.yaml").write_text("- not: a fleet\n")
    not_a_kubeconfig = tmp / "kubeconfig"
    not_a_kubeconfig.write_text("just text\n")
    commands = [
        ["validate", missing], ["validate", plain],
        ["plan", "--repo", missing, "--base", "main"], ["plan", "--repo", plain, "--base", "main"],
        ["get", "rollouts", "--repo", missing], ["get", "rollouts", "--repo", plain], ["get", "widgets"],
        ["describe", "rollout", "x", "--repo", missing], ["describe", "rollout", "x", "--repo", plain],
        ["describe", "device", "x", "--state-dir", missing], ["get", "devices", "--state-dir", missing],
        ["get", "events", "--for", "node/x", "--state-dir", missing],
        ["get", "devices", "--backend", "kubernetes", "--kubeconfig", not_a_kubeconfig],
        ["export", "abc", tmp / "out", "--store", missing], ["verify", missing], ["sign", missing],
        ["rollout", "pause", "x", "--repo", missing], ["rollout", "status", "x", "--repo", missing],
        ["device", "revoke", "x", "--state-dir", missing], ["version", "--repo", missing],
        ["schema", "export", "/proc/no/such/place"], ["completion", "tcsh"],
        ["run", "--repo", missing, "--once", "--state-dir", tmp / "state"],
    ]  # fmt: skip
    # Every command, and every subcommand of a group, with a flag none of them has.
    listed = edgectl("--help").stdout.split("Commands:")[1].split()
    names = [word for word in listed if word.isalpha() and word.islower()]
    for name in names:
        commands.append([name, "--no-such-flag"])
    return commands


def test_no_user_error_prints_a_traceback(tmp_path: Path):
    failures = []
    for args in bad_invocations(tmp_path):
        done = edgectl(*args)
        if done.returncode == 0 or "Traceback" in done.stderr or not done.stderr.strip():
            failures.append((args, done.returncode, done.stderr[-300:]))
    assert not failures, failures


@pytest.mark.kube
def test_kubeconfig_from_the_environment_and_a_named_context(kubeconfig: Path, tmp_path: Path):
    from reconciler.cluster import kubernetes_backend

    kubernetes_backend(kubeconfig, "edge-system").install()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    listed = subprocess.run([str(EDGECTL), "get", "devices", "--backend", "kubernetes"], capture_output=True,
                            text=True, env=env, timeout=120)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    wrong = subprocess.run([str(EDGECTL), "get", "devices", "--backend", "kubernetes", "--context", "no-such"],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert wrong.returncode == 1 and "no-such" in wrong.stderr and "Traceback" not in wrong.stderr


def test_kubectl_shaped_output_jsonpath_field_selector_sort_by_and_short_ids(tmp_path: Path):
    import hashlib
    import json

    from reconciler.artifact.store import ArtifactStore
    from reconciler.cluster import AssignmentStatus
    from reconciler.plan import Desired

    backend = LocalBackend(tmp_path / "state")
    for name in ("cam-b", "cam-a", "cam-c"):
        backend.register_device(name, {"site": "plant-7"})
    backend.apply([Desired(n, "detector", "2.0.0", "cpu", "r", None, True) for n in ("cam-a", "cam-b", "cam-c")])
    backend.report_status("cam-b", "detector", AssignmentStatus("Failed", "1.0.0", target_version="2.0.0"))
    backend.report_status("cam-c", "detector", AssignmentStatus("Healthy", "2.0.0", target_version="2.0.0"))
    backend.close()
    state = ("--state-dir", tmp_path / "state")
    item = json.loads(edgectl("get", "devices", *state, "-o", "json").stdout)["items"][0]
    assert (item["apiVersion"], item["kind"], item["metadata"]["name"]) == ("edgereconciler.io/v1alpha1", "Device",
                                                                            "cam-a")  # fmt: skip
    assert item["metadata"]["labels"] == {"site": "plant-7"}
    names = edgectl("get", "devices", *state, "-o", "jsonpath={.items[*].metadata.name}")
    assert names.stdout.strip() == "cam-a cam-b cam-c"
    failed = edgectl("get", "devices", *state, "--field-selector", "phase=Failed", "-o", "name")
    assert failed.stdout.split() == ["device/cam-b"]
    others = edgectl("get", "devices", *state, "--field-selector", "phase!=Failed,installed!=2.0.0", "-o", "name")
    assert others.stdout.split() == ["device/cam-a"]  # Pending, nothing installed
    by_phase = edgectl("get", "devices", *state, "--sort-by", "PHASE", "--no-headers").stdout.splitlines()
    assert [line.split()[0] for line in by_phase] == ["cam-b", "cam-c", "cam-a"]  # Failed, Healthy, Pending
    wrong = edgectl("get", "devices", *state, "--field-selector", "colour=red")
    assert wrong.returncode == 2 and "columns:" in wrong.stderr

    store = ArtifactStore(tmp_path / "store")
    for version in ("1.0.0", "2.0.0"):
        manifest = json.dumps({"model": "detector", "version": version, "profile": "cpu"}).encode()
        artifact = hashlib.sha256(manifest).hexdigest()
        store.add_artifact(artifact, {"manifest.json": manifest}, "manifest.json")
    short = edgectl("get", "artifacts", "--store", tmp_path / "store", "--sort-by", "version").stdout.split("\n")[2]
    exported = edgectl("export", short.split()[0], tmp_path / "out", "--store", tmp_path / "store")
    assert exported.returncode == 0 and artifact in exported.stdout, exported.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["version"] == "2.0.0"
    tiny = edgectl("export", artifact[:3], tmp_path / "out2", "--store", tmp_path / "store")
    assert tiny.returncode == 1 and "a prefix of 6 or more" in tiny.stderr
