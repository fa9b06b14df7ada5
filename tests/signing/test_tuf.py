"""The controller's TUF repository and the agent's client, over real HTTP on loopback: fresh metadata
is followed, and replays, freezes, mixes, missing signatures, oversized files and odd paths are refused."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reconciler.signing import (
    Expectation,
    KeyPair,
    Refusal,
    RefusedError,
    TrustPolicy,
    generate_key,
    load_public_key,
    tuf_key,
    tuf_signer,
    verify_artifact,
)
from reconciler.signing.tuf_client import ArtifactUpdater, MetadataLimits
from reconciler.signing.tuf_repo import Lifetimes, OnlineSigners, RoleKeys, TufRepository, target_path, utcnow

from .conftest import SignedArtifact

MODEL, VERSION, PROFILE = "vibration-anomaly", "2.0.0", "arm-cortex-a-cpu"


class Controller:
    """A TUF repository with its keys, published into a folder that a real HTTP server serves."""

    def __init__(self, folder: Path, keys_dir: Path, targets_threshold: int = 1, lifetimes: Lifetimes | None = None):
        self.keys: dict[str, KeyPair] = {
            name: generate_key(keys_dir / name)
            for name in ("root-a", "root-b", "targets-a", "targets-b", "snapshot", "timestamp")
        }
        self.repo = TufRepository(folder, lifetimes)
        self.roles = RoleKeys(
            keys={
                "root": [self.key("root-a")],
                "targets": [self.key("targets-a"), self.key("targets-b")],
                "snapshot": [self.key("snapshot")],
                "timestamp": [self.key("timestamp")],
            },
            thresholds={"targets": targets_threshold},
        )
        self.repo.initialize(self.roles, [self.signer("root-a")], utcnow())

    def key(self, name: str):
        return tuf_key(load_public_key(self.keys[name].public))

    def signer(self, name: str):
        return tuf_signer(self.keys[name].private)

    def online(self, *targets_keys: str) -> OnlineSigners:
        return OnlineSigners(
            [self.signer(k) for k in (targets_keys or ("targets-a", "targets-b"))],
            self.signer("snapshot"), self.signer("timestamp"),
        )  # fmt: skip

    def publish(self, artifacts: list[Path], now: datetime | None = None, *targets_keys: str) -> int:
        files = {}
        for directory in artifacts:
            manifest = json.loads((directory / "manifest.json").read_text())
            for file in sorted(directory.iterdir()):
                files[target_path(manifest["model"], manifest["version"], manifest["profile"], file.name)] = file
        return self.repo.publish(files, self.online(*targets_keys), now or utcnow())

    def pinned_root(self) -> bytes:
        return (self.repo.metadata_dir / "1.root.json").read_bytes()


@pytest.fixture
def controller(http_root, tmp_path: Path) -> Controller:
    return Controller(http_root[0], tmp_path / "controller-keys")


@pytest.fixture
def device(controller: Controller, http_root, tmp_path: Path):
    """A device's updater factory: each call is a fresh agent process with the same persisted metadata."""

    def updater(limits: MetadataLimits | None = None) -> ArtifactUpdater:
        return ArtifactUpdater(tmp_path / "device" / "tuf", http_root[1], controller.pinned_root(), limits)

    return updater


def fetch(updater: ArtifactUpdater, tmp_path: Path, name: str = "fetched") -> Path:
    return updater.fetch_artifact(MODEL, VERSION, PROFILE, tmp_path / name)


def refusal(call) -> RefusedError:
    with pytest.raises(RefusedError) as caught:
        call()
    return caught.value


def test_an_artifact_fetched_through_tuf_verifies(
    controller: Controller, device, signed_artifact: SignedArtifact, policy: TrustPolicy, tmp_path: Path
):
    controller.publish([signed_artifact(), signed_artifact(profile="jetson-gpu")])
    fetched = fetch(device(), tmp_path)
    assert sorted(p.name for p in fetched.iterdir()) == ["manifest.json", "model.onnx", "release.json", "release.sig"]
    verified = verify_artifact(fetched, policy, Expectation(MODEL, VERSION, PROFILE))
    assert verified.signer == "owner"


