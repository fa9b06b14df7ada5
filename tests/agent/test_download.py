"""Resumable downloads from the real device API (mutual TLS): a connection cut halfway resumes from where it
stopped, a changed file starts over, a wrong digest is discarded, and the disk budget is checked before the
first byte."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import urllib3

from reconciler.agent.download import DiskBudgetError, DownloadConfig, Downloader, DownloadError
from reconciler.artifact.store import ArtifactStore
from reconciler.cluster import LocalBackend
from reconciler.deviceapi.ca import FleetCA
from reconciler.deviceapi.client import DeviceClient
from reconciler.deviceapi.identity import Identity
from reconciler.deviceapi.server import DeviceAPIServer
from reconciler.deviceapi.sqlite_registry import SQLiteRegistry

SIZE = 4 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture
def blob(tmp_path: Path) -> tuple[ArtifactStore, str, bytes]:
    store = ArtifactStore(tmp_path / "store")
    payload = hashlib.sha256(b"seed").digest() * (SIZE // 32)
    return store, store.put_bytes(payload), payload


@dataclass
class Served:
    server: DeviceAPIServer
    pool: urllib3.PoolManager
    """Connections with an enrolled device's client certificate."""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def bytes_served(self) -> int:
        return self.server.bytes_served


@pytest.fixture
def server(blob, tmp_path: Path) -> Iterator[Served]:
    store, _, _ = blob
    ca = FleetCA.load_or_create(tmp_path / "ca")
    registry = SQLiteRegistry(tmp_path / "devices.sqlite")
    backend = LocalBackend(tmp_path / "state")
    cert, key = ca.issue_server(["127.0.0.1"], timedelta(days=1), datetime.now(UTC))
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    served = DeviceAPIServer(("127.0.0.1", 0), Identity(ca, registry), lambda: backend,
                             ca.server_context(tmp_path / "tls.crt", tmp_path / "tls.key"),
                             blobs=store.root / "blobs" / "sha256").start()  # fmt: skip
    token = registry.create_token(timedelta(hours=1), datetime.now(UTC), device="d-1")
    client = DeviceClient(served.url, "d-1", tmp_path / "identity", tmp_path / "ca" / "ca.crt", token)
    client.ensure_identity()
    try:
        yield Served(served, client.pool)
    finally:
        served.close()
        registry.close()
        backend.close()


def cutting_proxy(upstream: int, at: int) -> tuple[int, dict, threading.Event]:
    """A TCP relay to ``upstream`` whose first connection is cut after ``at`` bytes towards the client (TLS
    passes through untouched, as on a real network that drops)."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent = {"connections": 0, "cut": False}
    stop = threading.Event()

    def pump(source: socket.socket, target: socket.socket, limit: int | None) -> None:
        relayed = 0
        try:
            while data := source.recv(CHUNK):
                if limit is not None and relayed + len(data) > limit:
                    target.sendall(data[: limit - relayed])
                    sent["cut"] = True
                    break
                target.sendall(data)
                relayed += len(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                end.close()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            sent["connections"] += 1
            server = socket.create_connection(("127.0.0.1", upstream))
            limit = at if sent["connections"] == 1 else None
            threading.Thread(target=pump, args=(server, client, limit), daemon=True).start()
            threading.Thread(target=pump, args=(client, server, None), daemon=True).start()
        listener.close()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1], sent, stop


def test_a_download_cut_halfway_resumes_and_refetches_at_most_one_chunk(blob, server: Served, tmp_path: Path):
    _, digest, payload = blob
    port, sent, stop = cutting_proxy(int(server.url.rsplit(":", 1)[1]), SIZE // 2)
    try:
        url = f"https://127.0.0.1:{port}/artifacts/sha256/{digest}"
        downloader = Downloader(tmp_path / "partial", DownloadConfig(chunk_bytes=CHUNK, reserve_bytes=0),
                                sleep=lambda _: None, http=server.pool)  # fmt: skip
        done = downloader.fetch(url, SIZE, digest, tmp_path / "model.onnx")
    finally:
        stop.set()
    assert (tmp_path / "model.onnx").read_bytes() == payload
    assert sent["cut"] and sent["connections"] == 2
    # TLS records and headers ride on top of the payload; the body itself is fetched once, plus at most a chunk.
    assert SIZE <= done.transferred <= SIZE + CHUNK


def test_a_partial_file_left_by_a_crash_is_continued(blob, server: Served, tmp_path: Path):
    _, digest, payload = blob
    partial_dir = tmp_path / "partial"
    partial_dir.mkdir()
    (partial_dir / f"{digest}.part").write_bytes(payload[: SIZE // 3])  # what a killed agent left behind
    done = Downloader(partial_dir, DownloadConfig(reserve_bytes=0), http=server.pool).fetch(
        f"{server.url}/artifacts/sha256/{digest}", SIZE, digest, tmp_path / "model.onnx"
    )
    assert done.resumed_from == SIZE // 3 and done.transferred == SIZE - SIZE // 3
    assert server.bytes_served == SIZE - SIZE // 3
    assert (tmp_path / "model.onnx").read_bytes() == payload


def test_a_wrong_digest_is_discarded_not_installed(blob, server: Served, tmp_path: Path):
    _, digest, _ = blob
    wrong = "0" * 64
    with pytest.raises(DownloadError, match="does not match the signed sha256"):
        Downloader(tmp_path / "partial", DownloadConfig(reserve_bytes=0), http=server.pool).fetch(
            f"{server.url}/artifacts/sha256/{digest}", SIZE, wrong, tmp_path / "model.onnx"
        )
    assert not (tmp_path / "model.onnx").exists() and not list((tmp_path / "partial").iterdir())


def test_a_longer_file_than_signed_is_refused(blob, server: Served, tmp_path: Path):
    _, digest, _ = blob
    downloader = Downloader(tmp_path / "partial", DownloadConfig(reserve_bytes=0, attempts=2), sleep=lambda _: None,
                            http=server.pool)  # fmt: skip
    with pytest.raises(DownloadError, match="longer than the signed"):
        downloader.fetch(f"{server.url}/artifacts/sha256/{digest}", SIZE // 2, digest, tmp_path / "model.onnx")


def test_the_disk_budget_is_checked_first(blob, server: Served, tmp_path: Path):
    _, digest, _ = blob
    huge_reserve = DownloadConfig(reserve_bytes=1 << 60)
    with pytest.raises(DiskBudgetError, match="reserve"):
        Downloader(tmp_path / "partial", huge_reserve, http=server.pool).fetch(
            f"{server.url}/artifacts/sha256/{digest}", SIZE, digest, tmp_path / "m"
        )
    assert server.bytes_served == 0


def test_an_unreachable_server_gives_up_after_the_retries(tmp_path: Path):
    sleeps: list[float] = []
    downloader = Downloader(tmp_path / "partial", DownloadConfig(attempts=3, backoff_seconds=0.1, reserve_bytes=0),
                            sleep=sleeps.append)  # fmt: skip
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        downloader.fetch("http://127.0.0.1:9/x", 10, "0" * 64, tmp_path / "m")
    assert len(sleeps) == 3 and all(0 <= s <= 0.1 * 2**i for i, s in enumerate(sleeps))
