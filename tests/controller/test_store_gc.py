"""Garbage collection of the store in the controller's loop: what no device runs, is assigned or may roll back
to (the newest versions of each model in its spec) goes, blobs with it; what a device still runs stays even
when its version left the spec; nothing is collected before an interval has passed (the controller's clock is
the test's)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import AssignmentStatus, LocalBackend
from reconciler.controller.loop import Controller, ControllerConfig

from ..git_server import GitServer
from ..rollout.test_end_to_end import LABELS, fleet_repo

PROFILE = "arm-cortex-a-cpu"


def add(store: ArtifactStore, model: str, version: str) -> str:
    manifest = json.dumps({"model": model, "version": version, "profile": PROFILE}, sort_keys=True).encode()
    payload = f"{model} {version} weights".encode()
    identifier = hashlib.sha256(manifest + payload).hexdigest()
    store.add_artifact(identifier, {"manifest.json": manifest, "model.onnx": payload}, "manifest.json")
    return identifier


def test_the_store_keeps_what_devices_run_are_assigned_or_may_roll_back_to(git_server: GitServer, tmp_path: Path):
    url = fleet_repo(git_server, tmp_path)  # vibration-anomaly 1.0.0 -> 2.0.0; digits-cnn has no rollout
    store = ArtifactStore(tmp_path / "store")
    ids = {(m, v): add(store, m, v) for m, v in [("vibration-anomaly", "0.9.0"), ("vibration-anomaly", "1.0.0"),
                                                  ("vibration-anomaly", "2.0.0"), ("digits-cnn", "1.0.0"),
                                                  ("digits-cnn", "1.2.0"), ("retired-model", "0.1.0"),
                                                  ("retired-model", "0.2.0")]}  # fmt: skip
    backend = LocalBackend(tmp_path / "state")
    for i in range(10):
        backend.register_device(f"factory-{i:02d}", LABELS)
    config = ControllerConfig(url, tmp_path / "state", store=store.root, gc_interval=timedelta(hours=1),
                              gc_keep_versions=1)  # fmt: skip
    now = [datetime(2026, 12, 1, tzinfo=UTC)]
    controller = Controller(config, backend, clock=lambda: now[0])
    try:
        assert controller.cycle().stalled is None
        assert len(store.artifact_ids()) == 7  # nothing before an interval has passed
        assigned = {d.artifact for d in backend.assignments().values() if d.artifact}
        assert assigned == {ids[("vibration-anomaly", "1.0.0")], ids[("vibration-anomaly", "2.0.0")]}
        # A device has not moved yet: it still runs a version that left the spec, which stays.
        backend.report_status("factory-09", "vibration-anomaly", AssignmentStatus("Downloading", "0.9.0"))
        now[0] += timedelta(hours=1, seconds=1)
        assert controller.cycle().stalled is None
    finally:
        backend.close()
    kept = {key for key, identifier in ids.items() if identifier in store.artifact_ids()}
    # digits-cnn has no rollout: its newest version stays (gc_keep_versions=1); a model that left the fleet goes.
    assert kept == {("vibration-anomaly", "0.9.0"), ("vibration-anomaly", "1.0.0"), ("vibration-anomaly", "2.0.0"),
                    ("digits-cnn", "1.2.0")}  # fmt: skip
    blobs = {p.name for p in (store.root / "blobs" / "sha256").iterdir()}
    gone = hashlib.sha256(b"retired-model 0.1.0 weights").hexdigest()
    assert gone not in blobs and hashlib.sha256(b"digits-cnn 1.2.0 weights").hexdigest() in blobs


def test_the_artifact_handed_out_is_the_current_recipes_else_the_newest(git_server: GitServer, tmp_path: Path):
    import os

    from reconciler.api import load_fleet
    from reconciler.gitops.files import read_fleet_dir

    url = fleet_repo(git_server, tmp_path)
    tree = load_fleet(read_fleet_dir(tmp_path / "seed"))
    recipe = next(r for r in tree.models["vibration-anomaly"].spec.recipes if r.profile == PROFILE)
    current = recipe.model_dump(mode="json", by_alias=True, exclude_unset=True)
    store = ArtifactStore(tmp_path / "store")

    def build(version: str, recipe: dict, age: float, salt: str) -> str:
        manifest = json.dumps({"model": "vibration-anomaly", "version": version, "profile": PROFILE,
                               "lineage": {"recipe": recipe}}, sort_keys=True).encode()  # fmt: skip
        identifier = hashlib.sha256(manifest + salt.encode()).hexdigest()
        store.add_artifact(identifier, {"manifest.json": manifest, "model.onnx": salt.encode()}, "manifest.json")
        stamp = 1_700_000_000 - age
        os.utime(store.root / "artifacts" / f"{identifier}.json", (stamp, stamp))
        return identifier

    # 2.0.0: an old build of today's recipe, and a newer one of another recipe; 1.0.0: two of other recipes.
    wanted = build("2.0.0", current, 100, "a")
    build("2.0.0", {**current, "passes": []}, 10, "b")
    build("1.0.0", {"passes": ["x"]}, 100, "c")
    newest = build("1.0.0", {"passes": ["y"]}, 10, "d")
    backend = LocalBackend(tmp_path / "state")
    for i in range(10):
        backend.register_device(f"factory-{i:02d}", LABELS)
    try:
        controller = Controller(ControllerConfig(url, tmp_path / "state", store=store.root), backend)
        assert controller.cycle().stalled is None
        assigned = {(d.version, d.artifact) for d in backend.assignments().values()}
    finally:
        backend.close()
    assert assigned == {("2.0.0", wanted), ("1.0.0", newest)}