def test_an_artifact_the_controller_published_without_a_release_is_refused_after_fetch(
    controller: Controller, device, signed_artifact: SignedArtifact, policy: TrustPolicy, tmp_path: Path
):
    """TUF says the controller wants it; only the owner's release makes it installable."""
    controller.publish([signed_artifact(key="controller")])
    fetched = fetch(device(), tmp_path)
    assert refusal(lambda: verify_artifact(fetched, policy, Expectation(MODEL))).reason is Refusal.UNTRUSTED_SIGNER


def test_a_file_changed_on_the_server_is_refused(
    controller: Controller, device, signed_artifact: SignedArtifact, http_root, tmp_path: Path
):
    controller.publish([signed_artifact()])
    served = next((http_root[0] / "targets" / MODEL / VERSION / PROFILE).glob("*.model.onnx"))
    served.unlink()  # hard-linked from the artifact: replace, do not edit in place
    served.write_bytes(b"\x00" * 10)
    assert refusal(lambda: fetch(device(), tmp_path)).reason in (Refusal.TAMPERED, Refusal.OVERSIZED)


def test_an_unlisted_artifact_is_unknown(controller: Controller, device, signed_artifact: SignedArtifact, tmp_path):
    controller.publish([signed_artifact(profile="jetson-gpu")])
    assert refusal(lambda: fetch(device(), tmp_path)).reason is Refusal.UNKNOWN_TARGET


def test_expired_targets_are_refused(http_root, tmp_path: Path, signed_artifact: SignedArtifact):
    controller = Controller(http_root[0], tmp_path / "keys", lifetimes=Lifetimes(targets=timedelta(days=1)))
    controller.publish([signed_artifact()], utcnow() - timedelta(days=2))
    controller.repo.refresh_timestamp(controller.online(), utcnow())  # the timestamp is fresh, targets are not
    updater = ArtifactUpdater(tmp_path / "device", http_root[1], controller.pinned_root())
    error = refusal(updater.refresh)
    assert error.reason is Refusal.EXPIRED
    assert "targets" in error.message


def test_a_frozen_timestamp_is_refused(http_root, tmp_path: Path, signed_artifact: SignedArtifact):
    """A repository (or a man in the middle) that keeps serving the last timestamp past its expiry."""
    controller = Controller(http_root[0], tmp_path / "keys")
    controller.publish([signed_artifact()], utcnow() - timedelta(days=2))
    updater = ArtifactUpdater(tmp_path / "device", http_root[1], controller.pinned_root())
    assert refusal(updater.refresh).reason is Refusal.FROZEN


def test_a_replayed_older_targets_version_is_refused(
    controller: Controller, device, signed_artifact: SignedArtifact, http_root, tmp_path: Path
):
    metadata = http_root[0] / "metadata"
    controller.publish([signed_artifact(counter=1, version="1.0.0")])
    old = {name: (metadata / name).read_bytes() for name in ("timestamp.json",)}
    controller.publish([signed_artifact()])
    fetch(device(), tmp_path)  # the device now trusts version 2
    (metadata / "timestamp.json").write_bytes(old["timestamp.json"])  # an attacker replays version 1
    assert refusal(device().refresh).reason is Refusal.ROLLBACK


def test_a_snapshot_that_lists_an_older_targets_version_is_a_rollback(
    controller: Controller, device, signed_artifact: SignedArtifact, tmp_path: Path
):
    controller.publish([signed_artifact(version="1.0.0", counter=1)])
    controller.publish([signed_artifact()])
    device().refresh()
    # A compromised snapshot key re-lists targets version 1 in a newer snapshot.
    from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

    repo = controller.repo
    snapshot = Metadata(Snapshot(version=3, expires=utcnow() + timedelta(days=1), meta={"targets.json": MetaFile(1)}))
    snapshot.sign(controller.signer("snapshot"))
    repo._write("3.snapshot.json", snapshot)
    timestamp = Metadata(Timestamp(version=3, expires=utcnow() + timedelta(days=1), snapshot_meta=MetaFile(3)))
    timestamp.sign(controller.signer("timestamp"))
    repo._write("timestamp.json", timestamp)
    assert refusal(device().refresh).reason is Refusal.ROLLBACK


