"""Fixtures for agent tests: real artifacts from the build pipeline (vibration-anomaly 1.0.0 and 2.0.0 for
arm-cortex-a-cpu), released with an owner key, published in a TUF repository that the controller's HTTP
endpoint serves, and a local backend the device reads its assignments from."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reconciler.agent.agent import Agent, AgentConfig
from reconciler.api import load_fleet
from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import LocalBackend
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.client import DeviceAPIBackend, DeviceClient
from reconciler.deviceapi.identity import Identity
from reconciler.deviceapi.server import DeviceAPIServer
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry
from reconciler.gitops.files import read_fleet_dir
from reconciler.optimize.pipeline import build_scope
from reconciler.plan import Desired
from reconciler.plan.desired import Trial
from reconciler.signing import (
    KeyPair,
    Release,
    ReleaseSigner,
    TrustPolicy,
    generate_key,
    load_public_key,
    sign_with_key,
    tuf_key,
    tuf_signer,
    write_release,
)
from reconciler.signing.tuf_repo import OnlineSigners, RoleKeys, TufRepository, target_path, utcnow
from reconciler.telemetry.captures import capture_recorder
from reconciler.telemetry.store import TelemetryStore
from reconciler.telemetry.summaries import log_recorder, merge, recorder

FLEET = Path(__file__).resolve().parents[1] / "fleet-example"
MODEL, PROFILE = "vibration-anomaly", "arm-cortex-a-cpu"


@pytest.fixture(scope="session")
def build_store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("agent-store"))


@pytest.fixture(scope="session")
def built(build_store: ArtifactStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """version -> an unsigned artifact folder exported from a real build."""
    return build_artifacts(build_store, tmp_path_factory.mktemp("agent-artifacts"))


@dataclass
class Fleet:
    """One controller's repository and its devices, wired together over the real device API (mutual TLS)."""

    root: Path
    repo: TufRepository
    online: OnlineSigners
    owner: KeyPair
    stranger: KeyPair
    server: DeviceAPIServer
    backend: LocalBackend
    artifacts: dict[str, Path]
    pinned_root: bytes
    ca: FleetCA
    identity: Identity
    store: ArtifactStore
    telemetry: list[tuple[str, dict]] = field(default_factory=list)
    """(device, summary) as the device API accepted them."""
    servers: dict[int, DeviceAPIServer] = field(default_factory=dict)
    """Device APIs over other backends (a test's KubernetesBackend), by ``id(backend)``."""

    def stored_telemetry(self, model: str = MODEL) -> list[dict]:
        return stored_telemetry(self.root / "telemetry.sqlite", model)

    def release(self, version: str, counter: int = 1, key: KeyPair | None = None, edit=None, name=None,
                minimum: int = 0) -> Path:  # fmt: skip
        """Copy a built artifact, optionally edit its manifest, release (sign) it; returns the folder."""
        folder = self.root / "released" / (name or f"{version}-{counter}")
        shutil.copytree(self.artifacts[version], folder)
        if edit is not None:
            manifest = json.loads((folder / "manifest.json").read_text())
            edit(manifest)
            (folder / "manifest.json").write_text(json.dumps(manifest))
        write_release(folder, Release(MODEL, version, (PROFILE,), counter, minimum))
        sign_with_key(folder, (key or self.owner).private)
        return folder

    def variant(self, version: str, base: str = "1.0.0", padding: int = 0) -> None:
        """Another version built from ``base``: the same outputs, a model file with other bytes (its doc string
        names the version), so that nothing of it can come from a copy of ``base`` on the device. ``padding``
        random bytes in an initializer no node reads make it as large as a benchmark needs."""
        import numpy as np
        import onnx
        from onnx import numpy_helper

        folder = self.root / "variants" / version
        shutil.copytree(self.artifacts[base], folder)
        model = onnx.load(folder / "model.onnx")
        model.doc_string = f"{MODEL} {version}"
        if padding:
            noise = np.frombuffer(np.random.default_rng(padding).bytes(padding), dtype=np.uint8)
            model.graph.initializer.append(numpy_helper.from_array(noise, name="padding"))
        data = model.SerializeToString()
        (folder / "model.onnx").write_bytes(data)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["version"] = version
        manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        self.artifacts[version] = folder

    def publish(self, *folders: Path, now: datetime | None = None) -> None:
        files = {}
        for folder in folders:
            manifest = json.loads((folder / "manifest.json").read_text())
            for file in folder.iterdir():
                files[target_path(manifest["model"], manifest["version"], manifest["profile"], file.name)] = file
        self.repo.publish(files, self.online, now or utcnow())

    def assign(self, device: str, version: str, profile: str = PROFILE, window=None, max_error_rate=None) -> None:
        """``max_error_rate``: the rollout's trial limit (the trial's period stays the agent's)."""
        trial = Trial(None, None, max_error_rate) if max_error_rate is not None else None
        self.backend.apply([Desired(device, MODEL, version, profile, "vibration-anomaly-2", None, True, window,
                                    trial)])  # fmt: skip

    def client(self, device: str = "factory-1", data_dir: Path | None = None, backend=None) -> DeviceClient:
        """A device enrolled with a one-time token of its own, talking to the device API over ``backend``."""
        server = self.server if backend is None or backend is self.backend else self.device_api(backend)
        data_dir = data_dir or self.root / "devices" / device
        token = None
        if not (data_dir / "identity" / "device.pem").exists():
            token = self.identity.registry.create_token(timedelta(hours=1), utcnow(), device=device)
        return DeviceClient(server.url, device, data_dir / "identity", self.root / "ca" / "ca.crt", token)

    def agent(self, device: str = "factory-1", data_dir: Path | None = None, backend=None,
              trial: timedelta = timedelta(0), **options) -> Agent:  # fmt: skip
        """An agent of ``device``; ``trial`` 0 marks a version good right after its switch (trial tests set one)."""
        client = self.client(device, data_dir, backend)
        data_dir = data_dir or self.root / "devices" / device
        config = AgentConfig(device, PROFILE, data_dir, client.repository_url,
                             TrustPolicy((ReleaseSigner("owner", public_key=self.owner.public),)),
                             self.pinned_root, heartbeat_seconds=1.0, trial_period=trial)  # fmt: skip
        return Agent(config, DeviceAPIBackend(client), http=lambda: client.pool, **options)

    def device_api(self, backend) -> DeviceAPIServer:
        """The device API over another backend (started once per backend)."""
        if id(backend) not in self.servers:
            self.servers[id(backend)] = start_device_api(self.root, self.ca, self.identity, backend, self.store)
        return self.servers[id(backend)]


