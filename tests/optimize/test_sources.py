"""Model sources: repo paths stay inside the repo, URIs are fetched for real, digests are always checked."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import pytest

from reconciler.api.model import ModelSource
from reconciler.optimize.errors import SourceError
from reconciler.optimize.sources import fetch_source


@pytest.fixture
def served(tmp_path: Path):
    """A real HTTP server on loopback serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def source(uri: str, content: bytes) -> ModelSource:
    return ModelSource(uri=uri, sha256=hashlib.sha256(content).hexdigest())


def test_http_source_is_downloaded_and_verified(served, tmp_path: Path):
    root, base = served
    (root / "model.onnx").write_bytes(b"onnx bytes")
    path = fetch_source(source(f"{base}/model.onnx", b"onnx bytes"), tmp_path, tmp_path)
    assert path.read_bytes() == b"onnx bytes"


def test_http_source_with_another_digest_is_refused(served, tmp_path: Path):
    root, base = served
    (root / "model.onnx").write_bytes(b"swapped on the server")
    with pytest.raises(SourceError, match=r"has sha256 [0-9a-f]{64}, but the spec pins"):
        fetch_source(source(f"{base}/model.onnx", b"what was released"), tmp_path, tmp_path)


def test_missing_http_source_is_a_source_error(served, tmp_path: Path):
    _, base = served
    with pytest.raises(SourceError, match="could not be fetched: HTTP Error 404"):
        fetch_source(source(f"{base}/gone.onnx", b"x"), tmp_path, tmp_path)


def test_repo_paths_cannot_leave_the_repo_through_symlinks(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"outside")
    (repo / "models" / "link.onnx").symlink_to(secret)
    with pytest.raises(SourceError, match="points outside the fleet repo"):
        fetch_source(source("models/link.onnx", b"outside"), repo, tmp_path)


def test_unsupported_schemes_are_named(tmp_path: Path):
    with pytest.raises(SourceError, match="unsupported scheme 'ftp'"):
        fetch_source(source("ftp://example/model.onnx", b"x"), tmp_path, tmp_path)
