"""Resumable downloads over real HTTP: a connection cut halfway resumes from where it stopped, a changed
file starts over, a wrong digest is discarded, and the disk budget is checked before the first byte."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from reconciler.agent.download import DiskBudgetError, DownloadConfig, Downloader, DownloadError
from reconciler.artifact.store import ArtifactStore
from reconciler.controller.server import ControllerServer, _Handler
from reconciler.httpserver import QuietHTTPServer

SIZE = 4 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture
def blob(tmp_path: Path) -> tuple[ArtifactStore, str, bytes]:
    store = ArtifactStore(tmp_path / "store")
    payload = hashlib.sha256(b"seed").digest() * (SIZE // 32)
    return store, store.put_bytes(payload), payload


@pytest.fixture
def server(blob) -> Iterator[ControllerServer]:
    store, _, _ = blob
    served = ControllerServer(("127.0.0.1", 0), blobs=store.root / "blobs" / "sha256").start()
    try:
        yield served
    finally:
        served.close()


def cutting_server(store: ArtifactStore, at: int) -> tuple[QuietHTTPServer, dict]:
    """An HTTP server whose first response is cut after ``at`` bytes; counts bytes sent."""
    owner = ControllerServer(("127.0.0.1", 0), blobs=store.root / "blobs" / "sha256")
    owner.close()  # only its settings are used: the handler below serves with them
    sent = {"bytes": 0, "requests": 0, "cut": False}

    class Handler(_Handler):
        pass

    Handler.owner = owner

    class CutWriter:
        def __init__(self, raw) -> None:
            self.raw = raw
            self.written = 0

        def write(self, data: bytes) -> int:
            if not sent["cut"] and self.written + len(data) > at and sent["requests"] == 1:
                keep = max(0, at - self.written)
                self.raw.write(data[:keep])
                sent["bytes"] += keep
                sent["cut"] = True
                raise ConnectionAbortedError("cut")
            self.raw.write(data)
            self.written += len(data)
            return len(data)

        def flush(self) -> None:
            self.raw.flush()

        def __getattr__(self, name: str):
            return getattr(self.raw, name)

    def handle_get(self) -> None:
        sent["requests"] += 1
        self.wfile = CutWriter(self.wfile)
        try:
            _Handler.do_GET(self)
        except ConnectionAbortedError:
            self.close_connection = True

    Handler.do_GET = handle_get
    httpd = QuietHTTPServer(("127.0.0.1", 0), partial(Handler))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, sent


def test_a_download_cut_halfway_resumes_and_refetches_at_most_one_chunk(blob, tmp_path: Path):
    store, digest, payload = blob
    httpd, sent = cutting_server(store, SIZE // 2)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/artifacts/sha256/{digest}"
        downloader = Downloader(
            tmp_path / "partial", DownloadConfig(chunk_bytes=CHUNK, reserve_bytes=0), sleep=lambda _: None
        )
        done = downloader.fetch(url, SIZE, digest, tmp_path / "model.onnx")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (tmp_path / "model.onnx").read_bytes() == payload
    assert sent["cut"] and sent["requests"] == 2
    assert SIZE <= done.transferred <= SIZE + CHUNK
    assert not list((tmp_path / "partial").iterdir())


def test_a_partial_file_left_by_a_crash_is_continued(blob, server: ControllerServer, tmp_path: Path):
    _, digest, payload = blob
    partial_dir = tmp_path / "partial"
    partial_dir.mkdir()
    (partial_dir / f"{digest}.part").write_bytes(payload[: SIZE // 3])  # what a killed agent left behind
    done = Downloader(partial_dir, DownloadConfig(reserve_bytes=0)).fetch(
        f"{server.url}/artifacts/sha256/{digest}", SIZE, digest, tmp_path / "model.onnx"
    )
    assert done.resumed_from == SIZE // 3 and done.transferred == SIZE - SIZE // 3
    assert server.bytes_served == SIZE - SIZE // 3
    assert (tmp_path / "model.onnx").read_bytes() == payload


def test_a_wrong_digest_is_discarded_not_installed(blob, server: ControllerServer, tmp_path: Path):
    _, digest, _ = blob
    wrong = "0" * 64
    with pytest.raises(DownloadError, match="does not match the signed sha256"):
        Downloader(tmp_path / "partial", DownloadConfig(reserve_bytes=0)).fetch(
            f"{server.url}/artifacts/sha256/{digest}", SIZE, wrong, tmp_path / "model.onnx"
        )
    assert not (tmp_path / "model.onnx").exists() and not list((tmp_path / "partial").iterdir())


def test_a_longer_file_than_signed_is_refused(blob, server: ControllerServer, tmp_path: Path):
    _, digest, _ = blob
    downloader = Downloader(tmp_path / "partial", DownloadConfig(reserve_bytes=0, attempts=2), sleep=lambda _: None)
    with pytest.raises(DownloadError, match="longer than the signed"):
        downloader.fetch(f"{server.url}/artifacts/sha256/{digest}", SIZE // 2, digest, tmp_path / "model.onnx")


def test_the_disk_budget_is_checked_first(blob, server: ControllerServer, tmp_path: Path):
    _, digest, _ = blob
    huge_reserve = DownloadConfig(reserve_bytes=1 << 60)
    with pytest.raises(DiskBudgetError, match="reserve"):
        Downloader(tmp_path / "partial", huge_reserve).fetch(f"{server.url}/artifacts/sha256/{digest}", SIZE, digest,
                                                             tmp_path / "m")  # fmt: skip
    assert server.bytes_served == 0


def test_an_unreachable_server_gives_up_after_the_retries(tmp_path: Path):
    sleeps: list[float] = []
    downloader = Downloader(tmp_path / "partial", DownloadConfig(attempts=3, backoff_seconds=0.1, reserve_bytes=0),
                            sleep=sleeps.append)  # fmt: skip
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        downloader.fetch("http://127.0.0.1:9/x", 10, "0" * 64, tmp_path / "m")
    assert len(sleeps) == 3 and all(0 <= s <= 0.1 * 2**i for i, s in enumerate(sleeps))