def skew_golden(manifest: dict) -> None:
    """Golden outputs no device can reproduce: every value moved by more than the build's measured tolerance
    (which is wide for a quantized variant: a fixed shift would sometimes fall inside it)."""
    shift = 2 * float(manifest["golden"].get("tolerance", {}).get("atol", 0.25)) + 1.0
    manifest["golden"]["outputs"] = [[v + shift for v in row] for row in manifest["golden"]["outputs"]]


def stored_telemetry(path: Path, model: str) -> list[dict]:
    """What a device API filed in the telemetry store at ``path`` over the last day, folded per device and
    version (a test running across the turn of an hour meets two buckets)."""
    store = TelemetryStore(path)
    try:
        folded: dict[tuple[str, str], dict] = {}
        for row in store.window(model, None, utcnow() - timedelta(days=1)):
            key = (row["device"], row["version"])
            folded[key] = {**merge(folded.get(key), row), "device": key[0], "model": model, "version": key[1]}
        return [folded[key] for key in sorted(folded)]
    finally:
        store.close()


def free_port() -> int:
    """A loopback port nobody listens on now (for a process that binds it itself)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_device_api(
    root: Path, ca: FleetCA, identity: Identity, backend, store: ArtifactStore, telemetry: list | None = None
) -> DeviceAPIServer:
    tls = root / f"device-api-{id(backend)}"
    tls.mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue_server(["127.0.0.1", "localhost"], timedelta(days=1), utcnow())
    (tls / "tls.crt").write_bytes(cert)
    (tls / "tls.key").write_bytes(key)
    context = ca.server_context(tls / "tls.crt", tls / "tls.key")

    store_file = TelemetryStore(root / "telemetry.sqlite")
    record = recorder(store_file, utcnow)

    def sink(backend, device: str, summary: dict) -> bool | str:
        if telemetry is not None:
            telemetry.append((device, summary))
        return record(backend, device, summary)

    server = DeviceAPIServer(("127.0.0.1", 0), identity, lambda: backend, context,
                             blobs=store.root / "blobs" / "sha256", tuf=root / "tuf", deltas=store.delta,
                             on_telemetry=sink, on_logs=log_recorder(store_file, utcnow),
                             on_capture=capture_recorder(store))  # fmt: skip
    return server.start()


@pytest.fixture
def fleet(tmp_path: Path, built: dict[str, Path], build_store: ArtifactStore) -> Iterator[Fleet]:
    opened = open_fleet(tmp_path, built, build_store)
    try:
        yield opened
    finally:
        close_fleet(opened)


def build_artifacts(store: ArtifactStore, out: Path) -> dict[str, Path]:
    """version -> an unsigned artifact folder of MODEL for PROFILE, exported from a real build (cached by the
    store: a second call builds nothing)."""
    tree = load_fleet(read_fleet_dir(FLEET))
    folders = {}
    for result in build_scope(tree, FLEET, store, models=[MODEL], profiles=[PROFILE]):
        assert result.artifact is not None, result.error
        folders[result.version] = store.export(result.artifact.id, out / result.version)
    return folders


def open_fleet(tmp_path: Path, built: dict[str, Path], build_store: ArtifactStore) -> Fleet:
    """The controller side of a fleet in ``tmp_path`` (also for bench/agent_faults.py); :func:`close_fleet` ends it."""
    keys = {name: generate_key(tmp_path / "keys" / name) for name in ("root", "targets", "snapshot", "timestamp",
                                                                       "owner", "stranger")}  # fmt: skip
    public = {
        role: [tuf_key(load_public_key(keys[role].public))] for role in ("root", "targets", "snapshot", "timestamp")
    }
    repo = TufRepository(tmp_path / "tuf")
    repo.initialize(RoleKeys(public), [tuf_signer(keys["root"].private)], utcnow())
    online = OnlineSigners([tuf_signer(keys["targets"].private)], tuf_signer(keys["snapshot"].private),
                           tuf_signer(keys["timestamp"].private))  # fmt: skip
    backend = LocalBackend(tmp_path / "controller-state")
    backend.register_device("factory-1", {"edgereconciler.io/hardware": "cortex-a"})
    ca = FleetCA.load_or_create(tmp_path / "ca")
    identity = Identity(ca, SQLiteRegistry(tmp_path / "controller-state" / "devices.sqlite"))
    telemetry: list[tuple[str, dict]] = []
    server = start_device_api(tmp_path, ca, identity, backend, build_store, telemetry)
    pinned = (tmp_path / "tuf" / "metadata" / "1.root.json").read_bytes()
    return Fleet(tmp_path, repo, online, keys["owner"], keys["stranger"], server, backend, built, pinned, ca, identity,
                 build_store, telemetry)  # fmt: skip


def close_fleet(fleet: Fleet) -> None:
    for server in [fleet.server, *fleet.servers.values()]:
        server.close()
    fleet.identity.registry.close()
    fleet.backend.close()