def test_mixed_snapshot_and_targets_are_refused(
    controller: Controller, device, signed_artifact: SignedArtifact, http_root, tmp_path: Path
):
    metadata = http_root[0] / "metadata"
    controller.publish([signed_artifact(version="1.0.0", counter=1)])
    controller.publish([signed_artifact()])
    # The server answers the request for targets version 2 with version 1's file (validly signed, other snapshot).
    shutil.copy(metadata / "1.targets.json", metadata / "2.targets.json")
    assert refusal(lambda: fetch(device(), tmp_path)).reason is Refusal.MIX_AND_MATCH


def test_targets_below_the_signature_threshold_are_refused(http_root, tmp_path: Path, signed_artifact):
    controller = Controller(http_root[0], tmp_path / "keys", targets_threshold=2)
    controller.publish([signed_artifact()], None, "targets-a")  # one of the two required keys
    updater = ArtifactUpdater(tmp_path / "device", http_root[1], controller.pinned_root())
    assert refusal(updater.refresh).reason is Refusal.THRESHOLD
    controller.publish([signed_artifact(name="again")], None, "targets-a", "targets-b")
    updater.refresh()  # two of two: accepted


def test_root_rotation_is_followed_and_an_unendorsed_root_is_refused(
    controller: Controller, device, signed_artifact: SignedArtifact, tmp_path: Path
):
    controller.publish([signed_artifact()])
    device().refresh()
    # Rotate the root key from root-a to root-b: the new root carries both signatures.
    rotated = RoleKeys({**controller.roles.keys, "root": [controller.key("root-b")]}, controller.roles.thresholds)
    controller.repo.rotate_root(rotated, [controller.signer("root-a"), controller.signer("root-b")], utcnow())
    controller.publish([signed_artifact(name="after-rotation")])
    fresh = device()
    fresh.refresh()
    assert json.loads((tmp_path / "device" / "tuf" / "root.json").read_text())["signed"]["version"] == 2
    # A root signed by a key the device never trusted (an attacker's) is refused.
    attacker = generate_key(tmp_path / "attacker")
    hijack = RoleKeys({**controller.roles.keys, "root": [tuf_key(load_public_key(attacker.public))]})
    controller.repo.rotate_root(hijack, [tuf_signer(attacker.private)], utcnow())
    assert refusal(device().refresh).reason is Refusal.THRESHOLD


def test_oversized_metadata_is_refused(
    controller: Controller, device, signed_artifact: SignedArtifact, http_root, tmp_path: Path
):
    controller.publish([signed_artifact()])
    timestamp = http_root[0] / "metadata" / "timestamp.json"
    timestamp.write_bytes(timestamp.read_bytes() + b" " * 20_000)  # above the 16 KiB timestamp limit
    assert refusal(device().refresh).reason is Refusal.OVERSIZED


def test_targets_over_the_device_limit_are_refused(controller: Controller, device, signed_artifact, tmp_path):
    controller.publish([signed_artifact()])
    assert refusal(device(MetadataLimits(targets=200)).refresh).reason is Refusal.OVERSIZED


def test_file_names_that_leave_the_artifact_folder_are_refused(
    controller: Controller, device, signed_artifact: SignedArtifact, tmp_path: Path
):
    directory = signed_artifact()
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["../../../../etc/cron.d/evil"] = {"sha256": "0" * 64, "size": 1}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    controller.publish([directory])
    assert refusal(lambda: fetch(device(), tmp_path)).reason is Refusal.PATH_TRAVERSAL
    assert not (tmp_path / "etc").exists()


def test_the_repository_refuses_to_publish_odd_paths(controller: Controller, tmp_path: Path):
    local = tmp_path / "f"
    local.write_bytes(b"x")
    for bad in ["../x/1/p/f", "m/1/p/../f", "/m/1/p/f", "m/1/p", "m/1/p/.hidden", "m/1/p/f/g"]:
        with pytest.raises(ValueError, match="plain names"):
            controller.repo.publish({bad: local}, controller.online(), utcnow())


def test_a_device_without_a_pinned_root_refuses_to_start(tmp_path: Path, http_root):
    with pytest.raises(RefusedError, match="no pinned TUF root"):
        ArtifactUpdater(tmp_path / "empty", http_root[1], None)


def test_an_unreachable_repository_is_a_transport_error(controller: Controller, tmp_path: Path):
    from reconciler.signing import FetchError

    updater = ArtifactUpdater(tmp_path / "device", "http://127.0.0.1:9", controller.pinned_root())
    with pytest.raises(FetchError):
        updater.refresh()
